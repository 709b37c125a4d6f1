package probe

import (
	"github.com/conntracer/conntracer/internal/aggregate"

	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/conntracer/conntracer/internal/kernel"
	"github.com/conntracer/conntracer/internal/testenv"
)

// connectStats folds every event collected so far into a ConnectStats, as
// the aggregator does.
func (c *collector) connectStats() *aggregate.ConnectStats {
	s := aggregate.NewConnectStats()
	now := time.Now()
	for _, ev := range c.snapshot() {
		s.Apply(&ev, now)
	}
	return s
}

// failuresOf returns the counts by errno of pid's failed connects to dest.
func failuresOf(s *aggregate.ConnectStats, pid int, dest string) map[string]uint64 {
	for _, f := range s.Snapshot().ConnectFailures {
		if f.PID == uint32(pid) && f.Destination == dest {
			return f.Counts
		}
	}
	return nil
}

// waitStats polls until pid's failures to dest reach want in total.
func (c *collector) waitStats(t *testing.T, pid int, dest string, want uint64) *aggregate.ConnectStats {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		s := c.connectStats()
		var total uint64
		for _, n := range failuresOf(s, pid, dest) {
			total += n
		}
		if total >= want || time.Now().After(deadline) {
			time.Sleep(300 * time.Millisecond) // surplus, if any
			return c.connectStats()
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// snmp reads one counter of /proc/net/snmp inside the namespace, e.g.
// ("Tcp", "AttemptFails").
func snmp(t *testing.T, ns *testenv.NetNS, proto, name string) uint64 {
	t.Helper()
	lines := strings.Split(ns.Output(t, "cat", "/proc/net/snmp"), "\n")
	for i := 0; i+1 < len(lines); i++ {
		h, v := strings.Fields(lines[i]), strings.Fields(lines[i+1])
		if len(h) == 0 || h[0] != proto+":" || len(v) != len(h) || v[0] != h[0] {
			continue
		}
		for j := range h {
			if h[j] == name {
				n, err := strconv.ParseUint(v[j], 10, 64)
				if err != nil {
					t.Fatal(err)
				}
				return n
			}
		}
	}
	t.Fatalf("no %s %s in /proc/net/snmp", proto, name)
	return 0
}

func sysctlNS(t *testing.T, ns *testenv.NetNS, kv string) {
	t.Helper()
	ns.Output(t, "sysctl", "-qw", kv)
}

func tracingNS(t *testing.T, ns *testenv.NetNS) *tracing {
	t.Helper()
	opts := DefaultOptions()
	opts.Filter.NetNS = ns.Inode
	tr := startTracing(t, opts)
	requireOn(t, tr, "connect") // every test here counts connect() results
	return tr
}

func TestConnectRefusedCountedOnce(t *testing.T) {
	testenv.RequireRoot(t)
	ns := testenv.NewNetNS(t)
	tr := tracingNS(t, ns)
	before := snmp(t, ns, "Tcp", "AttemptFails")
	const dest = "127.0.0.1:9"

	// Blocking connects: the kernel reports each twice (the socket's
	// close, the syscall's return); the statistics count it once.
	blocking := testenv.RunConnects(t, ns, "ctr-refused-b", testenv.ConnectPlan{Addr: dest, Count: 20})
	if blocking.Errnos["ECONNREFUSED"] != 20 {
		t.Fatalf("client saw %v, want 20 ECONNREFUSED", blocking.Errnos)
	}
	// Go connects non-blocking: EINPROGRESS, then the socket's error.
	async := testenv.RunClient(t, ns, "ctr-refused-nb", []testenv.Conn{
		{Addr: dest, Mode: testenv.Refused}, {Addr: dest, Mode: testenv.Refused}, {Addr: dest, Mode: testenv.Refused},
	})
	s := tr.col.waitStats(t, blocking.PID, dest, 20)
	s = tr.col.waitStats(t, async.PID, dest, 3)
	if got := failuresOf(s, blocking.PID, dest); len(got) != 1 || got["ECONNREFUSED"] != 20 {
		t.Errorf("blocking client: tracer counted %v, want ECONNREFUSED: 20", got)
	}
	if got := failuresOf(s, async.PID, dest); len(got) != 1 || got["ECONNREFUSED"] != 3 {
		t.Errorf("non-blocking client: tracer counted %v, want ECONNREFUSED: 3", got)
	}
	// The kernel's own count of connects that failed in SYN_SENT.
	if d := snmp(t, ns, "Tcp", "AttemptFails") - before; d != 23 {
		t.Errorf("Tcp AttemptFails rose by %d, the tracer counted 23", d)
	}
	rules := aggregate.DefaultConnectRules()
	rules.MinRefused = 23
	fs := s.ConnectFindings(time.Now(), rules, nil)
	if len(fs) != 1 || fs[0].Kind != "connect_refused" || fs[0].Remote != dest || fs[0].Evidence["failures"] != 23 || fs[0].PID != uint32(blocking.PID) {
		t.Errorf("findings: %+v", fs)
	}
}

func TestConnectPortExhaustion(t *testing.T) {
	testenv.RequireRoot(t)
	ns := testenv.NewNetNS(t)
	srv := testenv.StartServer(t, ns, "ctr-server")
	// Four ephemeral ports, no reuse of TIME_WAIT ones (on by default for
	// loopback): four connections closed by the client hold them all.
	sysctlNS(t, ns, "net.ipv4.ip_local_port_range=40000 40003")
	sysctlNS(t, ns, "net.ipv4.tcp_tw_reuse=0")
	tr := tracingNS(t, ns)
	var plan []testenv.Conn
	for range 4 {
		plan = append(plan, testenv.Conn{Addr: srv.Addr4(), Mode: testenv.ClientCloses})
	}
	testenv.RunClient(t, ns, "ctr-filler", plan)
	// A client's socket waits in FIN_WAIT2 (a timewait socket in that
	// substate) until the server's FIN arrives, which under the matrix's
	// emulation can come after the client has returned: ask ss again for
	// a few seconds.
	tw := 0
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		tw = strings.Count(ns.Output(t, "ss", "-Htan", "state", "time-wait"), "\n")
		if tw == 4 || time.Now().After(deadline) {
			break
		}
	}
	if tw != 4 {
		t.Fatalf("ss shows %d sockets in TIME_WAIT, want the 4 that hold the port range", tw)
	}

	const calls = 25
	res := testenv.RunConnects(t, ns, "ctr-exhausted", testenv.ConnectPlan{Addr: srv.Addr4(), Count: calls})
	if res.Errnos["EADDRNOTAVAIL"] != calls {
		t.Fatalf("client saw %v, want %d EADDRNOTAVAIL", res.Errnos, calls)
	}
	s := tr.col.waitStats(t, res.PID, srv.Addr4(), calls)
	if got := failuresOf(s, res.PID, srv.Addr4()); len(got) != 1 || got["EADDRNOTAVAIL"] != calls {
		t.Errorf("tracer counted %v for pid %d -> %s, the client saw %d EADDRNOTAVAIL", got, res.PID, srv.Addr4(), calls)
	}
	ports := &kernel.PortInfoCache{TTL: time.Minute}
	fs := s.ConnectFindings(time.Now(), aggregate.DefaultConnectRules(), ports.Lookup)
	var pe *aggregate.Finding
	for i := range fs {
		if fs[i].Kind == "port_exhaustion" && fs[i].PID == uint32(res.PID) {
			pe = &fs[i]
		}
	}
	// The ports in use towards the server are the 4 TIME_WAIT sockets ss
	// listed, and the range is the namespace's.
	if pe == nil || pe.Remote != srv.Addr4() || pe.Evidence["eaddrnotavail"] != calls || pe.Comm != "ctr-exhausted" ||
		pe.NetNS != ns.Inode || pe.Evidence["ports_in_use"] != float64(tw) ||
		pe.Evidence["port_range_low"] != 40000 || pe.Evidence["port_range_high"] != 40003 {
		t.Errorf("port_exhaustion finding: %+v (all: %+v)", pe, fs)
	}
}

func TestConnectTimeout(t *testing.T) {
	testenv.RequireRoot(t)
	if _, err := os.Stat("/usr/sbin/nft"); err != nil {
		t.Skip("needs nft (Debian package nftables)")
	}
	ns := testenv.NewNetNS(t)
	// One SYN retransmission: the connect gives up after 1 s + 2 s.
	sysctlNS(t, ns, "net.ipv4.tcp_syn_retries=1")
	ns.Output(t, "nft", "add table inet ctr; add chain inet ctr out { type filter hook output priority 0; }; add rule inet ctr out tcp dport 9999 drop")
	tr := tracingNS(t, ns)
	const dest = "127.0.0.1:9999"

	async := testenv.RunClient(t, ns, "ctr-timeout-nb", []testenv.Conn{{Addr: dest}})
	blocking := testenv.RunConnects(t, ns, "ctr-timeout-b", testenv.ConnectPlan{Addr: dest, Count: 1})
	if !strings.Contains(async.Results[0].Err, "timed out") || blocking.Errnos["ETIMEDOUT"] != 1 {
		t.Fatalf("clients saw %q and %v, want both timed out", async.Results[0].Err, blocking.Errnos)
	}
	s := tr.col.waitStats(t, blocking.PID, dest, 1)
	for _, c := range []struct {
		name string
		pid  int
	}{{"non-blocking", async.PID}, {"blocking", blocking.PID}} {
		if got := failuresOf(s, c.pid, dest); len(got) != 1 || got["ETIMEDOUT"] != 1 {
			t.Errorf("%s client: tracer counted %v, want ETIMEDOUT: 1", c.name, got)
		}
	}
	rules := aggregate.DefaultConnectRules()
	rules.MinTimeouts = 2
	fs := s.ConnectFindings(time.Now(), rules, nil)
	if len(fs) != 1 || fs[0].Kind != "connect_timeouts" || fs[0].Remote != dest || fs[0].Evidence["failures"] != 2 {
		t.Errorf("findings: %+v", fs)
	}
}

func TestConnectLatencyHistogram(t *testing.T) {
	testenv.RequireRoot(t)
	ns := testenv.NewNetNS(t)
	srv := testenv.StartServer(t, ns, "ctr-server")
	tr := tracingNS(t, ns)
	var plan []testenv.Conn
	for range 10 {
		plan = append(plan, testenv.Conn{Addr: srv.Addr4(), Req: 10, Resp: 10, Mode: testenv.ClientCloses})
	}
	cli := testenv.RunClient(t, ns, "ctr-latency", plan)
	tr.col.waitFor(t, 20)
	var got *aggregate.ConnectLatency
	snap := tr.col.connectStats().Snapshot()
	for i := range snap.ConnectLatency {
		if l := &snap.ConnectLatency[i]; l.PID == uint32(cli.PID) && l.Destination == srv.Addr4() {
			got = l
		}
	}
	if got == nil {
		t.Fatalf("no latency for pid %d -> %s: %+v", cli.PID, srv.Addr4(), snap.ConnectLatency)
	}
	last := got.Buckets[len(got.Buckets)-1]
	// Loopback handshakes take microseconds; 50 ms would mean the
	// latency was measured from the wrong events (under emulation a
	// handshake can stall for 100 ms: the bound is scaled there).
	bound := testenv.Scaled(50 * time.Millisecond).Seconds()
	if got.Count != 10 || last.Count != 10 || last.Inf || last.LeSeconds > bound || got.SumSeconds <= 0 || got.SumSeconds > 10*bound || got.Comm != "ctr-latency" {
		t.Errorf("latency histogram: %+v", *got)
	}
	t.Logf("loopback connect latency: %d connects, mean %.1f us, buckets %+v", got.Count, got.SumSeconds/float64(got.Count)*1e6, got.Buckets)
}
