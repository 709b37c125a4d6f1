package aggregate

import (
	"github.com/conntracer/conntracer/internal/events"

	"net/netip"
	"slices"
	"testing"
	"time"
)

// A namespace that goes leaves every per-namespace section within the
// round that reports it; a namespace born within the trace (or reusing a
// dead one's inode) counts from zero; counters never go back: not the
// node's drop totals when a namespace goes, not a namespace's counters
// when an unreported reuse makes the kernel's go down.
func TestNetNSRetentionAndReuse(t *testing.T) {
	a := NewAggregator(DefaultThresholds())
	now := time.Unix(1000, 0)
	apply := func(ev events.Event) { now = now.Add(time.Second); a.Apply(&ev, now) }
	ctStats := func(ns uint32, drop, insert uint64) {
		apply(events.Event{Kind: events.KindConntrackStats, Conntrack: events.Conntrack{NetNS: ns, Drop: drop, Insert: insert, Entries: 5, Max: 256}})
	}
	ident := func(k events.Kind, ns uint32) { apply(events.Event{Kind: k, Counters: events.Counters{NetNS: ns}}) }
	dropCount := func(ns uint32, n uint64) {
		apply(events.Event{Kind: events.KindDropCount, Drop: events.Drop{ReasonName: "NO_SOCKET", Symbol: "tcp_v4_rcv", NetNS: ns, Count: n}})
	}
	kcount := func(ns uint32, v uint64) {
		ev := events.Event{Kind: events.KindKernelCounters, Counters: events.Counters{NetNS: ns}}
		for i, n := range events.KernelCounterNames {
			if !events.KernelGauges[n] {
				ev.Counters.Values[i] = v
			}
		}
		apply(ev)
	}
	ct := func(ns uint32) *ConntrackNSSnapshot {
		for _, c := range a.Snapshot().Conntrack {
			if c.NetNS == ns {
				return &c
			}
		}
		return nil
	}
	dropTotal := func() uint64 {
		d := a.Snapshot().Drops
		n := d.Departed["NO_SOCKET"]
		for _, dc := range d.ByReason {
			n += dc.Count
		}
		return n
	}
	deltas := func(ns uint32) map[string]int64 {
		for _, c := range a.Snapshot().KernelCounters {
			if c.Kind == "kernel_counters" && c.NetNS == ns {
				return c.Deltas
			}
		}
		return nil
	}

	const ino = 4026532999
	// Known at start: its first sample is the baseline.
	ctStats(ino, 100, 1000)
	ctStats(ino, 130, 1010)
	dropCount(ino, 144)
	kcount(ino, 50)
	kcount(ino, 60)
	if c := ct(ino); c == nil || c.ConntrackDrops != 30 || c.Inserts != 10 {
		t.Fatalf("before: conntrack %+v, want 30 drops and 10 inserts since the baseline", c)
	}
	if d := deltas(ino)["TcpActiveOpens"]; d != 10 {
		t.Fatalf("kernel counter delta %d, want 10", d)
	}

	findingsOf := func() []string {
		apply(events.Event{Kind: events.KindSockSampleDone}) // findings are evaluated at the end of a round
		var kinds []string
		for _, f := range a.Snapshot().Findings {
			if f.NetNS == ino {
				kinds = append(kinds, f.Kind)
			}
		}
		return kinds
	}
	if k := findingsOf(); !slices.Contains(k, "conntrack_table_full") {
		t.Fatalf("before: findings of the namespace %v, want conntrack_table_full", k)
	}

	apply(events.Event{Kind: events.KindTimeWait, Conn: events.Conn{NetNS: ino, Family: events.FamilyIPv4,
		Local: netip.MustParseAddrPort("10.0.0.1:40000"), Remote: netip.MustParseAddrPort("10.0.0.2:80")},
		Sample: events.Sample{TimeNs: 1e9, ExpiresNs: 61e9}})
	timeWait := func() (n int) {
		for _, c := range a.Snapshot().TimeWait.ByNetNS {
			if c.NetNS == ino {
				n += int(c.Total)
			}
		}
		return n
	}
	if n := timeWait(); n != 1 {
		t.Fatalf("before: %d TIME_WAIT sockets in the namespace, want 1", n)
	}

	ident(events.KindNetNSGone, ino)
	if n := timeWait(); n != 0 {
		t.Errorf("namespace gone: %d of its TIME_WAIT sockets stay", n)
	}
	if k := findingsOf(); len(k) > 0 {
		t.Errorf("namespace gone: its findings stay: %v", k)
	}
	if c := ct(ino); c != nil {
		t.Errorf("namespace gone: its conntrack object stays: %+v", c)
	}
	if d := deltas(ino); d != nil {
		t.Errorf("namespace gone: its kernel counters stay: %v", d)
	}
	for _, dc := range a.Snapshot().Drops.ByReason {
		if dc.NetNS == ino {
			t.Errorf("namespace gone: its drops stay: %+v", dc)
		}
	}
	if n := dropTotal(); n != 144 {
		t.Errorf("node drop total %d after the namespace went, want 144 (never down)", n)
	}

	dropCount(ino, 144) // the kernel's key outlives the namespace and is read again
	for _, dc := range a.Snapshot().Drops.ByReason {
		if dc.NetNS == ino {
			t.Errorf("namespace gone: its drops come back when the kernel's key is read again: %+v", dc)
		}
	}

	// Another namespace gets the inode: everything from zero. The kernel's
	// drop counter key is shared (same inode) and goes on from 144.
	ident(events.KindNetNSNew, ino)
	ctStats(ino, 7, 12)
	dropCount(ino, 144+3)
	kcount(ino, 4)
	if c := ct(ino); c == nil || c.ConntrackDrops != 7 || c.Inserts != 12 {
		t.Errorf("reused inode: conntrack %+v, want 7 drops and 12 inserts (from zero)", c)
	}
	if d := deltas(ino)["TcpActiveOpens"]; d != 4 {
		t.Errorf("reused inode: kernel counter delta %d, want 4 (from zero)", d)
	}
	if n := dropTotal(); n != 147 {
		t.Errorf("node drop total %d, want 147", n)
	}
	for _, dc := range a.Snapshot().Drops.ByReason {
		if dc.NetNS == ino && dc.Count != 3 {
			t.Errorf("reused inode: drops %d, want the new namespace's 3", dc.Count)
		}
	}

	// A reuse nobody reported: counters go down. Never a negative change.
	ctStats(ino, 2, 1)
	kcount(ino, 1)
	if c := ct(ino); c == nil || c.ConntrackDrops != 2 || c.Inserts != 1 {
		t.Errorf("unreported reuse: conntrack %+v, want 2 drops and 1 insert (from zero)", c)
	}
	for name, d := range deltas(ino) {
		if d < 0 && !events.KernelGauges[name] {
			t.Errorf("unreported reuse: %s changed by %d", name, d)
		}
	}
}
