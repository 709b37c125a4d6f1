package probe

import (
	"github.com/conntracer/conntracer/internal/aggregate"

	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/conntracer/conntracer/internal/events"
	"github.com/conntracer/conntracer/internal/kernel"
	"github.com/conntracer/conntracer/internal/testenv"
)

// connectsOf returns the connect events of process pid, once they account
// for at least n calls (or the deadline passed, then a little later for surplus).
func (c *collector) connectsOf(t *testing.T, pid int, n int) []events.Connect {
	t.Helper()
	pick := func() ([]events.Connect, int) {
		var out []events.Connect
		calls := 0
		for _, ev := range c.snapshot() {
			if ev.Kind == events.KindConnect && ev.Connect.Owner.PID == uint32(pid) {
				out = append(out, ev.Connect)
				calls += int(ev.Connect.Count)
			}
		}
		return out, calls
	}
	deadline := time.Now().Add(15 * time.Second)
	for _, calls := pick(); calls < n && time.Now().Before(deadline); _, calls = pick() {
		time.Sleep(20 * time.Millisecond)
	}
	// The kernel's counts are read every half second: wait for one
	// more read to catch any surplus.
	time.Sleep(700 * time.Millisecond)
	out, _ := pick()
	return out
}

// byErrno counts connect events by errno name, "OK" for success, for one
// destination.
func byErrno(cs []events.Connect, dest string) map[string]int {
	m := map[string]int{}
	for i := range cs {
		if cs[i].Destination() != dest {
			continue
		}
		name := events.ErrnoName(cs[i].Errno)
		if name == "" {
			name = "OK"
		}
		m[name] += int(cs[i].Count)
	}
	return m
}

func sameCounts(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func TestConnectUnixFailuresCountedExactly(t *testing.T) {
	testenv.RequireRoot(t)
	// By default only the exit of connect() is hooked and latencies are
	// not measured; --connect-latency adds the entry hook. Both must count
	// every call exactly, and so must the compat variant (the kernel's
	// choice before 5.15, forced here on any kernel), which always hooks
	// the entry.
	for _, compat := range []bool{false, true} {
		for _, latency := range []bool{false, true} {
			t.Run(fmt.Sprintf("compat=%v/latency=%v", compat, latency), func(t *testing.T) {
				opts := DefaultOptions()
				opts.ConnectLatency = latency
				opts.connectCompat = compat
				testUnixConnectFailures(t, opts)
			})
		}
	}
}

func testUnixConnectFailures(t *testing.T, opts Options) {
	tr := startTracing(t, opts)
	compat := opts.connectCompat || connectNeedsCompat() != nil
	wantHook := "syscalls/sys_exit_connect"
	if opts.ConnectLatency || compat {
		wantHook = "syscalls/sys_{enter,exit}_connect"
	}
	if a := requireOn(t, tr, "connect"); a.Hook != wantHook {
		t.Fatalf("connect hooks not attached as %s: %v", wantHook, tr.probe.Attachments())
	}
	noted := false
	for _, n := range tr.probe.Notes() {
		noted = noted || strings.Contains(n, "(compat variant)")
	}
	if noted != compat {
		t.Errorf("compat variant %v, but the notes say %q", compat, tr.probe.Notes())
	}
	dir := t.TempDir()
	abstract := fmt.Sprintf("@ctr-test-%d-%d", time.Now().UnixNano(), 1)
	cases := []struct {
		name, addr, typ string
		setup           func(t *testing.T, addr string)
		want            map[string]int // what the client must see (checked loosely: the tracer must agree exactly)
	}{
		{"backlog full (path)", filepath.Join(dir, "full.sock"), "stream",
			func(t *testing.T, a string) { testenv.ListenUnix(t, a, "stream", 1) }, map[string]int{"OK": 2, "EAGAIN": 198}},
		{"backlog full (abstract)", abstract, "stream",
			func(t *testing.T, a string) { testenv.ListenUnix(t, a, "stream", 1) }, map[string]int{"OK": 2, "EAGAIN": 198}},
		{"backlog full (seqpacket)", filepath.Join(dir, "seq.sock"), "seqpacket",
			func(t *testing.T, a string) { testenv.ListenUnix(t, a, "seqpacket", 3) }, map[string]int{"OK": 4, "EAGAIN": 196}},
		{"no such path", filepath.Join(dir, "missing.sock"), "stream", nil, map[string]int{"ENOENT": 200}},
		{"socket file without listener", filepath.Join(dir, "stale.sock"), "stream",
			func(t *testing.T, a string) { testenv.BindUnix(t, a) }, map[string]int{"ECONNREFUSED": 200}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.setup != nil {
				tc.setup(t, tc.addr)
			}
			res := testenv.RunConnects(t, nil, "ctr-unix-cli", testenv.ConnectPlan{Addr: tc.addr, Type: tc.typ, Count: 200, NonBlock: true})
			if !sameCounts(res.Errnos, tc.want) {
				t.Errorf("client saw %v, the scenario expects %v", res.Errnos, tc.want)
			}
			cs := tr.col.connectsOf(t, res.PID, res.Calls)
			got := byErrno(cs, tc.addr)
			if !sameCounts(got, res.Errnos) {
				t.Errorf("tracer counted %v for %s, client saw %v", got, tc.addr, res.Errnos)
			}
			checkUnixStats(t, tr, res, tc.addr, tc.setup != nil && strings.HasPrefix(tc.name, "backlog full"))
			for i := range cs {
				c := &cs[i]
				if string(c.Owner.CommBytes()) != "ctr-unix-cli" || c.SockType.String() != tc.typ || !c.NonBlocking ||
					c.Family != events.FamilyUnix || c.NetNS == 0 || c.Owner.StartNs == 0 ||
					c.NoLatency == opts.ConnectLatency || (c.LatencyNs() == 0) == opts.ConnectLatency {
					t.Errorf("connect event %d: comm %q type %s nonblock %v family %s netns %d start %d latency %d (measured: %v, want %v)",
						i, c.Owner.CommBytes(), c.SockType, c.NonBlocking, c.Family, c.NetNS, c.Owner.StartNs, c.LatencyNs(), !c.NoLatency, opts.ConnectLatency)
					break
				}
			}
		})
	}
	if err := tr.stop(); err != nil {
		t.Fatal(err)
	}
	if st := tr.probe.Stats(); st.Lost != 0 || st.BadRecords != 0 {
		t.Errorf("lost %d, undecodable %d", st.Lost, st.BadRecords)
	}
}

func findAttachment(as []Attachment, hookPart string) *Attachment {
	for i := range as {
		if strings.Contains(as[i].Hook, hookPart) {
			return &as[i]
		}
	}
	return nil
}

// checkUnixStats: the aggregate of the events (plus a sample of the
// listeners, when there is one) shows the client as a caller of addr with
// exactly the counts it saw, and a backlog overflow finding names the path,
// the listener (this test process) and its queue and limit.
func checkUnixStats(t *testing.T, tr *tracing, res testenv.ConnectResult, addr string, full bool) {
	t.Helper()
	s := tr.col.connectStats()
	if full {
		evs, _, err := kernel.UnixListeners()
		if err != nil {
			t.Fatal(err)
		}
		for i := range evs {
			if evs[i].Connect.Path.String() == addr {
				s.Apply(&evs[i], time.Now())
			}
		}
	}
	snap := s.Snapshot()
	path := unixPathOf(t, snap, addr)
	var caller *aggregate.UnixCaller
	for i := range path.Callers {
		if path.Callers[i].PID == uint32(res.PID) {
			caller = &path.Callers[i]
		}
	}
	want := map[string]uint64{}
	for k, v := range res.Errnos {
		want[k] = uint64(v)
	}
	if caller == nil || caller.Comm != "ctr-unix-cli" || len(caller.Counts) != len(want) {
		t.Fatalf("unix %s: caller %+v, want pid %d with %v", addr, caller, res.PID, want)
	}
	for k, v := range want {
		if caller.Counts[k] != v {
			t.Errorf("unix %s: caller counts %v, client saw %v", addr, caller.Counts, want)
		}
	}
	if !full {
		return
	}
	if path.ListenerPID != uint32(os.Getpid()) || path.Backlog == 0 || path.Queue <= path.Backlog || path.Somaxconn == 0 {
		t.Errorf("unix %s: listener %d backlog %d queue %d somaxconn %d; want this process, a full queue", addr, path.ListenerPID, path.Backlog, path.Queue, path.Somaxconn)
	}
	var f *aggregate.Finding
	for _, x := range s.ConnectFindings(time.Now(), aggregate.DefaultConnectRules(), nil) {
		if x.Kind == "unix_backlog_overflow" && x.Path == addr {
			f = &x
		}
	}
	if f == nil || f.PID != uint32(res.PID) || f.Evidence["eagain"] != float64(want["EAGAIN"]) ||
		f.Evidence["listener_pid"] != float64(os.Getpid()) || f.Evidence["backlog"] != float64(path.Backlog) {
		t.Errorf("unix_backlog_overflow for %s: %+v", addr, f)
	}
}

// unixPathOf returns the snapshot's entry for the Unix socket path addr,
// failing the test when there is none.
func unixPathOf(t *testing.T, snap aggregate.ConnectSnapshot, addr string) *aggregate.UnixPathStats {
	t.Helper()
	for i := range snap.Unix {
		if snap.Unix[i].Path == addr {
			return &snap.Unix[i]
		}
	}
	t.Fatalf("no unix entry for %s", addr)
	return nil
}
