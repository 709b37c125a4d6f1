package aggregate

import (
	"github.com/conntracer/conntracer/internal/events"

	"maps"
	"net/netip"
	"testing"
	"time"
)

const ctTestNS = 4026532100

func ctEv(kind events.Kind, id uint32, proto uint8, src, dst string, state uint8) events.Event {
	s, d := netip.MustParseAddrPort(src), netip.MustParseAddrPort(dst)
	return events.Event{Kind: kind, ConntrackEntry: events.ConntrackEntry{NetNS: ctTestNS, ID: id, Family: events.FamilyIPv4, Proto: proto,
		OrigSrc: s, OrigDst: d, ReplySrc: d, ReplyDst: s, TCPState: state}}
}

func sockEv(pid uint32, comm, local, remote string, state events.TCPState) events.Event {
	ev := events.Event{Kind: events.KindSockOpen}
	ev.Conn = events.Conn{NetNS: ctTestNS, Family: events.FamilyIPv4, Local: netip.MustParseAddrPort(local),
		Remote: netip.MustParseAddrPort(remote), LastState: state, Role: events.RoleActive, OpenNs: uint64(pid)*1000 + 1}
	ev.Conn.Owner = events.Process{PID: pid, StartNs: uint64(pid) * startTick, Source: events.OwnerConnect}
	ev.Conn.Owner.SetComm(comm)
	return ev
}

type ctRun struct {
	t   *testing.T
	agg *Aggregator
	now time.Time
}

func (r *ctRun) apply(evs ...events.Event) {
	for i := range evs {
		r.now = r.now.Add(time.Millisecond)
		r.agg.Apply(&evs[i], r.now)
	}
}

func (r *ctRun) ns() ConntrackNSSnapshot {
	r.t.Helper()
	for _, c := range r.agg.Snapshot().Conntrack {
		if c.NetNS == ctTestNS {
			return c
		}
	}
	r.t.Fatalf("no conntrack object for netns %d", ctTestNS)
	return ConntrackNSSnapshot{}
}

func (r *ctRun) procs() map[uint32]ProcessCount {
	m := map[uint32]ProcessCount{}
	for _, p := range r.ns().TopProcesses {
		m[p.PID] = p
	}
	return m
}

const (
	ctSynSent     = 1
	ctEstablished = 3
	ctTimeWait    = 7
)

// Entries are attributed to the local client (original source), else to
// the local server (reply source); counted by state; updates move the
// state, destroys take them away; UDP stays unattributed.
func TestConntrackEntriesPerProcessAndState(t *testing.T) {
	r := &ctRun{t: t, agg: NewAggregator(DefaultThresholds()), now: time.Unix(1_700_000_000, 0)}
	// The start-up dump of an empty table makes the table exist.
	r.apply(events.Event{Kind: events.KindConntrackResync, ConntrackEntry: events.ConntrackEntry{NetNS: ctTestNS, Generation: 1}})
	// The entries come first (the socket round that sees their sockets
	// is up to a second away), and are attributed when the round ends.
	r.apply(
		ctEv(events.KindConntrackNew, 1, 6, "127.0.0.1:40000", "127.0.0.1:80", ctSynSent),
		ctEv(events.KindConntrackNew, 2, 6, "127.0.0.1:40001", "127.0.0.1:80", ctSynSent),
		ctEv(events.KindConntrackNew, 3, 6, "10.0.0.9:5555", "127.0.0.1:80", ctSynSent), // a remote client of the server
		ctEv(events.KindConntrackNew, 4, 17, "127.0.0.1:5353", "127.0.0.1:53", 0),
		ctEv(events.KindConntrackUpdate, 1, 6, "127.0.0.1:40000", "127.0.0.1:80", ctEstablished),
		ctEv(events.KindConntrackUpdate, 2, 6, "127.0.0.1:40001", "127.0.0.1:80", ctEstablished),
	)
	if ns := r.ns(); ns.Unattributed != 4 {
		t.Fatalf("attributed before any socket round: %+v", ns)
	}
	round := func() {
		r.apply(
			sockEv(100, "client", "127.0.0.1:40000", "127.0.0.1:80", events.TCPEstablished),
			sockEv(100, "client", "127.0.0.1:40001", "127.0.0.1:80", events.TCPEstablished),
			sockEv(200, "server", "127.0.0.1:80", "127.0.0.1:40000", events.TCPEstablished),
			events.Event{Kind: events.KindSockSampleDone},
		)
	}
	round()
	// The remote client's entry waits one more round for a local client
	// socket before it goes to the server.
	if ns := r.ns(); ns.Unattributed != 2 {
		t.Fatalf("after one round, want the remote flow and UDP unattributed: %+v", ns)
	}
	round()
	ns := r.ns()
	if ns.Tracked != 4 || ns.Unattributed != 1 || !maps.Equal(ns.ByState, map[string]uint64{"ESTABLISHED": 2, "SYN_SENT": 1}) ||
		!maps.Equal(ns.ByProto, map[string]uint64{"tcp": 3, "udp": 1}) {
		t.Fatalf("table: %+v", ns)
	}
	p := r.procs()
	if p[100].Entries != 2 || p[100].Comm != "client" || !maps.Equal(p[100].ByState, map[string]uint64{"ESTABLISHED": 2}) {
		t.Errorf("client: %+v", p[100])
	}
	if p[200].Entries != 1 || !maps.Equal(p[200].ByState, map[string]uint64{"SYN_SENT": 1}) {
		t.Errorf("server: %+v", p[200])
	}

	r.apply(
		ctEv(events.KindConntrackUpdate, 1, 6, "127.0.0.1:40000", "127.0.0.1:80", ctTimeWait),
		ctEv(events.KindConntrackDestroy, 2, 6, "127.0.0.1:40001", "127.0.0.1:80", ctEstablished),
		ctEv(events.KindConntrackDestroy, 3, 6, "10.0.0.9:5555", "127.0.0.1:80", ctEstablished),
		ctEv(events.KindConntrackDestroy, 99, 6, "10.0.0.1:1", "10.0.0.2:2", ctEstablished), // never seen: ignored
	)
	// The client's sockets are gone from the rounds; its entry stays its.
	r.apply(events.Event{Kind: events.KindSockSampleDone}, events.Event{Kind: events.KindSockSampleDone}, events.Event{Kind: events.KindSockSampleDone})
	ns = r.ns()
	p = r.procs()
	if ns.Tracked != 2 || !maps.Equal(ns.ByState, map[string]uint64{"TIME_WAIT": 1}) || len(p) != 1 ||
		p[100].Entries != 1 || !maps.Equal(p[100].ByState, map[string]uint64{"TIME_WAIT": 1}) {
		t.Errorf("after destroys: %+v", ns)
	}
}

// An entry whose socket the tracer has not seen yet is attributed at the
// end of the next round that has it, or by the socket's close record.
func TestConntrackEntryAttributedLater(t *testing.T) {
	r := &ctRun{t: t, agg: NewAggregator(DefaultThresholds()), now: time.Unix(1_700_000_000, 0)}
	r.apply(events.Event{Kind: events.KindConntrackResync, ConntrackEntry: events.ConntrackEntry{NetNS: ctTestNS, Generation: 1}})
	r.apply(
		ctEv(events.KindConntrackNew, 1, 6, "127.0.0.1:40000", "127.0.0.1:80", ctSynSent),
		ctEv(events.KindConntrackNew, 2, 6, "127.0.0.1:40001", "127.0.0.1:80", ctSynSent),
	)
	if ns := r.ns(); ns.Unattributed != 2 {
		t.Fatalf("before any round: %+v", ns)
	}
	closed := sockEv(300, "shortlived", "127.0.0.1:40001", "127.0.0.1:80", events.TCPClose)
	closed.Kind = events.KindConnClosed
	r.apply(closed, sockEv(100, "client", "127.0.0.1:40000", "127.0.0.1:80", events.TCPEstablished), events.Event{Kind: events.KindSockSampleDone})
	p := r.procs()
	if ns := r.ns(); ns.Unattributed != 0 || p[100].Entries != 1 || p[300].Entries != 1 || p[300].Comm != "shortlived" {
		t.Errorf("after the round: %+v", ns)
	}
}

// A resync replaces the namespace's set: entries the dump does not list
// are gone, those it lists keep their owner, new ones are added; the loss
// and the corrections are counted.
func TestConntrackResyncReplacesTheSet(t *testing.T) {
	r := &ctRun{t: t, agg: NewAggregator(DefaultThresholds()), now: time.Unix(1_700_000_000, 0)}
	r.apply(events.Event{Kind: events.KindConntrackResync, ConntrackEntry: events.ConntrackEntry{NetNS: ctTestNS, Generation: 1}})
	r.apply(
		ctEv(events.KindConntrackNew, 1, 6, "127.0.0.1:40000", "127.0.0.1:80", ctEstablished),
		ctEv(events.KindConntrackNew, 2, 6, "127.0.0.1:40009", "127.0.0.1:80", ctEstablished),
	)
	r.apply(sockEv(100, "client", "127.0.0.1:40000", "127.0.0.1:80", events.TCPEstablished), events.Event{Kind: events.KindSockSampleDone})
	// Sockets age out of the index; entry 1 keeps its owner through the dump.
	r.apply(events.Event{Kind: events.KindSockSampleDone}, events.Event{Kind: events.KindSockSampleDone}, events.Event{Kind: events.KindSockSampleDone})
	dump := func(id uint32, src string, state uint8) events.Event {
		ev := ctEv(events.KindConntrackNew, id, 6, src, "127.0.0.1:80", state)
		ev.ConntrackEntry.Dump, ev.ConntrackEntry.Generation = true, 2
		return ev
	}
	r.apply(events.Event{Kind: events.KindConntrackResync, ConntrackEntry: events.ConntrackEntry{NetNS: ctTestNS, Generation: 2, Lost: 3, DumpEntries: 2}},
		dump(1, "127.0.0.1:40000", ctTimeWait))
	if ns := r.ns(); ns.Tracked != 2 {
		t.Fatalf("mid-dump the old set stays: %+v", ns)
	}
	r.apply(dump(3, "127.0.0.1:40003", ctEstablished))
	ns := r.ns()
	p := r.procs()
	if ns.Tracked != 2 || ns.Lost != 3 || ns.Resyncs != 1 || ns.Dumps != 2 || ns.Corrected != 2 ||
		!maps.Equal(ns.ByState, map[string]uint64{"TIME_WAIT": 1, "ESTABLISHED": 1}) ||
		p[100].Entries != 1 || !maps.Equal(p[100].ByState, map[string]uint64{"TIME_WAIT": 1}) {
		t.Errorf("after the resync: %+v", ns)
	}
}

// Updating and destroying known entries allocates nothing.
func TestConntrackEntryHotPathAllocs(t *testing.T) {
	r := &ctRun{t: t, agg: NewAggregator(DefaultThresholds()), now: time.Unix(1_700_000_000, 0)}
	r.apply(events.Event{Kind: events.KindConntrackResync, ConntrackEntry: events.ConntrackEntry{NetNS: ctTestNS, Generation: 1}})
	r.apply(sockEv(100, "client", "127.0.0.1:40000", "127.0.0.1:80", events.TCPEstablished), events.Event{Kind: events.KindSockSampleDone})
	evs := []events.Event{
		ctEv(events.KindConntrackNew, 1, 6, "127.0.0.1:40000", "127.0.0.1:80", ctSynSent),
		ctEv(events.KindConntrackUpdate, 1, 6, "127.0.0.1:40000", "127.0.0.1:80", ctEstablished),
		ctEv(events.KindConntrackUpdate, 1, 6, "127.0.0.1:40000", "127.0.0.1:80", ctTimeWait),
		ctEv(events.KindConntrackDestroy, 1, 6, "127.0.0.1:40000", "127.0.0.1:80", ctTimeWait),
	}
	r.apply(evs...) // warm the maps and the owner (kept until the round ends)
	if n := testing.AllocsPerRun(100, func() { r.apply(evs...) }); n != 0 {
		t.Errorf("%v allocations per entry lifecycle, want 0", n)
	}
}

// BenchmarkConntrackEntryEvents: the aggregator's cost per entry event
// (a NEW, two UPDATEs and a DESTROY per op) in a table of 10,000 entries.
func BenchmarkConntrackEntryEvents(b *testing.B) {
	agg := NewAggregator(DefaultThresholds())
	now := time.Unix(1_700_000_000, 0)
	for i := range 10_000 {
		ev := ctEv(events.KindConntrackNew, uint32(i+1000), 6, "127.0.0.1:1", "127.0.0.1:80", ctEstablished)
		ev.ConntrackEntry.OrigSrc = netip.AddrPortFrom(ev.ConntrackEntry.OrigSrc.Addr(), uint16(i+1))
		agg.Apply(&ev, now)
	}
	evs := []events.Event{
		ctEv(events.KindConntrackNew, 1, 6, "127.0.0.1:40000", "127.0.0.1:80", ctSynSent),
		ctEv(events.KindConntrackUpdate, 1, 6, "127.0.0.1:40000", "127.0.0.1:80", ctEstablished),
		ctEv(events.KindConntrackUpdate, 1, 6, "127.0.0.1:40000", "127.0.0.1:80", ctTimeWait),
		ctEv(events.KindConntrackDestroy, 1, 6, "127.0.0.1:40000", "127.0.0.1:80", ctTimeWait),
	}
	b.ReportAllocs()
	for b.Loop() {
		for i := range evs {
			agg.Apply(&evs[i], now)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(evs)), "ns/event")
}
