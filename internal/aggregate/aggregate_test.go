package aggregate

import (
	"github.com/conntracer/conntracer/internal/events"

	"fmt"
	"net/netip"
	"testing"
	"time"
)

// fakeWorld drives an Aggregator with synthetic events and a fake clock:
// boot time (kernel ns) and wall time advance together.
type fakeWorld struct {
	t      testing.TB
	agg    *Aggregator
	wall   time.Time
	bootNs uint64
	netns  uint32
}

func newFakeWorld(t testing.TB, th Thresholds) *fakeWorld {
	return &fakeWorld{t: t, agg: NewAggregator(th), wall: time.Unix(1_700_000_000, 0), bootNs: 1_000_000_000_000, netns: 4026531840}
}

func (w *fakeWorld) advance(d time.Duration) {
	w.wall = w.wall.Add(d)
	w.bootNs += uint64(d)
}

func proc(pid uint32, comm string) events.Process {
	p := events.Process{PID: pid, TID: pid, StartNs: uint64(pid) * 1000, CgroupID: 77, Source: events.OwnerConnect}
	p.SetComm(comm)
	return p
}

// sock is a synthetic connection.
type sock struct {
	owner  events.Process
	local  string
	remote string
	role   events.Role
	openNs uint64
	cookie uint64
}

func (w *fakeWorld) conn(s *sock) events.Conn {
	return events.Conn{
		Cookie: s.cookie, NetNS: w.netns, Family: events.FamilyIPv4,
		Local: netip.MustParseAddrPort(s.local), Remote: netip.MustParseAddrPort(s.remote),
		Role: s.role, Owner: s.owner, OpenNs: s.openNs, SeenOpen: s.openNs != 0,
	}
}

// sample applies one round of the kernel's socket table.
func (w *fakeWorld) sample(socks map[*sock]events.TCPState) {
	for s, st := range socks {
		ev := events.Event{Kind: events.KindSockOpen, Conn: w.conn(s), Sample: events.Sample{TimeNs: w.bootNs}}
		ev.Conn.LastState = st
		w.agg.Apply(&ev, w.wall)
	}
	w.agg.Apply(&events.Event{Kind: events.KindSockSampleDone, Sample: events.Sample{TimeNs: w.bootNs}}, w.wall)
}

func (w *fakeWorld) close(s *sock, end events.EndState) {
	ev := events.Event{Kind: events.KindConnClosed, Conn: w.conn(s)}
	ev.Conn.CloseNs = w.bootNs
	ev.Conn.EndState = end
	w.agg.Apply(&ev, w.wall)
}

func (w *fakeWorld) open(owner events.Process, local, remote string, role events.Role) *sock {
	return &sock{owner: owner, local: local, remote: remote, role: role, openNs: w.bootNs}
}

func findProc(s *Snapshot, pid uint32) *ProcessSnapshot {
	for i := range s.Processes {
		if s.Processes[i].PID == pid {
			return &s.Processes[i]
		}
	}
	return nil
}

func findRemote(p *ProcessSnapshot, remote string) *RemoteSnapshot {
	for i := range p.Remotes {
		if p.Remotes[i].Remote == remote {
			return &p.Remotes[i]
		}
	}
	return nil
}

func findingsOf(s *Snapshot, kind string) []Finding {
	var out []Finding
	for _, f := range s.Findings {
		if f.Kind == kind {
			out = append(out, f)
		}
	}
	return out
}

func TestAggregatorCountsOpensOnceAndStatesBySample(t *testing.T) {
	w := newFakeWorld(t, DefaultThresholds())
	cl := proc(100, "client")
	a := w.open(cl, "10.0.0.1:40000", "10.0.0.2:6379", events.RoleActive)
	w.advance(time.Millisecond)
	b := w.open(cl, "10.0.0.1:40001", "10.0.0.2:6379", events.RoleActive)
	w.advance(100 * time.Millisecond)
	firstRound := w.bootNs
	w.sample(map[*sock]events.TCPState{a: events.TCPEstablished, b: events.TCPEstablished})
	w.advance(time.Second)
	w.sample(map[*sock]events.TCPState{a: events.TCPEstablished, b: events.TCPCloseWait})
	// A connection opened and closed between two rounds.
	c := w.open(cl, "10.0.0.1:40002", "10.0.0.2:6379", events.RoleActive)
	w.advance(10 * time.Millisecond)
	w.close(c, events.EndTimeWait)
	// b closes; a later round read before its close is applied must not
	// count it again.
	w.close(b, events.EndCloseWait)
	w.sample(map[*sock]events.TCPState{a: events.TCPEstablished, b: events.TCPLastAck})
	w.advance(time.Second)
	w.sample(map[*sock]events.TCPState{a: events.TCPEstablished})

	s := w.agg.Snapshot()
	p := findProc(s, 100)
	if p == nil {
		t.Fatalf("no process 100 in %+v", s.Processes)
	}
	if p.Opened != 3 || p.OpenedActive != 3 || p.Closed != 2 {
		t.Errorf("opened %d (active %d), closed %d; want 3 (3), 2", p.Opened, p.OpenedActive, p.Closed)
	}
	if p.States[events.TCPEstablished].Count != 1 || p.States[events.TCPCloseWait].Count != 0 || p.TimeWait != 1 {
		t.Errorf("states %+v, time_wait %d; want 1 ESTABLISHED, 1 TIME_WAIT", p.States, p.TimeWait)
	}
	if got, want := p.States[events.TCPEstablished].OldestAge, time.Duration(w.bootNs-firstRound); got != want {
		t.Errorf("oldest ESTABLISHED age %v, want %v (since the first round that saw it)", got, want)
	}
	if p.Comm != "client" || p.CgroupID != 77 {
		t.Errorf("comm %q cgroup %d", p.Comm, p.CgroupID)
	}
	r := findRemote(p, "10.0.0.2:6379")
	if r == nil || r.Opened != 3 || r.TimeWait != 1 || r.ShortLived != 1 || r.LifetimeKnown != 2 {
		t.Errorf("remote %+v", r)
	}
	if s.TimeWait.Total != 1 || s.TimeWait.Unattributed != 0 {
		t.Errorf("time wait %+v", s.TimeWait)
	}
}

func TestAggregatorPassiveRemotesGroupByPeerAddress(t *testing.T) {
	w := newFakeWorld(t, DefaultThresholds())
	srv := proc(200, "server")
	srv.Source = events.OwnerAccept
	m := map[*sock]events.TCPState{}
	for i := 0; i < 5; i++ {
		m[w.open(srv, "10.0.0.2:6379", fmt.Sprintf("10.0.0.1:%d", 40000+i), events.RolePassive)] = events.TCPCloseWait
		w.advance(time.Millisecond)
	}
	w.sample(m)
	p := findProc(w.agg.Snapshot(), 200)
	if p == nil || len(p.Remotes) != 1 || p.Remotes[0].Remote != "10.0.0.1:*" || p.Remotes[0].States[events.TCPCloseWait].Count != 5 || p.OpenedPassive != 5 {
		t.Fatalf("process %+v", p)
	}
	if p.Remotes[0].PortRange != 0 {
		t.Errorf("accepted connections hold no ephemeral port: %+v", p.Remotes[0])
	}
}

func TestAggregatorExistingSocketsKeepTheirOwner(t *testing.T) {
	w := newFakeWorld(t, DefaultThresholds())
	old := proc(300, "old")
	old.Source = events.OwnerSnapshot
	// Two connections open before tracing: one never changes state, the
	// other moves and shows up in the kernel's table without an owner.
	s1 := &sock{owner: old, local: "10.0.0.1:50000", remote: "10.0.0.2:80", cookie: 11}
	s2 := &sock{owner: old, local: "10.0.0.1:50001", remote: "10.0.0.2:80", cookie: 12}
	for _, s := range []*sock{s1, s2} {
		ev := events.Event{Kind: events.KindConnExisting, Conn: w.conn(s)}
		ev.Conn.LastState = events.TCPEstablished
		w.agg.Apply(&ev, w.wall)
	}
	w.advance(time.Second)
	anon := &sock{local: s2.local, remote: s2.remote, cookie: 12}
	w.sample(map[*sock]events.TCPState{anon: events.TCPCloseWait})
	p := findProc(w.agg.Snapshot(), 300)
	if p == nil || p.States[events.TCPEstablished].Count != 1 || p.States[events.TCPCloseWait].Count != 1 {
		t.Fatalf("process %+v", p)
	}
	if findProc(w.agg.Snapshot(), 0) != nil && findProc(w.agg.Snapshot(), 0).Open() != 0 {
		t.Errorf("an existing socket was counted as unowned")
	}
	// Its close (owner unknown to the kernel) is attributed too.
	w.close(anon, events.EndCloseWait)
	w.sample(nil)
	p = findProc(w.agg.Snapshot(), 300)
	if p.Closed != 1 || p.States[events.TCPCloseWait].Count != 0 || p.States[events.TCPEstablished].Count != 1 {
		t.Errorf("after close: %+v", p)
	}
}

func TestTimeWaitReconciliation(t *testing.T) {
	w := newFakeWorld(t, DefaultThresholds())
	cl := proc(400, "churner")
	var socks []*sock
	for i := 0; i < 4; i++ {
		s := w.open(cl, fmt.Sprintf("10.0.0.1:%d", 41000+i), "10.0.0.2:80", events.RoleActive)
		socks = append(socks, s)
		w.advance(time.Millisecond)
		w.close(s, events.EndTimeWait)
	}
	dump := func(tuples []string, netnsDone ...uint32) {
		start := w.bootNs
		for _, tu := range tuples {
			var l, r string
			fmt.Sscanf(tu, "%s %s", &l, &r)
			ev := events.Event{Kind: events.KindTimeWait, Sample: events.Sample{TimeNs: start, ExpiresNs: uint64(50 * time.Second)}}
			ev.Conn = w.conn(&sock{local: l, remote: r})
			ev.Conn.LastState = events.TCPTimeWait
			w.agg.Apply(&ev, w.wall)
		}
		for _, n := range netnsDone {
			w.agg.Apply(&events.Event{Kind: events.KindTimeWaitDone, Conn: events.Conn{NetNS: n}, Sample: events.Sample{TimeNs: start}}, w.wall)
		}
	}
	w.advance(time.Second)
	// The kernel lists three of the four (one was reused or killed),
	// plus two the tracer never saw close (from before it started).
	dump([]string{
		"10.0.0.1:41000 10.0.0.2:80", "10.0.0.1:41001 10.0.0.2:80", "10.0.0.1:41002 10.0.0.2:80",
		"10.0.0.1:33000 10.0.0.3:80", "10.0.0.1:33001 10.0.0.3:80",
	}, w.netns, 0)
	s := w.agg.Snapshot()
	if s.TimeWait.Total != 5 || s.TimeWait.Unattributed != 2 || s.TimeWait.Reconciliations != 1 {
		t.Errorf("after reconciliation: %+v, want 5 total, 2 unattributed", s.TimeWait)
	}
	if p := findProc(s, 400); p == nil || p.TimeWait != 3 {
		t.Errorf("churner's TIME_WAIT: %+v", p)
	}

	// A dump that started before a close must not remove it.
	w.advance(time.Second)
	start := w.bootNs
	w.advance(time.Millisecond)
	late := w.open(cl, "10.0.0.1:41009", "10.0.0.2:80", events.RoleActive)
	w.close(late, events.EndTimeWait)
	w.agg.Apply(&events.Event{Kind: events.KindTimeWaitDone, Conn: events.Conn{NetNS: w.netns}, Sample: events.Sample{TimeNs: start}}, w.wall)
	w.agg.Apply(&events.Event{Kind: events.KindTimeWaitDone, Sample: events.Sample{TimeNs: start}}, w.wall)
	if got := w.agg.Snapshot().TimeWait.Total; got != 1 {
		t.Errorf("after an empty dump that started before the last close: %d TIME_WAIT, want 1", got)
	}

	// Reuse of the 4-tuple by a new connection (necessarily later than
	// the close) removes the entry.
	w.advance(time.Millisecond)
	reuse := w.open(cl, "10.0.0.1:41009", "10.0.0.2:80", events.RoleActive)
	w.sample(map[*sock]events.TCPState{reuse: events.TCPEstablished})
	if got := w.agg.Snapshot().TimeWait.Total; got != 0 {
		t.Errorf("after 4-tuple reuse: %d TIME_WAIT, want 0", got)
	}

	// Expiry after the kernel's 60 s.
	s9 := w.open(cl, "10.0.0.1:41010", "10.0.0.2:80", events.RoleActive)
	w.close(s9, events.EndTimeWait)
	w.advance(59 * time.Second)
	w.sample(map[*sock]events.TCPState{reuse: events.TCPEstablished})
	if got := w.agg.Snapshot().TimeWait.Total; got != 1 {
		t.Errorf("59 s after close: %d TIME_WAIT, want 1", got)
	}
	w.advance(6 * time.Second)
	w.sample(map[*sock]events.TCPState{reuse: events.TCPEstablished})
	if got := w.agg.Snapshot().TimeWait.Total; got != 0 {
		t.Errorf("65 s after close: %d TIME_WAIT, want 0", got)
	}
}

func TestRateWindow(t *testing.T) {
	var w rateWindow
	for s := int64(100); s < 110; s++ {
		for i := 0; i < int(s-99); i++ {
			w.add(s)
		}
	}
	if got := w.sum(110, 1); got != 10 {
		t.Errorf("last second: %d, want 10", got)
	}
	if got := w.sum(110, 10); got != 55 {
		t.Errorf("last 10 s: %d, want 55", got)
	}
	if got := w.sum(200, 60); got != 0 {
		t.Errorf("long after: %d", got)
	}
	w.add(300)
	if got := w.sum(301, 60); got != 1 {
		t.Errorf("after a gap: %d, want 1", got)
	}
}

func TestLifeHistMedian(t *testing.T) {
	var h lifeHist
	for i := 0; i < 9; i++ {
		h.add(uint64(2 * time.Millisecond))
	}
	h.add(uint64(time.Minute))
	if m := h.median(); m < time.Millisecond || m > 4*time.Millisecond {
		t.Errorf("median %v, want about 2ms", m)
	}
}

func TestRateWindowRates(t *testing.T) {
	var w rateWindow
	for s := int64(1000); s < 1060; s++ {
		w.add(s)
		w.add(s)
	}
	full := rateSpans(1060, time.Time{})
	r := w.rates(1060, &full)
	for i, n := range RateWindows {
		if want := w.rate(1060, n); r[i] != want || want != 2 {
			t.Errorf("window %d s: %v, want %v (2/s)", n, r[i], want)
		}
	}
}

// TestRatesOverWatchedTime: an aggregator that has watched 5 s divides
// what it saw by 5 s, not by the 10 s window (`top --once --interval
// 5s` read 2.4x under).
func TestRatesOverWatchedTime(t *testing.T) {
	a := NewAggregator(DefaultThresholds())
	t0 := time.Unix(1000, 0)
	var ev events.Event
	ev.Kind = events.KindConnClosed
	ev.Conn = events.Conn{Owner: events.Process{PID: 7, StartNs: 1}, Role: events.RoleActive, SeenOpen: true,
		OpenNs: 1, CloseNs: 2, Local: netip.MustParseAddrPort("10.0.0.1:40000"), Remote: netip.MustParseAddrPort("10.0.0.2:80")}
	// 4 connections a second for 5 s, from t0.
	for i := 0; i < 20; i++ {
		a.Apply(&ev, t0.Add(time.Duration(i)*250*time.Millisecond))
	}
	a.Apply(&events.Event{Kind: events.KindSockSampleDone}, t0.Add(5*time.Second))
	s := a.Snapshot()
	if len(s.Processes) != 1 {
		t.Fatalf("%d processes, want 1", len(s.Processes))
	}
	p := s.Processes[0]
	if p.OpenRate[1] != 4 || p.CloseRate[1] != 4 || p.CloseRate[2] != 4 {
		t.Errorf("open/close rates over 10 s and 60 s after watching 5 s: %v %v, want 4/s", p.OpenRate, p.CloseRate)
	}
}

// TestSnapshotIsImmutable: readers on other goroutines keep snapshots
// while the event loop goes on applying events.
func TestSnapshotIsImmutable(t *testing.T) {
	th := DefaultThresholds()
	th.CloseWaitCount = 1
	w := newFakeWorld(t, th)
	cl := proc(500, "client")
	s1 := w.open(cl, "10.0.0.1:40000", "10.0.0.2:80", events.RoleActive)
	w.advance(time.Second)
	w.sample(map[*sock]events.TCPState{s1: events.TCPCloseWait})
	snap := w.agg.Snapshot()
	before := fmt.Sprintf("%+v", *snap)
	for i := 0; i < 5; i++ {
		w.advance(time.Second)
		w.close(w.open(cl, fmt.Sprintf("10.0.0.1:%d", 41000+i), "10.0.0.2:80", events.RoleActive), events.EndTimeWait)
		w.sample(map[*sock]events.TCPState{s1: events.TCPEstablished})
	}
	if after := fmt.Sprintf("%+v", *snap); after != before {
		t.Errorf("snapshot changed under its reader:\nbefore %s\nafter  %s", before, after)
	}
}

// TestTimeWaitInSubstateFinWait2 covers an application that closed before
// its peer: the kernel's timewait socket sits in substate FIN_WAIT2 until
// the peer's FIN. A dump listing it so must confirm the tracer's entry, and
// one the tracer never saw close is not counted until it is TIME_WAIT.
func TestTimeWaitInSubstateFinWait2(t *testing.T) {
	w := newFakeWorld(t, DefaultThresholds())
	cl := proc(401, "early-closer")
	s := w.open(cl, "10.0.0.1:42000", "10.0.0.2:80", events.RoleActive)
	w.advance(time.Millisecond)
	w.close(s, events.EndFinWait2)
	dump := func(state events.TCPState) {
		w.advance(time.Second)
		start := w.bootNs
		for _, tu := range [][2]string{{"10.0.0.1:42000", "10.0.0.2:80"}, {"10.0.0.1:33000", "10.0.0.3:80"}} {
			ev := events.Event{Kind: events.KindTimeWait, Sample: events.Sample{TimeNs: start, ExpiresNs: uint64(50 * time.Second)}}
			ev.Conn = w.conn(&sock{local: tu[0], remote: tu[1]})
			ev.Conn.LastState = state
			w.agg.Apply(&ev, w.wall)
		}
		w.agg.Apply(&events.Event{Kind: events.KindTimeWaitDone, Conn: events.Conn{NetNS: w.netns}, Sample: events.Sample{TimeNs: start}}, w.wall)
		w.agg.Apply(&events.Event{Kind: events.KindTimeWaitDone, Sample: events.Sample{TimeNs: start}}, w.wall)
	}
	// Both still wait for their peers' FIN: not TIME_WAIT yet (ss shows
	// FIN-WAIT-2), and the dump must not make the tracer forget its own.
	dump(events.TCPFinWait2)
	snap := w.agg.Snapshot()
	if snap.TimeWait.Total != 0 {
		t.Errorf("TIME_WAIT %+v, want none while the peers have not closed", snap.TimeWait)
	}
	// The peers closed: both are TIME_WAIT; the early closer's is still
	// its own, the other was never seen closing.
	dump(events.TCPTimeWait)
	snap = w.agg.Snapshot()
	if snap.TimeWait.Total != 2 || snap.TimeWait.Unattributed != 1 {
		t.Errorf("TIME_WAIT %+v, want 2, 1 unattributed", snap.TimeWait)
	}
	if p := findProc(snap, 401); p == nil || p.TimeWait != 1 {
		t.Errorf("early closer's TIME_WAIT: %+v", p)
	}
}

// TestStaleSampleDoesNotEndTimeWait: a socket-table round read just before
// a connection closed lists the socket that is now the timewait socket; if
// the close record is applied first, that round must not read as 4-tuple
// reuse (it made one TIME_WAIT socket count as unattributed).
func TestStaleSampleDoesNotEndTimeWait(t *testing.T) {
	w := newFakeWorld(t, DefaultThresholds())
	cl := proc(402, "churner")
	s := w.open(cl, "10.0.0.1:43000", "10.0.0.2:80", events.RoleActive)
	readAt := w.bootNs // the round reads the map now, the socket still in it
	w.advance(time.Millisecond)
	w.close(s, events.EndTimeWait)
	ev := events.Event{Kind: events.KindSockOpen, Conn: w.conn(s), Sample: events.Sample{TimeNs: readAt}}
	ev.Conn.LastState = events.TCPFinWait2
	w.agg.Apply(&ev, w.wall)
	w.agg.Apply(&events.Event{Kind: events.KindSockSampleDone, Sample: events.Sample{TimeNs: readAt}}, w.wall)
	snap := w.agg.Snapshot()
	if p := findProc(snap, 402); snap.TimeWait.Total != 1 || p == nil || p.TimeWait != 1 {
		t.Errorf("TIME_WAIT %+v, churner %+v: want its one socket kept", snap.TimeWait, p)
	}
}
