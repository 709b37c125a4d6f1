package main

import (
	"github.com/conntracer/conntracer/internal/aggregate"
	"github.com/conntracer/conntracer/internal/export"

	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"syscall"
	"testing"
	"time"

	"github.com/conntracer/conntracer/internal/report"
	"github.com/conntracer/conntracer/internal/testenv"
)

// docMap is a document as generic JSON, without what only the live run
// can know (cgroup names, the refresh interval).
func docMap(t *testing.T, d *export.Document) map[string]any {
	t.Helper()
	d.IntervalSeconds = 0
	b, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for _, p := range m["processes"].([]any) {
		delete(p.(map[string]any), "cgroup")
	}
	return m
}

// TestRecordReplayGivesLiveNumbers records a real scenario (churn, held
// connections, refused connects) while `tracer top --once` aggregates it
// live, then replays the recording: the final document is the same.
func TestRecordReplayGivesLiveNumbers(t *testing.T) {
	testenv.RequireRoot(t)
	ns := testenv.NewNetNS(t)
	srv := testenv.StartServer(t, ns, "ctr-srv")
	path := filepath.Join(t.TempDir(), "live.ctrec")
	r := startTop(t, "--interval", "5s", "--netns", ns.Name, "--record", path, "--reconcile-interval", "1s")
	r.skipWhereKernelLacks(t, "syscalls/sys_exit_connect")
	var hold, churn []testenv.Conn
	for range 5 {
		hold = append(hold, testenv.Conn{Addr: srv.Addr4(), Req: 10, Resp: 10, Mode: testenv.ClientCloses, Hold: true})
	}
	for range 60 {
		churn = append(churn, testenv.Conn{Addr: srv.Addr4(), Req: 10, Resp: 100, Mode: testenv.ClientCloses})
	}
	holder := testenv.StartClient(t, ns, "ctr-holder", hold)
	testenv.RunClient(t, ns, "ctr-churner", churn)
	testenv.RunConnects(t, ns, "ctr-refused", testenv.ConnectPlan{Addr: "127.0.0.1:1", Count: 25})
	live := r.wait(t)
	holder.Release(t)

	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("recording mode %v, want 0600", st.Mode().Perm())
	}
	rep, err := report.Replay([]string{path}, report.Options{Thresholds: aggregate.DefaultThresholds()})
	if err != nil {
		t.Fatal(err)
	}
	// The report's document: named from the recording (network
	// namespaces, containers), as the live one was from the host.
	replayed := rep.Document().Final
	lm, rm := docMap(t, live), docMap(t, replayed)
	if !reflect.DeepEqual(lm, rm) {
		lb, _ := json.MarshalIndent(lm, "", " ")
		rb, _ := json.MarshalIndent(rm, "", " ")
		t.Fatalf("replay differs from the live document\nlive:\n%s\nreplayed:\n%s", lb, rb)
	}
	// And the live document saw the scenario (the comparison is not
	// between two empty documents).
	var churned, refused bool
	for _, p := range live.Processes {
		churned = churned || (p.Comm == "ctr-churner" && p.Closed == 60)
	}
	for _, f := range live.Findings {
		refused = refused || f.Kind == "connect_refused"
	}
	if !churned || !refused {
		t.Fatalf("live document lacks the scenario (churner closed 60: %v, connect_refused: %v)", churned, refused)
	}
	tot := rep.Totals()
	if tot.FailedConnects != 25 {
		t.Fatalf("report: %d failed connects, want 25", tot.FailedConnects)
	}
	t.Logf("recording: %d bytes, %d events, %d blocks", st.Size(), rep.Events, rep.Files[0].Stats.Blocks)
}

// TestRecorderSIGKILL kills `tracer record` without warning: the report
// still reads every block written before, which holds everything older
// than the last second.
func TestRecorderSIGKILL(t *testing.T) {
	testenv.RequireRoot(t)
	ns := testenv.NewNetNS(t)
	srv := testenv.StartServer(t, ns, "ctr-srv")
	path := filepath.Join(t.TempDir(), "killed.ctrec")
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), runMainEnv+fmt.Sprintf("=record -o %s --netns %s", path, ns.Name))
	stderr := &lineWaiter{want: "tracer: top: tracing", ready: make(chan struct{})}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	select {
	case <-stderr.ready:
	case <-time.After(30 * time.Second):
		t.Fatalf("tracer record did not start: %s", stderr)
	}
	var churn []testenv.Conn
	for range 80 {
		churn = append(churn, testenv.Conn{Addr: srv.Addr4(), Req: 10, Resp: 10, Mode: testenv.ClientCloses})
	}
	testenv.RunClient(t, ns, "ctr-churner", churn)
	// Blocks are sealed once a second: the churn is on disk one sampler
	// round (1 s) after the block's first event is a second old.
	// Generous: under full emulation (the kernel matrix) everything is
	// ten times slower; on a real machine this takes about two seconds.
	deadline := time.Now().Add(60 * time.Second)
	for {
		rep, err := report.Replay([]string{path}, report.Options{Thresholds: aggregate.DefaultThresholds()})
		got := uint64(0)
		if err == nil {
			got = closedBy(rep, "ctr-churner")
		}
		if got == 80 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the churn never reached the file: %d of 80 closes recorded (err %v)", got, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	rep, err := report.Replay([]string{path}, report.Options{Thresholds: aggregate.DefaultThresholds()})
	if err != nil {
		t.Fatalf("report after SIGKILL: %v", err)
	}
	if n := closedBy(rep, "ctr-churner"); n != 80 {
		t.Fatalf("after SIGKILL the report has %d of 80 connections", n)
	}
	if s := rep.Files[0].Stats; s.LostBytes != 0 && s.LostBlocks > 1 {
		t.Fatalf("SIGKILL lost more than the block being written: %+v", s)
	}
}

func closedBy(rep *report.Report, comm string) uint64 {
	for _, p := range rep.Final.Processes {
		if p.Comm == comm {
			return p.Closed
		}
	}
	return 0
}

// TestFlightRecorderDumpsOnFinding keeps the last minute in memory; a
// storm of refused connects raises connect_refused, and the dump written
// then holds the connections that came before it.
func TestFlightRecorderDumpsOnFinding(t *testing.T) {
	testenv.RequireRoot(t)
	ns := testenv.NewNetNS(t)
	srv := testenv.StartServer(t, ns, "ctr-srv")
	dir := t.TempDir()
	r := startTop(t, "--interval", "5s", "--netns", ns.Name, "--flight-recorder", "1m", "--flight-dir", dir)
	var churn []testenv.Conn
	for range 30 {
		churn = append(churn, testenv.Conn{Addr: srv.Addr4(), Req: 10, Resp: 10, Mode: testenv.ClientCloses})
	}
	testenv.RunClient(t, ns, "ctr-before", churn)
	testenv.RunConnects(t, ns, "ctr-refused", testenv.ConnectPlan{Addr: "127.0.0.1:1", Count: 25})
	r.wait(t)
	// One dump per new finding kind: the one connect_refused caused,
	// whatever else the kernel reported first (on 6.12, sockets closed
	// with unread data raise a QUEUE_PURGE drops finding).
	m := regexp.MustCompile(`flight recorder: finding [a-z_, ]*connect_refused[a-z_, ]*: wrote the last \S+ to (\S+)\n`).FindStringSubmatch(r.stderr.String())
	if m == nil {
		t.Fatalf("no flight recorder dump for connect_refused in %s; stderr: %s", dir, r.stderr)
	}
	dumps := []string{m[1]}
	if filepath.Dir(dumps[0]) != dir {
		t.Fatalf("dump %s written outside --flight-dir %s", dumps[0], dir)
	}
	rep, err := report.Replay(dumps, report.Options{Thresholds: aggregate.DefaultThresholds()})
	if err != nil {
		t.Fatal(err)
	}
	if n := closedBy(rep, "ctr-before"); n != 30 {
		t.Fatalf("the dump holds %d of the 30 connections made before the finding", n)
	}
	found := false
	for _, f := range rep.Findings {
		found = found || f.Kind == "connect_refused"
	}
	if !found {
		t.Fatalf("replaying the dump does not raise connect_refused: %+v", rep.Findings)
	}
	if st, _ := os.Stat(dumps[0]); st.Mode().Perm() != 0o600 {
		t.Fatalf("dump mode %v, want 0600", st.Mode().Perm())
	}
}
