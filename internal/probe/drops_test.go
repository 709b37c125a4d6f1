package probe

import (
	"github.com/conntracer/conntracer/internal/aggregate"

	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/conntracer/conntracer/internal/events"
	"github.com/conntracer/conntracer/internal/kernel"
	"github.com/conntracer/conntracer/internal/testenv"
)

// dropNames resolves drop events the way the tracer does.
func dropNames(t *testing.T) *events.DropNames {
	t.Helper()
	if !kernelHasDropReasons() {
		t.Skip("needs drop reasons (enum skb_drop_reason, skb:kfree_skb's reason: 5.17+); this kernel's drops are counted by location only")
	}
	reasons, err := kernel.DropReasons()
	if err != nil {
		t.Fatal(err)
	}
	ks, err := kernel.LoadKallsyms()
	if err != nil {
		t.Fatal(err)
	}
	return events.NewDropNames(reasons, ks.Symbolize)
}

// dropTotals sums the latest cumulative KindDropCount per key, by reason
// name, for one namespace.
func dropTotals(evs []events.Event, names *events.DropNames, netns uint32) map[string]uint64 {
	type key struct {
		loc    uint64
		reason uint32
		pid    uint32
		noCT   bool
	}
	last := map[key]uint64{}
	for _, ev := range evs {
		if ev.Kind != events.KindDropCount || ev.Drop.NetNS != netns {
			continue
		}
		last[key{ev.Drop.Location, ev.Drop.Reason, ev.Drop.Owner.PID, ev.Drop.NoCT}] = ev.Drop.Count
	}
	out := map[string]uint64{}
	for k, n := range last {
		out[names.Reason(k.reason)] += n
	}
	return out
}

// A firewall rule's drop is reported with its reason, location, tuple and
// the process whose connect() it refused, and counted exactly as nft
// counts it.
func TestDropsRuleDrop(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTool(t, "nft")
	ns := testenv.NewNetNS(t)
	l := testenv.StartListener(t, ns, "ctr-listen", 128)
	// Conntrack active (a ct rule) so that the dropped packets carry an
	// entry: a rule's drop must not look like a table-full drop.
	testenv.NFT(t, ns, fmt.Sprintf(`table inet ctrtest {
	chain out {
		type filter hook output priority 0;
		ct state new counter
		tcp dport %d counter drop comment "ruledrop"
	}
}`, l.Port))

	opts := DefaultOptions()
	opts.Filter.NetNS = ns.Inode
	opts.Drops = true
	tr := startTracing(t, opts)
	names := dropNames(t)

	b := testenv.StartBurst(t, ns, "ctr-dropped", fmt.Sprintf("127.0.0.1:%d", l.Port), 5, 1500*time.Millisecond)
	if b.Connected != 0 {
		t.Fatalf("%d connects got through the drop rule", b.Connected)
	}
	b.Release(t) // closes the sockets: no more SYN retransmissions
	want := testenv.NFTCounter(t, ns, "ruledrop")
	if want == 0 {
		t.Fatal("nft counted no drops")
	}
	time.Sleep(1500 * time.Millisecond) // let a drop-count sample pass
	if err := tr.stop(); err != nil {
		t.Fatal(err)
	}
	evs := tr.col.snapshot()
	totals := dropTotals(evs, names, ns.Inode)
	if got := totals["NETFILTER_DROP"]; got != want {
		t.Errorf("NETFILTER_DROP count = %d, nft rule counted %d (all: %v)", got, want, totals)
	}
	var records int
	for i := range evs {
		ev := &evs[i]
		if ev.Kind != events.KindDrop {
			continue
		}
		names.Apply(ev)
		d := &ev.Drop
		if d.ReasonName != "NETFILTER_DROP" || d.NetNS != ns.Inode {
			continue
		}
		records++
		if d.Dst.Port() != l.Port || d.Dst.Addr().String() != "127.0.0.1" || events.ProtoName(d.L4Proto) != "tcp" || d.TCPFlags&events.TCPFlagSYN == 0 {
			t.Errorf("drop tuple %v -> %v proto %d flags %#x: want a SYN to 127.0.0.1:%d", d.Src, d.Dst, d.L4Proto, d.TCPFlags, l.Port)
		}
		if d.Owner.PID != uint32(b.PID) || string(d.Owner.CommBytes()) != "ctr-dropped" {
			t.Errorf("drop owner = %d %q, want %d ctr-dropped", d.Owner.PID, d.Owner.CommBytes(), b.PID)
		}
		if d.NoCT {
			t.Errorf("a rule's drop of a tracked packet flagged as having no conntrack entry")
		}
		// nftables drops inside its own chain walk (nft_do_chain).
		if !strings.HasPrefix(d.Symbol, "nft_do_chain+") {
			t.Errorf("drop location %s, want nft_do_chain+...", d.Symbol)
		}
	}
	// Conntrack's drop statistic did not move: not one of these is a
	// conntrack drop.
	agg := aggregate.NewConntrackStats()
	now := time.Now()
	sample := func() *events.Event {
		c, err := kernel.ConntrackStats(openNS(t, ns))
		if err != nil {
			t.Fatal(err)
		}
		c.NetNS = ns.Inode
		return &events.Event{Kind: events.KindConntrackStats, Conntrack: c}
	}
	agg.Apply(sample(), now)
	for i := range evs {
		agg.Apply(&evs[i], now)
	}
	agg.Apply(sample(), now.Add(time.Second))
	for _, n := range agg.Snapshot() {
		if n.ConntrackDrops != 0 || len(n.RefusedFlows) != 0 {
			t.Errorf("rule drops reported as conntrack drops: %+v", n)
		}
	}
	if uint64(records) != want {
		t.Errorf("%d drop records, want %d (one per dropped SYN)", records, want)
	}
}
