package aggregate

import (
	"github.com/conntracer/conntracer/internal/events"

	"net/netip"
	"time"
)

// Aggregator turns the event stream into per-process and per-remote
// statistics, the sockets open now, TIME_WAIT ownership, ephemeral port
// use and findings.
//
// It sees only events and the clock its caller passes (Apply's now), so a
// recording replayed through it gives the live numbers again. It is
// single-writer: the event loop goroutine alone calls Apply and Snapshot;
// readers (the terminal view, JSON output, /metrics) get immutable
// Snapshots, so the hot path takes no lock.
//
// What it keeps, and what bounds it:
//   - a process entry per owner (pid, start time), and a remote entry per
//     process x remote endpoint, pruned once they have nothing open and
//     have been idle for Thresholds.IdleExpiry;
//   - a live-socket entry per socket open now, from the sampled kernel
//     table, to count opens once and to age sockets per state; deleted by
//     the socket's close record, or one round after a round missed it;
//   - the keys of the sockets closed in the last two rounds (a slice);
//   - a TIME_WAIT entry per timewait socket (aggregate_timewait.go),
//     expired with the kernel's timer and reconciled with sock_diag dumps;
//   - the ports held per destination (aggregate_ports.go): a count per
//     destination of the round's sockets and of the TIME_WAIT entries;
//   - the counters of expired processes, per comm and cgroup, at most
//     MaxDepartedGroups groups (aggregate_departed.go).
type Aggregator struct {
	th       Thresholds
	now      time.Time
	since    time.Time // the clock at the first event: rates cover no more
	kernelNs uint64    // the latest kernel time seen in any event (boot ns)

	procs map[ProcKey]*procStats
	// procCache holds the processes of recent records and the remote of
	// each one's last record, direct-mapped by pid (procCacheSize
	// slots): the map lookup (ProcKey hashed field by field) was a sixth
	// of the per-record cost. A single "last process" missed every time
	// when closes of many processes interleave (a pool of worker
	// processes, BenchmarkAggregatorApply's 1000 processes). Cleared
	// where processes and remotes are deleted (the end of a round).
	procCache [procCacheSize]procSlot
	existing  map[uint64]existingConn // by cookie: sockets open before tracing

	// Sample rounds of the kernel's socket table.
	round   uint32 // the round being read
	roundNs uint64 // its time
	inRound bool
	lastNs  uint64 // time of the last complete round
	live    map[liveKey]liveEntry
	recent  recentCloses
	// liveMaxOpenNs is the newest open time of a live entry ever made.
	liveMaxOpenNs uint64

	tw       timeWaitTable
	ports    portTable
	departed departedTable // counters of expired processes, per group

	findings  []Finding
	firstSeen map[findingKey]time.Time
	lastEval  time.Time

	// The other concerns' sub-aggregates (aggregate_parts.go).
	connect      *ConnectStats
	drops        *DropStats
	conntrack    *ConntrackStats
	hists        *connHists
	counters     CounterStats
	dropNames    *events.DropNames
	connectRules ConnectRules
	portInfo     PortInfoFunc
}

// ProcKey identifies a process: pid reuse never merges two processes
// because the start time is part of the identity. The zero key gathers
// connections whose owner is unknown.
//
// StartNs is rounded down to the clock tick (10 ms): /proc/PID/stat, where
// owners of connections older than the tracer come from, gives the start
// in ticks, the kernel in ns, and both must name the same process.
type ProcKey struct {
	PID     uint32
	StartNs uint64
}

// RemoteKey identifies the other end of a process's connections. For
// connections the process accepted the peer's port says nothing (a new
// one per connection), so passive connections are keyed by the peer's
// address alone (port 0, Passive set).
type RemoteKey struct {
	NetNS   uint32
	Addr    netip.AddrPort
	Passive bool
}

// String renders "10.0.0.2:6379" or, for accepted connections, "10.0.0.2:*".
func (k RemoteKey) String() string {
	if !k.Addr.IsValid() {
		return "?"
	}
	if k.Passive {
		if k.Addr.Addr().Is6() {
			return "[" + k.Addr.Addr().String() + "]:*"
		}
		return k.Addr.Addr().String() + ":*"
	}
	return k.Addr.String()
}

// procCacheSize is the number of slots of Aggregator.procCache (64 KiB).
const procCacheSize = 1024

// procSlot is an entry of Aggregator.procCache: a process and the remote
// of its last record (closes of one process come in runs to one remote).
// Both pointers sit in the slot, with the process's key, so that the two
// structs (2.3 KiB each, likely cache misses with thousands of them) are
// fetched at once; when the remote hung off the process, its fetch waited
// for the process's. The slot also keeps the process's group (comm,
// cgroup), which every record compares with its owner's: a copy of p's,
// kept equal by owner, the one writer of both (a process has one slot,
// the one its pid picks), so that the comparison does not wait for p.
type procSlot struct {
	key      ProcKey
	p        *procStats
	r        *remoteStats // nil: none yet
	comm     [16]byte     // p.comm
	cgroupID uint64       // p.cgroupID
}

// startTick is the resolution of a process start time in /proc (USER_HZ).
const startTick = 10_000_000

// procStats and remoteStats put what every close record reads (the key,
// the owner's name) first, next to connStats's per-close counters: with
// thousands of them, each line a record touches is a likely cache miss
// (see connStats).
type procStats struct {
	key  ProcKey
	comm [16]byte
	// commStr is comm as the last snapshot gave it: a snapshot of 10,000
	// processes allocated a string per process every round (Snapshot
	// refreshes it when comm changed).
	commStr  string
	cgroupID uint64
	source   events.OwnerSource
	connStats
	remotes map[RemoteKey]*remoteStats
	// moved are the counters banked under the groups (comm, cgroup) it
	// left (aggregate_departed.go).
	moved ConnTotals
}

type remoteStats struct {
	key  RemoteKey
	proc *procStats
	// name is key.String(), made by the first snapshot that lists r:
	// every snapshot used to render every remote again.
	name string
	connStats
	// What the rules need beyond connStats: closes of connections that
	// lived at least Thresholds.ShortLived (a pool recycling its
	// connections closes those; churn beside a leak closes short ones:
	// poolLeak), and connects that failed (never a connection to reuse:
	// noReuse).
	longCloses  rateWindow
	failedOpens rateWindow
}

// holdTimeWait counts a TIME_WAIT socket that r's process left towards r,
// in r and in its process; releaseTimeWait uncounts it. The TIME_WAIT
// table calls them as its entries come and go.
func (r *remoteStats) holdTimeWait() {
	r.timeWait++
	r.proc.timeWait++
}

func (r *remoteStats) releaseTimeWait() {
	r.timeWait--
	r.proc.timeWait--
}

// holdFinWait2 and releaseFinWait2 count a timewait socket still in
// substate FIN_WAIT2 (an orphan: closed by its process, waiting for the
// peer's FIN) in its owner's FIN_WAIT2, as ss lists it.
func (r *remoteStats) holdFinWait2() {
	r.finWait2++
	r.proc.finWait2++
}

func (r *remoteStats) releaseFinWait2() {
	r.finWait2--
	r.proc.finWait2--
}

// existingConn is a socket the start-up scan found open, with its owner.
// It counts as open in its start-up state until the kernel's table shows
// it (it changed state: the table takes over) or it closes.
type existingConn struct {
	proc   *procStats
	remote *remoteStats
	state  events.TCPState
	inMap  bool
	local  netip.AddrPort
	since  uint64
}

// liveKey names a socket across sample rounds and its close record: its
// open time (ns resolution) with its namespace, peer port and role. For a
// socket open before tracing (no open time) the cookie stands in.
type liveKey struct {
	openNs uint64
	netns  uint32
	rport  uint16
	role   events.Role
}

type liveEntry struct {
	since uint64 // first seen in its current state, boot ns
	gen   uint32 // last round that saw it
	state events.TCPState
}

// NewAggregator returns an empty aggregator using th.
func NewAggregator(th Thresholds) *Aggregator {
	a := &Aggregator{
		th:        th,
		procs:     make(map[ProcKey]*procStats),
		existing:  make(map[uint64]existingConn),
		live:      make(map[liveKey]liveEntry),
		ports:     newPortTable(),
		firstSeen: make(map[findingKey]time.Time),
		round:     1,

		connect:      NewConnectStats(),
		drops:        NewDropStats(),
		conntrack:    NewConntrackStats(),
		hists:        newConnHists(),
		connectRules: DefaultConnectRules(),
	}
	a.tw = newTimeWaitTable(&a.ports)
	return a
}

// Apply folds one event in. now is the aggregator's clock (wall time when
// live, the recorded time on replay); it must not go backwards by more
// than a second. ev is not retained; drop events are named in place (see
// SetDropNames).
func (a *Aggregator) Apply(ev *events.Event, now time.Time) {
	if now.After(a.now) {
		a.now = now
	}
	if a.since.IsZero() {
		a.since = now
	}
	a.applyParts(ev)
	switch ev.Kind {
	case events.KindConnClosed:
		a.closed(&ev.Conn)
	case events.KindConnExisting:
		a.existingConn(&ev.Conn)
	case events.KindSockOpen:
		a.sockOpen(ev)
	case events.KindSockSampleDone:
		a.sampleDone(ev.Sample.TimeNs)
	case events.KindTimeWait:
		a.kernelTime(ev.Sample.TimeNs)
		a.tw.dumped(&ev.Conn, ev.Sample.TimeNs, ev.Sample.ExpiresNs)
	case events.KindTimeWaitDone:
		a.kernelTime(ev.Sample.TimeNs)
		a.tw.dumpDone(ev.Conn.NetNS, ev.Sample.TimeNs)
	case events.KindPortRange:
		a.ports.setRange(ev.Conn.NetNS, ev.Sample.PortLow, ev.Sample.PortHigh)
	case events.KindNetNSGone:
		a.tw.forgetNetNS(ev.Counters.NetNS)
		a.ports.forgetRange(ev.Counters.NetNS) // a namespace reusing the inode has its own
	}
}

func (a *Aggregator) kernelTime(ns uint64) {
	if ns > a.kernelNs {
		a.kernelNs = ns
	}
}

// owner returns the stats of the owner o and of its remote rk, creating
// them.
func (a *Aggregator) owner(o *events.Process, rk RemoteKey) (*procStats, *remoteStats) {
	k := ProcKey{}
	if o.Known() {
		k = ProcKey{PID: o.PID, StartNs: o.StartNs - o.StartNs%startTick}
	}
	slot := &a.procCache[k.PID%procCacheSize]
	if slot.p == nil || slot.key != k {
		p, ok := a.procs[k]
		if !ok {
			p = &procStats{key: k, remotes: make(map[RemoteKey]*remoteStats)}
			a.procs[k] = p
		}
		*slot = procSlot{key: k, p: p, comm: p.comm, cgroupID: p.cgroupID}
	}
	p := slot.p
	if o.Known() {
		if slot.comm != o.Comm || (o.CgroupID != 0 && o.CgroupID != slot.cgroupID) {
			p.leaveGroup(&a.departed, a.now) // its counts stay with its old group
			p.comm = o.Comm
			if o.CgroupID != 0 {
				p.cgroupID = o.CgroupID
			}
			slot.comm, slot.cgroupID = p.comm, p.cgroupID
		}
		p.source = o.Source
	}
	p.lastSeen = a.now
	r := slot.r
	if r == nil || r.key != rk {
		r = p.remote(rk, a.round, a.lastNs)
		slot.r = r
	}
	r.lastSeen = a.now
	return p, r
}

// remoteKey is the remote of a connection; see RemoteKey.
func remoteKey(c *events.Conn) RemoteKey {
	k := RemoteKey{NetNS: c.NetNS, Addr: c.Remote}
	if passive(c) {
		k.Addr = netip.AddrPortFrom(c.Remote.Addr(), 0)
		k.Passive = true
	}
	return k
}

// passive tells accepted connections apart. A connection open before
// tracing has no known role: the side with the lower port is taken as the
// service, the usual guess of netstat-based tools.
func passive(c *events.Conn) bool {
	switch c.Role {
	case events.RolePassive:
		return true
	case events.RoleActive:
		return false
	}
	lp, rp := c.Local.Port(), c.Remote.Port()
	return lp != 0 && lp < rp
}

// remote returns p's stats of remote k, creating them during sample
// round (the first is 1), lastNs being the time of the last complete one.
func (p *procStats) remote(k RemoteKey, round uint32, lastNs uint64) *remoteStats {
	r, ok := p.remotes[k]
	if !ok {
		r = &remoteStats{key: k, proc: p}
		// Created after a complete round: that round saw nothing of
		// it, which is a point of its history (0 ESTABLISHED).
		if round > 1 {
			r.estHist[0] = estPoint{ns: lastNs}
			r.estNext = 1
		}
		p.remotes[k] = r
	}
	return r
}

func liveKeyOf(c *events.Conn) (liveKey, bool) {
	if c.OpenNs != 0 {
		return liveKey{openNs: c.OpenNs, netns: c.NetNS, rport: c.Remote.Port(), role: c.Role}, true
	}
	if c.Cookie != 0 {
		return liveKey{openNs: c.Cookie, netns: c.NetNS, role: events.RoleUnknown}, true
	}
	return liveKey{}, false
}

func (a *Aggregator) closed(c *events.Conn) {
	a.kernelTime(c.CloseNs)
	var ex existingConn
	haveEx := false
	if c.Cookie != 0 && len(a.existing) > 0 {
		ex, haveEx = a.existing[c.Cookie]
		if haveEx {
			delete(a.existing, c.Cookie)
		}
	}
	var p *procStats
	var r *remoteStats
	if haveEx && !c.Owner.Known() {
		p, r = ex.proc, ex.remote
		p.lastSeen, r.lastSeen = a.now, a.now
	} else {
		p, r = a.owner(&c.Owner, remoteKey(c))
	}
	sec := a.now.Unix()

	// Count the open once: here, unless a sample round already saw the
	// socket (its live entry says so).
	if c.SeenOpen {
		k, _ := liveKeyOf(c)
		// Most closes in a churning workload are of sockets no round
		// has seen: those opened after the newest one a round saw
		// skip the lookup.
		seen := false
		if c.OpenNs <= a.liveMaxOpenNs || c.OpenNs == 0 {
			if _, seen = a.live[k]; seen {
				delete(a.live, k)
			}
		}
		if !seen {
			p.opened[c.Role]++
			r.opened[c.Role]++
			p.opens.add(sec)
			r.opens.add(sec)
		}
		// Remembered for two rounds, so that a round read before the
		// close but applied after it does not count the socket as new.
		// An append, not a map insert: this is the per-event path.
		a.recent.add(k)
	}

	p.closed[c.Role]++
	r.closed[c.Role]++
	p.closes.add(sec)
	r.closes.add(sec)
	if c.EndState == events.EndConnectFailed {
		r.failedOpens.add(sec)
	} else if lt := c.LifetimeNs(); !c.SeenOpen || lt >= uint64(a.th.ShortLived) {
		r.longCloses.add(sec)
	}
	if int(c.EndState) < len(p.ends) {
		p.ends[c.EndState]++
		r.ends[c.EndState]++
	}
	if lt := c.LifetimeNs(); c.SeenOpen && lt > 0 {
		p.life.add(lt)
		r.life.add(lt)
		p.lifeKnown++
		r.lifeKnown++
		if lt < uint64(a.th.ShortLived) {
			p.shortLived++
			r.shortLived++
		}
	}
	p.tx += c.TxBytes
	p.rx += c.RxBytes
	r.tx += c.TxBytes
	r.rx += c.RxBytes

	if c.EndState == events.EndTimeWait || c.EndState == events.EndFinWait2 {
		a.tw.closed(c, r)
	}
}

func (a *Aggregator) existingConn(c *events.Conn) {
	if c.Cookie == 0 {
		return
	}
	p, r := a.owner(&c.Owner, remoteKey(c))
	a.existing[c.Cookie] = existingConn{proc: p, remote: r, state: c.LastState, local: c.Local}
}

// sockOpen counts one socket of the kernel's table in the current round.
func (a *Aggregator) sockOpen(ev *events.Event) {
	c := &ev.Conn
	if !a.inRound {
		a.inRound = true
		a.roundNs = ev.Sample.TimeNs
		a.ports.beginRound()
		a.recent.sortCur()
	}
	a.kernelTime(ev.Sample.TimeNs)

	var p *procStats
	var r *remoteStats
	if !c.Owner.Known() && c.Cookie != 0 && len(a.existing) > 0 {
		if ex, ok := a.existing[c.Cookie]; ok {
			p, r = ex.proc, ex.remote
			if !ex.inMap {
				ex.inMap = true
				a.existing[c.Cookie] = ex
			}
		}
	}
	if p == nil {
		p, r = a.owner(&c.Owner, remoteKey(c))
	} else {
		p.lastSeen, r.lastSeen = a.now, a.now
	}

	since := ev.Sample.TimeNs
	if k, ok := liveKeyOf(c); ok {
		e, seen := a.live[k]
		switch {
		case !seen && c.SeenOpen && a.recent.has(k):
			// Read before its close was applied: open at the time,
			// its open already counted, and gone now.
			k.openNs = 0
		case !seen:
			if c.SeenOpen {
				p.opened[c.Role]++
				r.opened[c.Role]++
				sec := a.now.Unix()
				p.opens.add(sec)
				r.opens.add(sec)
				// It was in this state since it opened, at least
				// when the state is the first one.
				if c.OpenNs < since && (c.LastState == events.TCPSynSent || c.LastState == events.TCPSynRecv) {
					since = c.OpenNs
				}
			}
			e = liveEntry{since: since, state: c.LastState}
		case e.state != c.LastState:
			e.since, e.state = since, c.LastState
		default:
			since = e.since
		}
		if k.openNs != 0 {
			e.gen = a.round
			a.live[k] = e
			if c.OpenNs > a.liveMaxOpenNs {
				a.liveMaxOpenNs = c.OpenNs
			}
		}
	}
	p.count(a.round, c.LastState, since)
	r.count(a.round, c.LastState, since)

	// A socket on the 4-tuple of a TIME_WAIT entry reused it.
	if c.Local.Port() != 0 && a.tw.len() > 0 {
		a.tw.reused(c, ev.Sample.TimeNs)
	}
	if !passive(c) && (c.Local.Port() == 0 || a.ports.ephemeral(c.NetNS, c.Local.Port())) {
		a.ports.sampled(portKeyOf(c))
	}
}

// sampleDone publishes the round: the open-socket counts become the
// current view, the findings are evaluated.
func (a *Aggregator) sampleDone(ns uint64) {
	if !a.inRound {
		a.roundNs = ns // an empty table
		a.ports.beginRound()
	}
	a.kernelTime(ns)
	round := a.round
	// Sockets open before tracing that never changed state are not in
	// the kernel's table: they count in their start-up state.
	for _, ex := range a.existing {
		if ex.inMap {
			continue
		}
		ex.proc.count(round, ex.state, a.roundNs)
		ex.remote.count(round, ex.state, a.roundNs)
		if !ex.remote.key.Passive && a.ports.ephemeral(ex.remote.key.NetNS, ex.local.Port()) {
			a.ports.sampled(portKey{netns: ex.remote.key.NetNS, local: ex.local.Addr(), remote: ex.remote.key.Addr})
		}
	}
	clear(a.procCache[:]) // processes and remotes may go below
	for k, p := range a.procs {
		p.publish(round, a.roundNs)
		for rk, r := range p.remotes {
			r.publish(round, a.roundNs)
			if !r.open() && a.now.Sub(r.lastSeen) > a.th.IdleExpiry {
				delete(p.remotes, rk)
			}
		}
		if !p.open() && len(p.remotes) == 0 && a.now.Sub(p.lastSeen) > a.th.IdleExpiry {
			a.departed.add(p, a.now)
			delete(a.procs, k)
		}
	}
	a.departed.bound(a.procs)
	// Live entries not seen in this round or the one before are gone.
	for k, e := range a.live {
		if e.gen+1 < round {
			delete(a.live, k)
		}
	}
	a.recent.rotate()
	a.lastNs = a.roundNs
	a.inRound = false
	a.round++

	a.tw.expire(a.kernelNs)
	a.ports.publish()
	a.evaluate()
}
