package aggregate

import (
	"github.com/conntracer/conntracer/internal/events"

	"fmt"
)

// TimeWaitLen is the kernel's TIME_WAIT length (TCP_TIMEWAIT_LEN, 60 s,
// a compile-time constant of the kernel).
const TimeWaitLen = 60_000_000_000

// expireEvery bounds how often the TIME_WAIT table is swept for expired
// entries (kernel time): a sweep walks the whole table.
const expireEvery = 5_000_000_000

// tuple names a TIME_WAIT socket: the kernel allows one socket per 4-tuple
// in a namespace. IPv4 addresses are stored in their 16-byte mapped form.
// No pointers, so that a table of a million entries costs the garbage
// collector nothing to scan but the values.
type tuple struct {
	netns        uint32
	lport, rport uint16
	laddr, raddr [16]byte
}

func tupleOf(c *events.Conn) tuple {
	return tuple{
		netns: c.NetNS,
		lport: c.Local.Port(), rport: c.Remote.Port(),
		laddr: c.Local.Addr().As16(), raddr: c.Remote.Addr().As16(),
	}
}

// twEntry is one TIME_WAIT socket and who left it behind (nil: a socket the
// tracer never saw close, shown as unattributed).
type twEntry struct {
	remote  *remoteStats // nil: unattributed; remote.proc is the owner
	closeNs uint64       // when it entered TIME_WAIT (first seen, if unattributed)
	ttlMs   uint32       // the timer fires ttlMs after closeNs
	seen    uint32       // the last dump that listed it
	inPorts bool         // counted in the port table
	// pending: a timewait socket still in substate FIN_WAIT2 (this side
	// closed first, the peer has not yet): it holds its port but is not
	// TIME_WAIT until a dump lists it so (no tracepoint shows the change).
	pending bool
}

func (e *twEntry) expiresNs() uint64 { return e.closeNs + uint64(e.ttlMs)*1_000_000 }

func ttlMs(closeNs, expiresNs uint64) uint32 {
	if expiresNs <= closeNs {
		return 0
	}
	return uint32(min((expiresNs-closeNs)/1_000_000, 1<<32-1))
}

// twCount is the TIME_WAIT census of one namespace.
type twCount struct {
	total, unattributed uint32
}

// timeWaitTable holds every TIME_WAIT socket the tracer knows of.
//
// Entries come from close records whose end state is time_wait (the owner
// is known) and from sock_diag dumps (owner unknown unless a close record
// matches). An entry leaves when the kernel's timer would have fired, when
// a socket on the same 4-tuple appears (reuse), or when a dump of its
// namespace that started after it was created no longer lists it. So,
// right after a dump, the table holds exactly the dump plus what closed
// since it started.
//
// Each entry holds its ephemeral port in the port table it was given (a
// TIME_WAIT socket keeps its local port), and counts in its owner's stats
// through the owner's holdTimeWait and releaseTimeWait.
type timeWaitTable struct {
	ports   *portTable
	m       map[tuple]twEntry
	byNetNS map[uint32]*twCount
	// pending counts, per namespace, the entries in substate FIN_WAIT2:
	// not in the census, but timewait sockets that the kernel's sockstat
	// counts as tw (Snapshot's TimeWait.Sockets).
	pending   map[uint32]uint32
	gen       uint32
	inDump    bool
	dumpStart uint64
	covered   map[uint32]struct{} // namespaces the current dump covered
	lastSweep uint64
	// dumps counts complete reconciliations.
	dumps uint64
}

func newTimeWaitTable(ports *portTable) timeWaitTable {
	return timeWaitTable{
		ports:   ports,
		m:       make(map[tuple]twEntry),
		byNetNS: make(map[uint32]*twCount),
		pending: make(map[uint32]uint32),
		covered: make(map[uint32]struct{}),
	}
}

func (t *timeWaitTable) len() int { return len(t.m) }

func (t *timeWaitTable) insert(k tuple, e twEntry) {
	old, had := t.m[k]
	t.replace(k, e, old, had)
}

// replace stores e on k in place of old (had: k held old), with one map
// assignment instead of a delete and an insert. When both hold an
// ephemeral port of the same tuple the port count is left as it is, which
// saves its two map updates.
//
// Why: a TIME_WAIT close on the tuple of an entry still in the table (a
// client cycling through its ephemeral ports) used to hash the tuple four
// times and the port key three; it cost a third of BenchmarkAggregatorApply
// (see NOTE-perf-aggregate.md).
func (t *timeWaitTable) replace(k tuple, e twEntry, old twEntry, had bool) {
	keepPort := false
	if had {
		keepPort = old.inPorts && t.ports.ephemeral(k.netns, k.lport)
		if old.inPorts && !keepPort {
			t.ports.removeTimeWait(k)
		}
		t.uncount(k, old)
	}
	if keepPort {
		e.inPorts = true
	} else {
		e.inPorts = t.ports.addTimeWait(k)
	}
	t.m[k] = e
	if e.pending {
		t.pending[k.netns]++
		if e.remote != nil {
			e.remote.holdFinWait2()
		}
		return // not counted: no census line of 0 for its namespace
	}
	c := t.byNetNS[k.netns]
	if c == nil {
		c = &twCount{}
		t.byNetNS[k.netns] = c
	}
	c.total++
	if e.remote == nil {
		c.unattributed++
	} else {
		e.remote.holdTimeWait()
	}
}

func (t *timeWaitTable) remove(k tuple, e twEntry) {
	delete(t.m, k)
	if e.inPorts {
		t.ports.removeTimeWait(k)
	}
	t.uncount(k, e)
}

// uncount takes e out of the census and its owner's count.
func (t *timeWaitTable) uncount(k tuple, e twEntry) {
	if e.pending {
		if t.pending[k.netns]--; t.pending[k.netns] == 0 {
			delete(t.pending, k.netns)
		}
		if e.remote != nil {
			e.remote.releaseFinWait2()
		}
		return
	}
	if c := t.byNetNS[k.netns]; c != nil {
		c.total--
		if e.remote == nil {
			c.unattributed--
		}
		if c.total == 0 {
			delete(t.byNetNS, k.netns)
		}
	}
	if e.remote != nil {
		e.remote.releaseTimeWait()
	}
}

// closed records a connection handed to a timewait socket: in TIME_WAIT,
// or pending in substate FIN_WAIT2 (end state fin_wait2) until a dump
// shows the peer's FIN arrived. The kernel's FIN_WAIT2 timeout
// (tcp_fin_timeout) defaults to the TIME_WAIT length.
func (t *timeWaitTable) closed(c *events.Conn, r *remoteStats) {
	k := tupleOf(c)
	pending := c.EndState == events.EndFinWait2
	old, had := t.m[k]
	if had && !old.pending && old.remote == nil {
		// A dump applied before this record already listed the socket
		// in TIME_WAIT: the peer's FIN has come.
		pending = false
	}
	t.replace(k, twEntry{remote: r, closeNs: c.CloseNs, ttlMs: TimeWaitLen / 1_000_000,
		seen: t.seenFor(c.CloseNs), pending: pending}, old, had)
}

// seenFor marks an entry created during a dump that started before it:
// the dump cannot list it, and must not remove it either.
func (t *timeWaitTable) seenFor(ns uint64) uint32 {
	if t.inDump && ns >= t.dumpStart {
		return t.gen
	}
	return 0
}

// reused removes the entry on the tuple of an open socket: the kernel
// holds one socket per 4-tuple, so the timewait socket is gone. Only a
// socket sampled after the entry's close counts: a round read before the
// close record arrived still lists the socket that is now this very
// timewait socket.
func (t *timeWaitTable) reused(c *events.Conn, sampledNs uint64) {
	k := tupleOf(c)
	if e, ok := t.m[k]; ok && e.closeNs < sampledNs {
		t.remove(k, e)
	}
}

func (t *timeWaitTable) begin(ns uint64) {
	if t.inDump {
		return
	}
	t.inDump = true
	t.gen++
	t.dumpStart = ns
	clear(t.covered)
}

// dumped reconciles one TIME_WAIT socket listed by a dump started at ns.
func (t *timeWaitTable) dumped(c *events.Conn, ns, expires uint64) {
	t.begin(ns)
	k := tupleOf(c)
	if e, ok := t.m[k]; ok {
		e.seen = t.gen
		e.ttlMs = ttlMs(e.closeNs, ns+expires)
		if e.pending && c.LastState == events.TCPTimeWait {
			// The peer's FIN arrived: the socket is TIME_WAIT now,
			// and still the process's that closed it.
			t.remove(k, e)
			e.pending = false
			t.insert(k, e)
			return
		}
		t.m[k] = e
		return
	}
	if c.LastState == events.TCPFinWait2 {
		// A timewait socket still in substate FIN_WAIT2 confirms an
		// entry the tracer made from a close record; one it never saw
		// is not TIME_WAIT yet (ss lists it as FIN-WAIT-2), and the
		// next dump will count it once the peer's FIN has arrived.
		return
	}
	t.insert(k, twEntry{closeNs: ns, ttlMs: ttlMs(ns, ns+expires), seen: t.gen})
}

// dumpDone ends the dump of one namespace (netns != 0) or the whole dump
// (netns == 0), which removes the entries of the dumped namespaces that
// the dump should have listed and did not.
func (t *timeWaitTable) dumpDone(netns uint32, ns uint64) {
	t.begin(ns)
	if netns != 0 {
		t.covered[netns] = struct{}{}
		return
	}
	for k, e := range t.m {
		if _, ok := t.covered[k.netns]; !ok || e.seen == t.gen || e.closeNs >= t.dumpStart {
			continue
		}
		t.remove(k, e)
	}
	t.inDump = false
	t.dumps++
}

// forgetNetNS removes the entries of a namespace that is gone: its
// timewait sockets went with it.
func (t *timeWaitTable) forgetNetNS(netns uint32) {
	for k, e := range t.m {
		if k.netns == netns {
			t.remove(k, e)
		}
	}
	delete(t.covered, netns)
}

// expire removes the entries whose timer has fired by kernel time ns.
func (t *timeWaitTable) expire(ns uint64) {
	if ns < t.lastSweep+expireEvery || len(t.m) == 0 {
		return
	}
	t.lastSweep = ns
	for k, e := range t.m {
		if e.expiresNs() <= ns {
			t.remove(k, e)
		}
	}
}

// timeWaitPileup: at least TimeWaitCount TIME_WAIT sockets left by one
// process towards one remote (the table counts them in the remote's
// stats, holdTimeWait).
func (r *remoteStats) timeWaitPileup(f *findingSet, th *Thresholds) {
	if r.timeWait < th.TimeWaitCount {
		return
	}
	f.addRemote(FindingTimeWaitPileup, r,
		fmt.Sprintf("%d sockets in TIME_WAIT towards %s left by this process, which closes first", r.timeWait, r.key),
		"reuse connections (pool, keep-alive); let the peer close first; net.ipv4.tcp_tw_reuse=1 for outgoing connections",
		map[string]float64{"time_wait": float64(r.timeWait), "close_rate_per_second": r.closes.rate(f.now.Unix(), 10)})
}
