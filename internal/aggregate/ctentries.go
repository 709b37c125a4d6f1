package aggregate

import (
	"github.com/conntracer/conntracer/internal/events"

	"net/netip"
	"strconv"
)

// The conntrack entry table: per namespace, the entries the lifecycle
// kinds (events.ConntrackEntry) report, each attributed to the process whose socket
// it tracks, and counted by protocol and conntrack TCP state. Part of
// ConntrackStats; single writer like it.
//
// Attribution joins an entry with the sockets the aggregator knows (the
// socket-table rounds, the connections open before tracing, the close
// records): the local socket whose address:port is the entry's original
// source (a local client: the process that created the flow) or, failing
// that, its reply source (a local server, also under DNAT). An entry is
// attributed once and keeps its owner until it is destroyed: entries
// outlive their sockets (TIME_WAIT: 120 s), and the process that left them
// is what an operator wants named. An entry whose socket the tracer has
// not seen yet (its NEW arrives before the next socket round) is tried
// again at the end of each round, at most ctResolveRounds times; only TCP
// sockets are known, so UDP and ICMP entries stay unattributed.
//
// What bounds it: an entry per conntrack entry of the watched namespaces
// (the kernel bounds those by nf_conntrack_max; DESTROY events and resync
// dumps delete them); a socket per local address:port seen in the last two
// rounds (older ones are swept at each round's end, those open before
// tracing when they close); owners with at least one entry at the end of a round.

// ctResolveRounds is how many socket-table rounds an entry waits for its
// socket to show up.
const ctResolveRounds = 3

// NumConntrackTCPStates sizes arrays indexed by a conntrack TCP state.
const NumConntrackTCPStates = 10

// conntrackTCPStateNames are enum tcp_conntrack's names, as `conntrack -L`
// prints them (include/uapi/linux/netfilter/nf_conntrack_tcp.h, a stable
// UAPI numbering).
var conntrackTCPStateNames = [NumConntrackTCPStates]string{
	"NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT",
	"LAST_ACK", "TIME_WAIT", "CLOSE", "SYN_SENT2",
}

// ConntrackTCPStateName returns conntrack's name of a TCP state
// ("ESTABLISHED", "TIME_WAIT"...), "UNKNOWN" out of range.
func ConntrackTCPStateName(s uint8) string {
	if int(s) < len(conntrackTCPStateNames) {
		return conntrackTCPStateNames[s]
	}
	return "UNKNOWN"
}

// ctKey identifies an entry within its namespace: its original tuple,
// which the kernel's table keeps unique (within a conntrack zone). Not the
// kernel's id: the in-kernel source does not know it, and a dump (which
// does) must match the entries that source reported.
type ctKey struct {
	proto    uint8
	src, dst netip.AddrPort
}

type ctEntry struct {
	owner *ctOwner // nil: not attributed
	proto uint8
	state uint8  // conntrack TCP state, 0 for other protocols
	gen   uint64 // the resync generation that listed it last
	tries uint8  // rounds it waited for its socket
}

// ctOwner is a process's share of one namespace's table.
type ctOwner struct {
	key     ProcKey
	comm    [16]byte
	entries uint64
	byState [NumConntrackTCPStates]uint64
}

// ctTable is one namespace's entries.
type ctTable struct {
	entries map[ctKey]ctEntry
	owners  map[ProcKey]*ctOwner
	byState [NumConntrackTCPStates]uint64
	byProto map[uint8]uint64
	// unowned is the number of entries without an owner.
	unowned uint64
	// Resync in progress: the generation whose dump is arriving and how
	// many of its entries are still to come.
	resyncGen, resyncLeft uint64
	resyncing             bool
	lost, resyncs, dumps  uint64
	corrected             uint64 // entries the resyncs added or removed
	pending               []ctKey
}

// ctSockKey names a local TCP socket address.
type ctSockKey struct {
	netns uint32
	addr  netip.AddrPort
}

type ctSock struct {
	key   ProcKey
	comm  [16]byte
	round uint32 // last round that saw it; ^0: open before tracing
}

// ctSockets is the index of local socket addresses to their owners, fed
// only for namespaces whose table is watched.
type ctSockets struct {
	m     map[ctSockKey]ctSock
	round uint32
}

func procKeyOf(o *events.Process) ProcKey {
	return ProcKey{PID: o.PID, StartNs: o.StartNs - o.StartNs%startTick}
}

// sock records the owner of a local socket address.
func (x *ctSockets) sock(c *events.Conn, sticky bool) {
	if !c.Owner.Known() || c.Local.Port() == 0 {
		return
	}
	if x.m == nil {
		x.m = make(map[ctSockKey]ctSock)
	}
	r := x.round
	if sticky {
		r = ^uint32(0)
	}
	x.m[ctSockKey{c.NetNS, unmapAddrPort(c.Local)}] = ctSock{key: procKeyOf(&c.Owner), comm: c.Owner.Comm, round: r}
}

// closed keeps a closed socket's address for two more rounds: its entry
// lingers, its NEW may not have been attributed yet.
func (x *ctSockets) closed(c *events.Conn) {
	k := ctSockKey{c.NetNS, unmapAddrPort(c.Local)}
	if s, ok := x.m[k]; ok && !c.Owner.Known() {
		s.round = x.round
		x.m[k] = s
		return
	}
	x.sock(c, false)
}

// has reports whether c's local address is indexed.
func (x *ctSockets) has(c *events.Conn) bool {
	if len(x.m) == 0 {
		return false
	}
	_, ok := x.m[ctSockKey{c.NetNS, unmapAddrPort(c.Local)}]
	return ok
}

// roundDone sweeps the sockets no round saw lately.
func (x *ctSockets) roundDone() {
	for k, s := range x.m {
		if s.round != ^uint32(0) && s.round+2 < x.round {
			delete(x.m, k)
		}
	}
	x.round++
}

func (x *ctSockets) lookup(netns uint32, a netip.AddrPort) (ctSock, bool) {
	if !a.IsValid() {
		return ctSock{}, false
	}
	a = unmapAddrPort(a)
	if s, ok := x.m[ctSockKey{netns, a}]; ok {
		return s, true
	}
	// A listener bound to the wildcard address.
	any := netip.IPv4Unspecified()
	if a.Addr().Is6() {
		any = netip.IPv6Unspecified()
	}
	s, ok := x.m[ctSockKey{netns, netip.AddrPortFrom(any, a.Port())}]
	return s, ok
}

func unmapAddrPort(a netip.AddrPort) netip.AddrPort {
	if a.Addr().Is4In6() {
		return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
	}
	return a
}

func newCtTable() *ctTable {
	return &ctTable{entries: map[ctKey]ctEntry{}, owners: map[ProcKey]*ctOwner{}, byProto: map[uint8]uint64{}}
}

func ctKeyOf(e *events.ConntrackEntry) ctKey {
	return ctKey{proto: e.Proto, src: e.OrigSrc, dst: e.OrigDst}
}

// applyEntry folds one lifecycle event into t.
func (t *ctTable) applyEntry(ev *events.Event, socks *ctSockets) {
	e := &ev.ConntrackEntry
	switch ev.Kind {
	case events.KindConntrackResync:
		t.dumps++
		if e.Lost > 0 {
			t.resyncs++
		}
		t.lost += e.Lost
		t.resyncGen, t.resyncLeft, t.resyncing = e.Generation, e.DumpEntries, true
		if e.DumpEntries == 0 {
			t.sweep()
		}
	case events.KindConntrackNew, events.KindConntrackUpdate:
		if !e.Dump && t.resyncing {
			t.sweep() // the dump is over, whatever it announced
		}
		t.upsert(e, socks)
		if e.Dump && t.resyncing && e.Generation == t.resyncGen {
			if t.resyncLeft--; t.resyncLeft == 0 {
				t.sweep()
			}
		}
	case events.KindConntrackDestroy:
		if t.resyncing {
			t.sweep()
		}
		k := ctKeyOf(e)
		if old, ok := t.entries[k]; ok {
			t.uncount(&old)
			delete(t.entries, k)
		}
	}
}

// upsert adds or updates an entry.
func (t *ctTable) upsert(e *events.ConntrackEntry, socks *ctSockets) {
	k := ctKeyOf(e)
	old, ok := t.entries[k]
	if ok {
		if e.Dump && old.gen != e.Generation && t.resyncing {
			// Listed by the dump: it survives the sweep.
			old.gen = e.Generation
		}
		if old.state == e.TCPState {
			t.entries[k] = old
			return
		}
		t.uncount(&old)
		old.state = e.TCPState
		t.count(&old)
		t.entries[k] = old
		return
	}
	n := ctEntry{proto: e.Proto, state: e.TCPState}
	if e.Dump {
		n.gen = e.Generation
		if t.resyncing && t.dumps > 1 {
			t.corrected++ // a later dump found an entry the events missed
		}
	}
	// The original source is the client that created the flow. A TCP
	// entry whose client socket is not indexed yet (its NEW came before
	// the socket round that will show it) waits for that round rather
	// than going to the reply source at once: for a local client and
	// server, the reply source is the server's listening address, which
	// is always indexed, and would take every such entry (measured in the
	// kernel matrix, where the hooks report inserts within microseconds).
	if s, ok := socks.lookup(e.NetNS, e.OrigSrc); ok {
		n.owner = t.owner(s)
	} else if e.Proto == 6 {
		t.pending = append(t.pending, k)
	} else if s, ok := socks.lookup(e.NetNS, e.ReplySrc); ok {
		n.owner = t.owner(s)
	}
	t.count(&n)
	t.entries[k] = n
}

func (t *ctTable) owner(s ctSock) *ctOwner {
	o := t.owners[s.key]
	if o == nil {
		o = &ctOwner{key: s.key}
		t.owners[s.key] = o
	}
	o.comm = s.comm
	return o
}

func (t *ctTable) count(e *ctEntry) {
	t.byProto[e.proto]++
	if e.proto == 6 && int(e.state) < NumConntrackTCPStates {
		t.byState[e.state]++
	}
	if e.owner == nil {
		t.unowned++
		return
	}
	e.owner.entries++
	if e.proto == 6 && int(e.state) < NumConntrackTCPStates {
		e.owner.byState[e.state]++
	}
}

func (t *ctTable) uncount(e *ctEntry) {
	if t.byProto[e.proto]--; t.byProto[e.proto] == 0 {
		delete(t.byProto, e.proto)
	}
	if e.proto == 6 && int(e.state) < NumConntrackTCPStates {
		t.byState[e.state]--
	}
	if e.owner == nil {
		t.unowned--
		return
	}
	e.owner.entries--
	if e.proto == 6 && int(e.state) < NumConntrackTCPStates {
		e.owner.byState[e.state]--
	}
	// An owner left with no entry is deleted at the end of the round
	// (resolve), not here: entries may still point to it mid-update, and
	// a process churning through entries keeps one allocation.
}

// sweep ends a resync: entries its dump did not list are gone.
func (t *ctTable) sweep() {
	t.resyncing = false
	for k, e := range t.entries {
		if e.gen != t.resyncGen {
			t.uncount(&e)
			delete(t.entries, k)
			if t.dumps > 1 {
				t.corrected++
			}
		}
	}
}

// resolve tries the entries waiting for their socket again, at the end of
// a socket round.
func (t *ctTable) resolve(netns uint32, socks *ctSockets) {
	for k, o := range t.owners {
		if o.entries == 0 {
			delete(t.owners, k)
		}
	}
	keep := t.pending[:0]
	for _, k := range t.pending {
		e, ok := t.entries[k]
		if !ok || e.owner != nil {
			continue
		}
		// The tuple is the key's; the reply source is not, so only the
		// original source (a local client) and the original destination
		// (a local server without NAT) are tried here, the destination
		// only once a whole round has passed without the client's socket:
		// the flow came from elsewhere.
		s, found := socks.lookup(netns, k.src)
		if !found && e.tries > 0 {
			s, found = socks.lookup(netns, k.dst)
		}
		if found {
			t.uncount(&e)
			e.owner = t.owner(s)
			t.count(&e)
			t.entries[k] = e
			continue
		}
		if e.tries++; e.tries < ctResolveRounds {
			t.entries[k] = e
			keep = append(keep, k)
		}
	}
	t.pending = keep
}

// ctTableSnapshot fills the entry table's part of a namespace's object.
func (t *ctTable) snapshot(sn *ConntrackNSSnapshot) {
	sn.Tracked = uint64(len(t.entries))
	sn.Unattributed = t.unowned
	sn.Lost, sn.Resyncs, sn.Dumps, sn.Corrected = t.lost, t.resyncs, t.dumps, t.corrected
	sn.ByState = map[string]uint64{}
	for st, n := range t.byState {
		if n > 0 {
			sn.ByState[conntrackTCPStateNames[st]] = n
		}
	}
	sn.ByProto = map[string]uint64{}
	for p, n := range t.byProto {
		name := events.ProtoName(p)
		if name == "" {
			name = strconv.Itoa(int(p))
		}
		sn.ByProto[name] += n
	}
}
