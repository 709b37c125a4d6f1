package aggregate

import (
	"github.com/conntracer/conntracer/internal/events"

	"net/netip"
	"testing"
	"time"
)

// An alloc failure from the in-kernel hooks is a refused flow at once; the
// NO_CT drop of the same packet names its owner and is not counted again;
// a namespace without alloc failures keeps inferring refusals from drops.
func TestConntrackAllocFailedCountsOnce(t *testing.T) {
	s := NewConntrackStats()
	now := time.Unix(1000, 0)
	src := netip.MustParseAddrPort("127.0.0.1:40000")
	dst := netip.MustParseAddrPort("127.0.0.1:80")
	stats := func(ns uint32, drop uint64, at time.Time) {
		s.Apply(&events.Event{Kind: events.KindConntrackStats, Conntrack: events.Conntrack{NetNS: ns, Drop: drop, Max: 10}}, at)
	}
	alloc := func(ns uint32, src netip.AddrPort) {
		s.Apply(&events.Event{Kind: events.KindConntrackAllocFailed, ConntrackEntry: events.ConntrackEntry{
			NetNS: ns, Family: events.FamilyIPv4, Proto: 6, OrigSrc: src, OrigDst: dst, ReplySrc: dst, ReplyDst: src,
		}}, now)
	}
	drop := func(ns uint32, src netip.AddrPort) {
		ev := events.Event{Kind: events.KindDrop, Drop: events.Drop{
			ReasonName: "NETFILTER_DROP", NoCT: true, NetNS: ns, L4Proto: 6, Src: src, Dst: dst,
			Owner: events.Process{PID: 42}, Count: 1,
		}}
		copy(ev.Drop.Owner.Comm[:], "churner")
		s.Apply(&ev, now)
	}

	const exactNS, inferredNS = 1, 2
	stats(exactNS, 0, now)
	stats(inferredNS, 0, now)
	// Namespace 1: two refusals seen by both hooks, one only by the alloc hook.
	alloc(exactNS, src)
	drop(exactNS, src)
	alloc(exactNS, netip.MustParseAddrPort("127.0.0.1:40001"))
	drop(exactNS, netip.MustParseAddrPort("127.0.0.1:40001"))
	alloc(exactNS, netip.MustParseAddrPort("127.0.0.1:40002"))
	// Namespace 2: drops only, confirmed by the statistic.
	drop(inferredNS, src)
	stats(exactNS, 3, now.Add(time.Second))
	stats(inferredNS, 1, now.Add(time.Second))

	for _, sn := range s.Snapshot() {
		switch sn.NetNS {
		case exactNS:
			if len(sn.RefusedFlows) != 3 {
				t.Fatalf("exact namespace: %d refused flows, want 3: %+v", len(sn.RefusedFlows), sn.RefusedFlows)
			}
			owned := 0
			for _, f := range sn.RefusedFlows {
				if !f.Exact {
					t.Errorf("refused flow %+v not marked exact", f)
				}
				if f.PID == 42 && f.Comm == "churner" {
					owned++
				}
			}
			if owned != 2 {
				t.Errorf("%d refused flows name their owner, want 2: %+v", owned, sn.RefusedFlows)
			}
			if len(sn.TopProcesses) != 1 || sn.TopProcesses[0].Refused != 2 {
				t.Errorf("top processes %+v, want pid 42 with 2 refusals", sn.TopProcesses)
			}
		case inferredNS:
			if len(sn.RefusedFlows) != 1 || sn.RefusedFlows[0].Exact || sn.RefusedFlows[0].PID != 42 {
				t.Errorf("inferred namespace: refused flows %+v, want one inferred from its drop", sn.RefusedFlows)
			}
		}
	}
}
