package aggregate

import (
	"github.com/conntracer/conntracer/internal/events"

	"net/netip"
	"testing"
	"time"
)

func ctSample(netns uint32, entries, drop uint64) *events.Event {
	return &events.Event{Kind: events.KindConntrackStats, Conntrack: events.Conntrack{NetNS: netns, Entries: entries, Max: 256, Drop: drop, TimeoutEstablished: 432000}}
}

func ntDrop(netns uint32, noCT bool, pid uint32, comm string) *events.Event {
	ev := &events.Event{Kind: events.KindDrop, Drop: events.Drop{ReasonName: "NETFILTER_DROP", NetNS: netns, NoCT: noCT, L4Proto: 6,
		Src: netip.MustParseAddrPort("127.0.0.1:40000"), Dst: netip.MustParseAddrPort("127.0.0.1:80")}}
	ev.Drop.Owner.PID = pid
	ev.Drop.Owner.SetComm(comm)
	return ev
}

// A NETFILTER_DROP without a conntrack entry is a table-full drop only when
// its namespace's drop statistic rose in the same window.
func TestConntrackClassification(t *testing.T) {
	now := time.Unix(1000, 0)
	s := NewConntrackStats()
	s.Apply(ctSample(1, 10, 5), now)
	s.Apply(ctSample(2, 10, 0), now)
	// netns 1: three table-full drops; netns 2: two untracked rule drops.
	for range 3 {
		s.Apply(ntDrop(1, true, 42, "churner"), now)
	}
	s.Apply(ntDrop(2, true, 7, "other"), now)
	s.Apply(ntDrop(2, true, 7, "other"), now)
	s.Apply(ntDrop(1, false, 9, "tracked"), now) // a rule's drop of a tracked packet
	s.Apply(ctSample(1, 256, 8), now.Add(time.Second))
	s.Apply(ctSample(2, 10, 0), now.Add(time.Second))

	snap := s.Snapshot()
	if len(snap) != 2 {
		t.Fatalf("%d namespaces, want 2", len(snap))
	}
	full, other := snap[0], snap[1]
	if full.NetNS != 1 || full.ConntrackDrops != 3 || len(full.RefusedFlows) != 3 || full.Fill != 1 {
		t.Errorf("netns 1: %+v", full)
	}
	if len(full.TopProcesses) != 1 || full.TopProcesses[0].PID != 42 || full.TopProcesses[0].Refused != 3 {
		t.Errorf("netns 1 top processes: %+v", full.TopProcesses)
	}
	if other.ConntrackDrops != 0 || len(other.RefusedFlows) != 0 {
		t.Errorf("rule drops reported as conntrack drops: %+v", other)
	}
	kinds := map[string]int{}
	for _, f := range ConntrackFindings(snap) {
		kinds[f.Kind]++
		if f.Kind == "conntrack_table_full" && (f.PID != 42 || f.NetNS != 1) {
			t.Errorf("table-full finding names %d in %d", f.PID, f.NetNS)
		}
	}
	if kinds["conntrack_table_full"] != 1 || kinds["conntrack_long_timeouts"] != 1 || kinds["conntrack_near_full"] != 0 {
		t.Errorf("findings %v", kinds)
	}
}

// Drop totals are the kernel's cumulative counts, not the sampled records.
func TestDropStatsCounts(t *testing.T) {
	now := time.Unix(1000, 0)
	s := NewDropStats()
	s.Apply(ntDrop(1, false, 9, "client"), now)
	for _, n := range []uint64{5, 120} { // two reads of the same key
		ev := &events.Event{Kind: events.KindDropCount, Drop: events.Drop{ReasonName: "NETFILTER_DROP", Symbol: "nft_do_chain+0x3e8", NetNS: 1, Count: n}}
		ev.Drop.Owner.PID = 9
		s.Apply(ev, now)
	}
	ov := &events.Event{Kind: events.KindListenOverflow, Drop: events.Drop{NetNS: 1, Count: 54, Dst: netip.MustParseAddrPort("127.0.0.1:9999"), Backlog: 1, Somaxconn: 4096}}
	ov.Drop.Owner.PID = 3
	ov.Drop.Owner.SetComm("server")
	s.Apply(ov, now)
	snap := s.Snapshot()
	if len(snap.ByReason) != 1 || snap.ByReason[0].Count != 120 || snap.ByReason[0].Comm != "client" {
		t.Fatalf("by reason: %+v", snap.ByReason)
	}
	if len(snap.ListenOverflows) != 1 || snap.ListenOverflows[0].Overflows != 54 {
		t.Fatalf("overflows: %+v", snap.ListenOverflows)
	}
	fs := DropFindings(snap, now)
	if len(fs) != 2 || fs[0].Kind != "listen_overflow" || fs[0].Comm != "server" || fs[1].Kind != "drops" || fs[1].Evidence["count"] != 120 {
		t.Errorf("findings: %+v", fs)
	}
}

// A drops or listen_overflow finding ends once its count stops rising for
// DropFindingWindow, and comes back when it rises again: before, both
// stood for ever once raised, so conntracer_findings never went down.
func TestDropFindingsEndWhenDropsStop(t *testing.T) {
	start := time.Unix(1000, 0)
	s := NewDropStats()
	count := func(n uint64, at time.Time) {
		ev := &events.Event{Kind: events.KindDropCount, Drop: events.Drop{ReasonName: "NETFILTER_DROP", Symbol: "nft_do_chain+0x3e8", NetNS: 1, Count: n}}
		s.Apply(ev, at)
	}
	overflow := func(at time.Time) {
		ov := &events.Event{Kind: events.KindListenOverflow, Drop: events.Drop{NetNS: 1, Count: 3, Dst: netip.MustParseAddrPort("127.0.0.1:9999")}}
		s.Apply(ov, at)
	}
	kinds := func(now time.Time) map[string]int {
		m := map[string]int{}
		for _, f := range DropFindings(s.Snapshot(), now) {
			m[f.Kind]++
		}
		return m
	}
	count(50, start)
	overflow(start)
	if k := kinds(start.Add(time.Minute)); k["drops"] != 1 || k["listen_overflow"] != 1 {
		t.Fatalf("while dropping: %v", k)
	}
	// The same cumulative count read again is not a new drop.
	later := start.Add(DropFindingWindow + time.Minute)
	count(50, later)
	if k := kinds(later); len(k) != 0 {
		t.Fatalf("%v after the drops stopped: want no finding", k)
	}
	count(80, later)
	overflow(later)
	if k := kinds(later); k["drops"] != 1 || k["listen_overflow"] != 1 {
		t.Fatalf("drops again: %v", k)
	}
	if got := s.Snapshot().ByReason[0].Last; !got.Equal(later) {
		t.Errorf("last rise %v, want %v", got, later)
	}
}
