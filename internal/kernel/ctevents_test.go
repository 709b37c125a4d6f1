package kernel_test

import (
	"github.com/conntracer/conntracer/internal/aggregate"

	"context"
	"maps"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/conntracer/conntracer/internal/events"
	"github.com/conntracer/conntracer/internal/kernel"
	"github.com/conntracer/conntracer/internal/testenv"
)

func TestMain(m *testing.M) {
	testenv.MaybeRunHelper()
	os.Exit(m.Run())
}

// ctRule makes conntrack track the namespace's traffic.
const ctRule = `table inet ctrtest {
	chain out {
		type filter hook output priority 0;
		ct state new counter
	}
}`

// ctWatch follows ns with a CtEvents of the given receive buffer whose
// batches go to an aggregator; it returns the channel of batches (nothing
// reads it until the test calls apply) and a stop function.
type ctWatch struct {
	t     *testing.T
	w     *kernel.CtEvents
	out   chan []events.Event
	agg   *aggregate.Aggregator
	ns    *testenv.NetNS
	stop  func()
	kinds map[events.Kind]int
}

func watchCt(t *testing.T, ns *testenv.NetNS, readBuffer int) *ctWatch {
	t.Helper()
	out := make(chan []events.Event) // unbuffered: the test decides when events flow
	w := kernel.NewCtEvents(out)
	w.ReadBuffer = readBuffer
	w.RefreshEvery = 300 * time.Millisecond
	h, err := netns.GetFromName(ns.Name)
	if err != nil {
		t.Fatal(err)
	}
	err = w.Watch(ns.Inode, int(h))
	h.Close()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = w.Run(ctx)
	}()
	c := &ctWatch{t: t, w: w, out: out, agg: aggregate.NewAggregator(aggregate.DefaultThresholds()), ns: ns, kinds: map[events.Kind]int{}}
	c.stop = func() { cancel(); <-done }
	t.Cleanup(c.stop)
	return c
}

// drain applies batches until none came for quiet.
func (c *ctWatch) drain(quiet time.Duration) {
	for {
		select {
		case b := <-c.out:
			for i := range b {
				c.kinds[b[i].Kind]++
				c.agg.Apply(&b[i], time.Now())
			}
		case <-time.After(quiet):
			return
		}
	}
}

// waitKind drains until n events of kind have come or timeout has passed
// (under emulation, in the kernel matrix's VMs, a dump takes far longer
// than a drain's quiet period), then until the source is quiet.
func (c *ctWatch) waitKind(kind events.Kind, n int, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for c.kinds[kind] < n && time.Now().Before(deadline) {
		c.drain(50 * time.Millisecond)
	}
	c.drain(300 * time.Millisecond)
}

func (c *ctWatch) table() aggregate.ConntrackNSSnapshot {
	for _, s := range c.agg.Snapshot().Conntrack {
		if s.NetNS == c.ns.Inode {
			return s
		}
	}
	return aggregate.ConntrackNSSnapshot{}
}

// kernelView is `conntrack -L` and `-C` in the namespace, as the table's
// counts.
func kernelView(t *testing.T, ns *testenv.NetNS) (total uint64, byState, byProto map[string]uint64) {
	byState, byProto = map[string]uint64{}, map[string]uint64{}
	for _, e := range testenv.ConntrackList(t, ns) {
		total++
		byProto[e.Proto]++
		if e.State != "" {
			byState[e.State]++
		}
	}
	if n := testenv.ConntrackCount(t, ns); n != total {
		t.Logf("conntrack -C %d, -L listed %d (the table moved between them)", n, total)
	}
	return total, byState, byProto
}

// matchKernel drains and compares the table with conntrack -L until they
// agree (entries may still change state when the workload has just
// ended), at most 10 times; it reports the last difference.
func (c *ctWatch) matchKernel() aggregate.ConntrackNSSnapshot {
	c.t.Helper()
	var tab aggregate.ConntrackNSSnapshot
	var total uint64
	var byState, byProto map[string]uint64
	for range 10 {
		c.drain(300 * time.Millisecond)
		total, byState, byProto = kernelView(c.t, c.ns)
		c.drain(300 * time.Millisecond) // events the listing itself caused (expired entries it reaped)
		tab = c.table()
		if tab.Tracked == total && maps.Equal(tab.ByState, byState) && maps.Equal(tab.ByProto, byProto) {
			return tab
		}
	}
	c.t.Fatalf("tracer's table: %d entries, by state %v, by proto %v; conntrack -L: %d, %v, %v (events %v, lost %d, dump errors %d)",
		tab.Tracked, tab.ByState, tab.ByProto, total, byState, byProto, c.kinds, c.w.Lost(), c.w.DumpErrors())
	return tab
}

// With a receive buffer far too small for a burst of thousands of flows
// and a reader held back, the kernel drops events: the read fails with
// ENOBUFS, the overrun is counted, and a dump resynchronises the
// namespace's table, which then equals conntrack -L exactly, by TCP state
// and by protocol.
func TestCtEventsLossResync(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTool(t, "nft")
	testenv.RequireTool(t, "conntrack")
	ns := testenv.NewNetNS(t)
	testenv.NFT(t, ns, ctRule)
	c := watchCt(t, ns, 4096)
	c.waitKind(events.KindConntrackResync, 1, 15*time.Second) // the start-up dump: an empty table
	if c.kinds[events.KindConntrackResync] != 1 {
		t.Fatalf("start-up: %v, want one resync", c.kinds)
	}

	// Nothing reads the batches meanwhile: the reader blocks handing
	// over its first one and the socket's buffer overflows. (A TCP churn
	// is no burst here: with conntrack, clients reusing the ports of the
	// server's TIME_WAIT tuples wait for SYN retransmissions.)
	srv := testenv.StartServer(t, ns, "ctr-ct-srv")
	plan := make([]testenv.Conn, 20)
	for i := range plan {
		plan[i] = testenv.Conn{Addr: srv.Addr4(), Req: 10, Resp: 10, Mode: testenv.ClientCloses, Hold: true}
	}
	testenv.StartClient(t, ns, "ctr-ct-hold", plan)
	udp := udpBurst(t)
	udp -= testenv.SendUDP(t, ns, 20000, udp)

	tab := c.matchKernel()
	if c.w.Lost() == 0 || tab.Lost == 0 {
		t.Fatalf("no loss counted (watcher %d, table %d) with a 4 KiB buffer", c.w.Lost(), tab.Lost)
	}
	if tab.Resyncs < 1 || tab.Dumps < 2 || c.kinds[events.KindConntrackResync] < 2 {
		t.Fatalf("no resync after the loss: %d resyncs, %d dumps, kinds %v", tab.Resyncs, tab.Dumps, c.kinds)
	}
	if tab.ByState["ESTABLISHED"] != 20 || tab.ByProto["udp"] != uint64(udp) {
		t.Errorf("table: %v by state, %v by proto; want the 20 held connections and %d UDP flows", tab.ByState, tab.ByProto, udp)
	}
	t.Logf("lost %d overruns, %d resyncs, %d entries corrected; table %d entries %v", tab.Lost, tab.Resyncs, tab.Corrected, tab.Tracked, tab.ByState)
}

// udpBurst is how many UDP flows the loss test makes: 3000, fewer when
// another test has lowered the global nf_conntrack_max (it restores it):
// the burst must not be refused for a full table.
func udpBurst(t *testing.T) int {
	b, err := os.ReadFile("/proc/sys/net/netfilter/nf_conntrack_max")
	if err != nil {
		t.Fatal(err)
	}
	max, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	n := min(3000, max*3/4-20)
	if n < 100 {
		t.Skipf("nf_conntrack_max is %d (lowered by another test?): too small for a burst", max)
	}
	if n < 3000 {
		t.Logf("nf_conntrack_max is %d: a burst of %d UDP flows", max, n)
	}
	return n
}

// Entries created while the namespace is followed report their whole
// life: NEW, UPDATEs through the TCP states, DESTROY once TIME_WAIT (1 s
// here) expires; no dump but the first is needed. Entries older than the
// subscription report nothing (nf_conntrack_events=2): they are listed
// by the first dump and followed by refresh dumps until they are gone.
// Either way the table equals conntrack -L.
func TestCtEventsLifecycle(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTool(t, "nft")
	testenv.RequireTool(t, "conntrack")
	ns := testenv.NewNetNS(t)
	testenv.NFT(t, ns, ctRule)
	ns.Output(t, "sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_timeout_time_wait=1")
	srv := testenv.StartServer(t, ns, "ctr-ct-srv")
	old := testenv.StartClient(t, ns, "ctr-ct-old", testenv.HoldPlan(srv.Addr4(), 4))

	c := watchCt(t, ns, 0)
	c.waitKind(events.KindConntrackResync, 1, 15*time.Second) // the first dump
	// A dump that fails (interrupted by a change of the table) is tried
	// again a second later: more than one dump may have run by now.
	if tab := c.table(); tab.ByState["ESTABLISHED"] != 4 || tab.Dumps < 1 {
		t.Fatalf("first dump: %+v (dump errors %d), want the 4 connections open before", tab, c.w.DumpErrors())
	}
	live := testenv.StartClient(t, ns, "ctr-ct-live", testenv.HoldPlan(srv.Addr4(), 3))
	tab := c.matchKernel()
	if tab.ByState["ESTABLISHED"] != 7 || c.kinds[events.KindConntrackNew] < 4+3 {
		t.Fatalf("with the live connections: %+v, kinds %v", tab, c.kinds)
	}

	live.Release(t)
	old.Release(t)
	// The entries pass TIME_WAIT (1 s) and are reaped; conntrack -L
	// reaps expired ones too: matchKernel waits until the table agrees.
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		c.drain(300 * time.Millisecond)
		if len(testenv.ConntrackList(t, ns)) == 0 {
			break
		}
	}
	tab = c.matchKernel()
	if tab.Tracked != 0 || c.kinds[events.KindConntrackDestroy] < 3 {
		t.Errorf("after the close: %+v, kinds %v: want an empty table and the live entries' 3 DESTROY events", tab, c.kinds)
	}
	if c.w.Lost() != 0 || c.kinds[events.KindConntrackResync] < 2 {
		t.Errorf("lost %d, kinds %v: want no loss, and refresh dumps for the 4 older entries", c.w.Lost(), c.kinds)
	}
	// Once the older entries are gone, refreshing stops.
	n := c.kinds[events.KindConntrackResync]
	c.drain(time.Second)
	if c.kinds[events.KindConntrackResync] != n {
		t.Errorf("still refreshing with no older entry left: %v", c.kinds)
	}
	t.Logf("kinds %v", c.kinds)
}
