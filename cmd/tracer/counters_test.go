package main

import (
	"github.com/conntracer/conntracer/internal/aggregate"
	"github.com/conntracer/conntracer/internal/export"

	"bytes"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/conntracer/conntracer/internal/events"
	"github.com/conntracer/conntracer/internal/report"
	"github.com/conntracer/conntracer/internal/testenv"
)

// nstat returns `nstat -saz` inside ns: every counter, absolute, without
// touching nstat's history file.
func nstat(t *testing.T, ns *testenv.NetNS) map[string]uint64 {
	t.Helper()
	out := map[string]uint64{}
	for _, l := range strings.Split(ns.Output(t, "nstat", "-saz"), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 || strings.HasPrefix(f[0], "#") {
			continue
		}
		if v, err := strconv.ParseUint(f[1], 10, 64); err == nil {
			out[f[0]] = v
		}
	}
	if len(out) == 0 {
		t.Fatal("nstat printed no counters")
	}
	return out
}

// TestKernelCountersMatchNstat records a namespace in which a known number
// of connections is made: the recorded TCP MIB deltas of that namespace
// equal `nstat`'s, ActiveOpens and PassiveOpens grew by exactly the
// connections made, sockstat's tw equals `ss state time-wait`, and the
// report (text, HTML, JSON) shows them.
func TestKernelCountersMatchNstat(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTool(t, "nstat")
	ns := testenv.NewNetNS(t)
	srv := testenv.StartServer(t, ns, "ctr-srv")
	path := filepath.Join(t.TempDir(), "counters.ctrec")
	before := nstat(t, ns)
	r := startTop(t, "--interval", "5s", "--netns", ns.Name, "--record", path, "--counters-interval", "1s")
	const conns = 40
	var plan []testenv.Conn
	for range conns {
		plan = append(plan, testenv.Conn{Addr: srv.Addr4(), Req: 10, Resp: 100, Mode: testenv.ClientCloses})
	}
	testenv.RunClient(t, ns, "ctr-churner", plan)
	// Quiet: every connection has reached TIME_WAIT (the client closed
	// first), so no segment flows between the tracer's last read and
	// nstat's.
	deadline := time.Now().Add(5 * time.Second)
	for tws(t, ns) != conns {
		if time.Now().After(deadline) {
			t.Fatalf("%d TIME_WAIT sockets, want %d", tws(t, ns), conns)
		}
		time.Sleep(20 * time.Millisecond)
	}
	live := r.wait(t)
	after := nstat(t, ns)
	twNow := tws(t, ns)

	kc := findCounters(t, live, ns.Inode)
	for _, name := range events.KernelCounterNames {
		if !strings.HasPrefix(name, "Tcp") {
			continue
		}
		want := int64(after[name] - before[name])
		if kc.Deltas[name] != want {
			t.Errorf("%s: recorded delta %d, nstat delta %d", name, kc.Deltas[name], want)
		}
		if kc.Values[name] != after[name] {
			t.Errorf("%s: recorded %d, nstat %d", name, kc.Values[name], after[name])
		}
	}
	if kc.Deltas["TcpActiveOpens"] != conns || kc.Deltas["TcpPassiveOpens"] != conns {
		t.Errorf("ActiveOpens +%d, PassiveOpens +%d, want +%d each", kc.Deltas["TcpActiveOpens"], kc.Deltas["TcpPassiveOpens"], conns)
	}
	if kc.Values["SockstatTCPTw"] != uint64(twNow) {
		t.Errorf("sockstat tw %d, ss state time-wait %d", kc.Values["SockstatTCPTw"], twNow)
	}
	var tracer bool
	for _, c := range live.KernelCounters {
		tracer = tracer || (c.Kind == "tracer_counters" && c.Object == "tcplife")
	}
	if !tracer {
		t.Errorf("no tracer_counters for tcplife in %+v", live.KernelCounters)
	}

	// The post-mortem shows the same.
	rep, err := report.Replay([]string{path}, report.Options{Thresholds: aggregate.DefaultThresholds()})
	if err != nil {
		t.Fatal(err)
	}
	rk := findCounters(t, export.NewDocument(rep.Final, 0, nil), ns.Inode)
	if rk.Deltas["TcpActiveOpens"] != conns || rk.Values["SockstatTCPTw"] != kc.Values["SockstatTCPTw"] {
		t.Errorf("replayed counters %+v", rk)
	}
	var text, page bytes.Buffer
	if err := rep.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	if err := rep.WriteHTML(&page); err != nil {
		t.Fatal(err)
	}
	line := fmt.Sprintf("netns %d", ns.Inode)
	if !strings.Contains(text.String(), "TcpActiveOpens") || !containsLine(text.String(), line, "TcpPassiveOpens", fmt.Sprintf("+%d", conns)) {
		t.Errorf("text report lacks the counters:\n%s", text.String())
	}
	if !strings.Contains(page.String(), fmt.Sprintf("<tr><td>%s</td><td>TcpActiveOpens</td><td>%d</td><td>+%d</td></tr>", line, after["TcpActiveOpens"], conns)) {
		t.Errorf("HTML report lacks the TcpActiveOpens row")
	}
}

func tws(t *testing.T, ns *testenv.NetNS) int {
	t.Helper()
	return strings.Count(ns.Output(t, "ss", "-Htan", "state", "time-wait"), "\n")
}

func findCounters(t *testing.T, d *export.Document, netns uint32) aggregate.CounterSnapshot {
	t.Helper()
	for _, c := range d.KernelCounters {
		if c.Kind == "kernel_counters" && c.NetNS == netns {
			return c
		}
	}
	t.Fatalf("no kernel_counters for netns %d in %+v", netns, d.KernelCounters)
	return aggregate.CounterSnapshot{}
}

// containsLine reports whether one line of s holds every part.
func containsLine(s string, parts ...string) bool {
	for _, l := range strings.Split(s, "\n") {
		ok := true
		for _, p := range parts {
			ok = ok && strings.Contains(l, p)
		}
		if ok {
			return true
		}
	}
	return false
}
