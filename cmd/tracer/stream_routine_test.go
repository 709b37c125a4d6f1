package main

import (
	"bytes"
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/conntracer/conntracer/internal/testenv"
)

// streamLine is the part of a stream's JSON line these tests read.
type streamLine struct {
	Time        time.Time `json:"time"`
	Type        string    `json:"type"`
	PID         int       `json:"pid"`
	Comm        string    `json:"comm"`
	Destination string    `json:"destination"`
	Errno       string    `json:"errno"`
	Count       uint64    `json:"count"`
}

// startTracer runs the stream (plain `tracer`) with args in the
// background and returns once it is tracing; cancel stops it, and done
// then reports how run returned.
func startTracer(t *testing.T, args ...string) (stdout *bytes.Buffer, stderr *readyWriter, done chan error, cancel context.CancelFunc) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stdout = new(bytes.Buffer)
	stderr = &readyWriter{ready: make(chan struct{})}
	done = make(chan error, 1)
	go func() { done <- run(ctx, args, stdout, stderr) }()
	select {
	case <-stderr.ready:
	case err := <-done:
		cancel()
		t.Fatalf("tracer stopped: %v\n%s", err, stderr)
	case <-time.After(20 * time.Second):
		cancel()
		t.Fatalf("tracer did not start: %s", stderr)
	}
	return stdout, stderr, done, cancel
}

// runStreamWhile runs the stream with args until work has returned and
// the lines it caused are out (the stream holds lines a second to order
// them), and returns the lines and stderr.
func runStreamWhile(t *testing.T, args []string, work func()) ([]streamLine, string) {
	t.Helper()
	stdout, stderr, done, cancel := startTracer(t, args...)
	defer cancel()
	work()
	time.Sleep(700 * time.Millisecond) // the Unix counts' read interval (500 ms) and then some
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run: %v\n%s", err, stderr)
	}
	var lines []streamLine
	for _, l := range strings.Split(strings.TrimSpace(stdout.String()), "\n") {
		if l == "" {
			continue
		}
		var sl streamLine
		if err := json.Unmarshal([]byte(l), &sl); err != nil {
			t.Fatalf("bad line %q: %v", l, err)
		}
		lines = append(lines, sl)
	}
	return lines, stderr.String()
}

// TestStreamKeepsRoutineFailuresOutAndInTimeOrder: a program that tries
// a Unix socket nobody created (as every glibc program tries nscd's)
// fills the default stream no more: the calls are counted in the summary
// only, while refused TCP connects still print. With --connect-routine
// they print as one line per (process, path, errno) with the count of
// calls (glibc's two calls came as two count-1 lines), and the Unix lines,
// read from the kernel's counts every half second, fall in time order
// among the connection lines instead of after them.
func TestStreamKeepsRoutineFailuresOutAndInTimeOrder(t *testing.T) {
	testenv.RequireRoot(t)
	ns := testenv.NewNetNS(t)
	path := filepath.Join(t.TempDir(), "nscd-socket") // never created: ENOENT
	unixPlan := testenv.ConnectPlan{Addr: path, Count: 20}
	tcpPlan := testenv.ConnectPlan{Addr: "127.0.0.1:1", Count: 3}
	var pids []int
	work := func() {
		for range 2 {
			if r := testenv.RunConnects(t, ns, "ctr-routine", unixPlan); r.Errnos["ENOENT"] != 20 {
				t.Fatalf("unix connects: %v, want 20 ENOENT", r.Errnos)
			} else {
				pids = append(pids, r.PID)
			}
			if r := testenv.RunConnects(t, ns, "ctr-refused", tcpPlan); r.Errnos["ECONNREFUSED"] != 3 {
				t.Fatalf("tcp connects: %v, want 3 ECONNREFUSED", r.Errnos)
			}
		}
	}

	lines, stderr := runStreamWhile(t, []string{"--output", "json", "--netns", ns.Name}, work)
	refused := 0
	for _, l := range lines {
		if l.Comm == "ctr-routine" {
			t.Errorf("routine failure printed by default: %+v", l)
		}
		if l.Comm == "ctr-refused" && l.Type == "connect_failed" {
			refused++
		}
	}
	if refused != 6 {
		t.Errorf("%d refused TCP connect lines, want 6:\n%+v", refused, lines)
	}
	if !strings.Contains(stderr, "40 routine ones counted only") {
		t.Errorf("summary does not count the routine failures:\n%s", stderr)
	}

	pids = nil
	lines, _ = runStreamWhile(t, []string{"--output", "json", "--netns", ns.Name, "--connect-routine"}, work)
	perPID := map[int][]uint64{}
	for i, l := range lines {
		if i > 0 && l.Time.Before(lines[i-1].Time) {
			t.Errorf("line %d (%s %s) is older than line %d (%s %s)", i, l.Time.Format(time.StampMicro), l.Comm,
				i-1, lines[i-1].Time.Format(time.StampMicro), lines[i-1].Comm)
		}
		if l.Comm == "ctr-routine" {
			if l.Destination != path || l.Errno != "ENOENT" {
				t.Errorf("routine line %+v", l)
			}
			perPID[l.PID] = append(perPID[l.PID], l.Count)
		}
	}
	for _, pid := range pids {
		if c := perPID[pid]; len(c) != 1 || c[0] != 20 {
			t.Errorf("process %d: lines with counts %v, want one line with count 20", pid, c)
		}
	}
	if len(pids) != 2 {
		t.Errorf("%d helper runs, want 2", len(pids))
	}
}
