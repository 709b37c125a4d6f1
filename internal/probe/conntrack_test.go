package probe

import (
	"github.com/conntracer/conntracer/internal/aggregate"

	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/conntracer/conntracer/internal/events"
	"github.com/conntracer/conntracer/internal/kernel"
	"github.com/conntracer/conntracer/internal/testenv"
)

func openNS(t *testing.T, ns *testenv.NetNS) int {
	t.Helper()
	f, err := os.Open("/run/netns/" + ns.Name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return int(f.Fd())
}

func ctStats(t *testing.T, fd int) events.Conntrack {
	t.Helper()
	c, err := kernel.ConntrackStats(fd)
	if err != nil {
		t.Fatalf("ctnetlink stats: %v", err)
	}
	return c
}

// The conntrack table fills: every refused SYN is reported as a conntrack
// drop with its tuple and the process whose connect() it was, and the
// count equals the kernel's `drop` statistic delta (ctnetlink and
// /proc/net/stat/nf_conntrack agree).
func TestConntrackTableFull(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTool(t, "nft")
	ns := testenv.NewNetNS(t)
	fd := openNS(t, ns)
	l := testenv.StartListener(t, ns, "ctr-listen", 1024)
	testenv.NFT(t, ns, `table inet ctrtest {
	chain out {
		type filter hook output priority 0;
		ct state new counter
	}
}`)
	opts := DefaultOptions()
	opts.Filter.NetNS = ns.Inode
	opts.Drops = true
	tr := startTracing(t, opts)
	names := dropNames(t)

	before := ctStats(t, fd)
	procBefore, err := kernel.ReadNetNSProc(fd)
	if err != nil {
		t.Fatal(err)
	}
	restore := testenv.LowerConntrackMax(t, 256)
	b := testenv.StartBurst(t, ns, "ctr-churner", fmt.Sprintf("127.0.0.1:%d", l.Port), 400, 1200*time.Millisecond)
	b.Release(t) // no more SYN retransmissions
	restore()
	after := ctStats(t, fd)
	procAfter, err := kernel.ReadNetNSProc(fd)
	if err != nil {
		t.Fatal(err)
	}
	kernelDrops := after.Drop - before.Drop
	if b.Failed == 0 || kernelDrops == 0 {
		t.Fatalf("table never filled: %d connects failed, drop statistic +%d", b.Failed, kernelDrops)
	}
	if got := procAfter.ProcStat["drop"] - procBefore.ProcStat["drop"]; got != kernelDrops {
		t.Errorf("/proc/net/stat/nf_conntrack drop +%d, ctnetlink +%d", got, kernelDrops)
	}

	time.Sleep(1500 * time.Millisecond) // a drop-count sample
	if err := tr.stop(); err != nil {
		t.Fatal(err)
	}
	evs := tr.col.snapshot()
	var noCT uint64
	last := map[[3]uint64]uint64{}
	for _, ev := range evs {
		if ev.Kind == events.KindDropCount && ev.Drop.NetNS == ns.Inode && ev.Drop.NoCT &&
			names.Reason(ev.Drop.Reason) == "NETFILTER_DROP" {
			last[[3]uint64{ev.Drop.Location, uint64(ev.Drop.Reason), uint64(ev.Drop.Owner.PID)}] = ev.Drop.Count
		}
	}
	for _, n := range last {
		noCT += n
	}
	if noCT != kernelDrops {
		t.Errorf("tracer counted %d conntrack drops, kernel's drop statistic rose by %d", noCT, kernelDrops)
	}

	// Every refused flow is reported with its tuple and owner.
	refused := map[uint16]bool{}
	for i := range evs {
		ev := &evs[i]
		if ev.Kind != events.KindDrop || !ev.Drop.NoCT || ev.Drop.NetNS != ns.Inode {
			continue
		}
		d := &ev.Drop
		if d.Dst.Port() != l.Port || d.TCPFlags&events.TCPFlagSYN == 0 {
			t.Errorf("refused flow %v -> %v flags %#x, want a SYN to port %d", d.Src, d.Dst, d.TCPFlags, l.Port)
		}
		if d.Owner.PID != uint32(b.PID) || string(d.Owner.CommBytes()) != "ctr-churner" {
			t.Errorf("refused flow owner %d %q, want %d ctr-churner", d.Owner.PID, d.Owner.CommBytes(), b.PID)
		}
		refused[d.Src.Port()] = true
	}
	if len(refused) != b.Failed {
		t.Errorf("%d distinct refused flows reported, the client saw %d connects fail", len(refused), b.Failed)
	}
	// Through the aggregator: the drop statistic rose in the window of
	// these records, so they are table-full drops, named by process.
	agg := aggregate.NewConntrackStats()
	now := time.Now()
	before.NetNS, after.NetNS = ns.Inode, ns.Inode
	after.Entries, after.Max = procAfter.ConntrackCount, 256
	agg.Apply(&events.Event{Kind: events.KindConntrackStats, Conntrack: before}, now)
	for i := range evs {
		names.Apply(&evs[i])
		agg.Apply(&evs[i], now)
	}
	agg.Apply(&events.Event{Kind: events.KindConntrackStats, Conntrack: after}, now.Add(time.Second))
	snap := agg.Snapshot()
	if len(snap) != 1 || snap[0].ConntrackDrops != kernelDrops || len(snap[0].TopProcesses) == 0 ||
		snap[0].TopProcesses[0].PID != uint32(b.PID) || len(snap[0].RefusedFlows) == 0 {
		t.Errorf("conntrack snapshot %+v", snap)
	}
	var found bool
	for _, f := range aggregate.ConntrackFindings(snap) {
		if f.Kind == "conntrack_table_full" && f.Comm == "ctr-churner" && f.NetNS == ns.Inode {
			found = true
			t.Logf("finding: %s", f.Message)
		}
	}
	if !found {
		t.Errorf("no conntrack_table_full finding naming ctr-churner: %+v", aggregate.ConntrackFindings(snap))
	}
	t.Logf("400 connects: %d failed; drop statistic +%d; tracer: %d conntrack drops, %d flows", b.Failed, kernelDrops, noCT, len(refused))
}

// Listen-queue overflows: the sampler's count equals the namespace's
// TcpExtListenOverflows delta and names the listening process.
func TestListenOverflow(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTool(t, "nstat")
	ns := testenv.NewNetNS(t)
	l := testenv.StartListener(t, ns, "ctr-backlog1", 1)
	s := kernel.NewNetNSSampler()
	s.OnlyNetNS = ns.Inode
	nstat := func() uint64 {
		out := ns.Output(t, "nstat", "-asz", "TcpExtListenOverflows")
		for _, line := range strings.Split(out, "\n") {
			f := strings.Fields(line)
			if len(f) >= 2 && f[0] == "TcpExtListenOverflows" {
				v, _ := strconv.ParseUint(f[1], 10, 64)
				return v
			}
		}
		t.Fatalf("no TcpExtListenOverflows in nstat output:\n%s", out)
		return 0
	}
	if _, w := s.Sample(testenv.BootNs()); len(w) > 0 {
		t.Logf("warnings: %v", w)
	}
	n0 := nstat()
	b := testenv.StartBurst(t, ns, "ctr-client", fmt.Sprintf("127.0.0.1:%d", l.Port), 20, 1500*time.Millisecond)
	b.Release(t)
	n1 := nstat()
	evs, w := s.Sample(testenv.BootNs())
	if len(w) > 0 {
		t.Logf("warnings: %v", w)
	}
	if n1 == n0 {
		t.Fatal("no overflow happened")
	}
	var got uint64
	for _, ev := range evs {
		if ev.Kind != events.KindListenOverflow {
			continue
		}
		d := ev.Drop
		got += d.Count
		if d.Owner.PID != uint32(l.PID) || string(d.Owner.CommBytes()) != "ctr-backlog1" {
			t.Errorf("overflow attributed to %d %q, want %d ctr-backlog1", d.Owner.PID, d.Owner.CommBytes(), l.PID)
		}
		if d.Dst.Port() != l.Port || d.Backlog != 1 {
			t.Errorf("listener %v backlog %d, want port %d backlog 1", d.Dst, d.Backlog, l.Port)
		}
	}
	if got != n1-n0 {
		t.Errorf("tracer counted %d listen overflows, nstat TcpExtListenOverflows +%d", got, n1-n0)
	}
}
