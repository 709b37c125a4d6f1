package aggregate

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"github.com/conntracer/conntracer/internal/events"
)

// portKey is one destination as seen from one local address: the unit the
// kernel's ephemeral port allocation is shared over (__inet_hash_connect
// lets two connections share a local port only to different destinations).
type portKey struct {
	netns  uint32
	local  netip.Addr
	remote netip.AddrPort
}

func portKeyOf(c *events.Conn) portKey {
	return portKey{netns: c.NetNS, local: c.Local.Addr(), remote: c.Remote}
}

// Default ephemeral port range of Linux (net.ipv4.ip_local_port_range),
// used for namespaces whose range the sampler has not reported.
const (
	DefaultPortLow  = 32768
	DefaultPortHigh = 60999
)

// portTable counts, per destination, the local ports held in any state:
// by the sockets of the current sample round (sampled) and by TIME_WAIT
// sockets (addTimeWait, removeTimeWait: the TIME_WAIT table's entries).
// publish combines both at the end of a round.
type portTable struct {
	ranges map[uint32][2]uint16
	// round: ports held by the sockets sampled in the current round
	round map[portKey]uint32
	// TIME_WAIT sockets holding an ephemeral port, by destination: the
	// tuple with no local port (twPortKey gives the portKey). A plain
	// array key hashes in one pass, where portKey's netip values (with a
	// zone pointer) hash field by field: BenchmarkAggregatorApply spent
	// 5% of its time hashing and comparing portKeys here.
	tw map[tuple]uint32
	// published by publish: sockets open now plus TIME_WAIT
	use map[portKey]portUse
	// What use was built from, so that a round where nothing changed
	// (a standing pile of TIME_WAIT sockets, 50,000 destinations of a
	// server, and an idle socket table) does not rebuild it: 8-12 ms a
	// round (BenchmarkSampleRoundServerTimeWait).
	usedRound map[portKey]uint32 // the round's ports use holds
	changed   bool               // tw or a range changed since
	// hot are the destinations of use at or above hotShare of their
	// namespace's range, found when use was built: the only ones the
	// port_exhaustion rule can cite while use stays as it is.
	hot      []portKey
	hotShare float64
	// shown is the last top(shownK), kept while use and the ranges
	// stay as they are.
	shown  []PortUse
	shownK int
}

type portUse struct {
	used, timeWait uint32
}

func newPortTable() portTable {
	return portTable{
		ranges: make(map[uint32][2]uint16),
		round:  make(map[portKey]uint32),
		tw:     make(map[tuple]uint32),
		use:    make(map[portKey]portUse),

		usedRound: make(map[portKey]uint32),
		changed:   true,
	}
}

func (t *portTable) rangeOf(netns uint32) (lo, hi uint16) {
	if r, ok := t.ranges[netns]; ok {
		return r[0], r[1]
	}
	return DefaultPortLow, DefaultPortHigh
}

// rangeSize is the number of ephemeral ports of namespace netns.
func (t *portTable) rangeSize(netns uint32) uint32 {
	lo, hi := t.rangeOf(netns)
	return uint32(hi) - uint32(lo) + 1
}

func (t *portTable) ephemeral(netns uint32, port uint16) bool {
	lo, hi := t.rangeOf(netns)
	return port >= lo && port <= hi
}

func (t *portTable) setRange(netns uint32, lo, hi uint16) {
	if lo > hi || netns == 0 {
		return
	}
	if t.ranges[netns] != [2]uint16{lo, hi} {
		t.ranges[netns] = [2]uint16{lo, hi}
		t.changed, t.shown = true, nil
	}
}

// forgetRange forgets the range of a namespace gone.
func (t *portTable) forgetRange(netns uint32) {
	if _, ok := t.ranges[netns]; ok {
		delete(t.ranges, netns)
		t.changed, t.shown = true, nil
	}
}

// twDest is the key of t.tw: the tuple's destination as seen from its
// local address.
func twDest(k tuple) tuple {
	k.lport = 0
	return k
}

func twPortKey(k tuple) portKey {
	return portKey{
		netns:  k.netns,
		local:  netip.AddrFrom16(k.laddr).Unmap(),
		remote: netip.AddrPortFrom(netip.AddrFrom16(k.raddr).Unmap(), k.rport),
	}
}

func (t *portTable) addTimeWait(k tuple) bool {
	if !t.ephemeral(k.netns, k.lport) {
		return false
	}
	t.tw[twDest(k)]++
	t.changed = true
	return true
}

func (t *portTable) removeTimeWait(k tuple) {
	pk := twDest(k)
	if n := t.tw[pk]; n > 1 {
		t.tw[pk] = n - 1
	} else {
		delete(t.tw, pk)
	}
	t.changed = true
}

// beginRound forgets the ports of the previous round's sockets.
func (t *portTable) beginRound() { clear(t.round) }

// sampled counts a port held towards k by a socket of the current round.
func (t *portTable) sampled(k portKey) { t.round[k]++ }

// publish combines the round's open sockets with the TIME_WAIT sockets,
// unless neither changed since the last time.
func (t *portTable) publish() {
	if !t.changed && maps.Equal(t.round, t.usedRound) {
		return
	}
	t.changed = false
	clear(t.usedRound)
	maps.Copy(t.usedRound, t.round)
	t.hot, t.shown = nil, nil
	clear(t.use)
	for k, n := range t.round {
		t.use[k] = portUse{used: n}
	}
	for k, n := range t.tw {
		pk := twPortKey(k)
		u := t.use[pk]
		u.used += n
		u.timeWait = n
		t.use[pk] = u
	}
}

// dest is a destination whatever the local address.
type dest struct {
	netns  uint32
	remote netip.AddrPort
}

// byDest returns the ports held towards each destination, whatever the
// local address, for (at least) the nWanted destinations that wanted
// lists. It indexes the smaller side: every destination of the table when
// it has no more than nWanted, else only those wanted, so that a table
// of 50,000 destinations (a server's TIME_WAIT sockets, when its port lies
// inside the ephemeral range: each towards another client port) costs
// lookups, not a map of 50,000, when the host connects to few.
func (t *portTable) byDest(nWanted int, wanted func(add func(dest))) map[dest]uint32 {
	if len(t.use) <= nWanted {
		ports := make(map[dest]uint32, len(t.use))
		for k, u := range t.use {
			ports[dest{k.netns, k.remote}] += u.used
		}
		return ports
	}
	ports := make(map[dest]uint32, nWanted)
	wanted(func(d dest) { ports[d] = 0 })
	for k, u := range t.use {
		d := dest{k.netns, k.remote}
		if n, ok := ports[d]; ok {
			ports[d] = n + u.used
		}
	}
	return ports
}

// top returns the k most used destinations, most used first (then by
// namespace, remote and local address), with their exact counts. A bounded
// selection: a heap of the k best seen so far, whose worst is replaced
// when a better one comes, then a sort of those k. Sorting every
// destination, 53,000 of them in the case of byDest, was 7% of a busy
// tracer's CPU time.
func (t *portTable) top(k int) []PortUse {
	if len(t.use) == 0 || k <= 0 {
		return nil
	}
	if t.shown != nil && t.shownK == k {
		return slices.Clone(t.shown) // snapshots own their slices
	}
	t.shown, t.shownK = t.selectTop(k), k
	return slices.Clone(t.shown)
}

// selectTop is top without the cache.
func (t *portTable) selectTop(k int) []PortUse {
	h := make([]PortUse, 0, min(k, len(t.use)))
	// h is a heap with the worst kept at h[0]: worse(h[i], h[parent]) is
	// never true.
	worse := func(x, y *PortUse) bool { return portOrder(x, y) > 0 }
	down := func(i int) {
		for {
			c := 2*i + 1
			if c >= len(h) {
				return
			}
			if c+1 < len(h) && worse(&h[c+1], &h[c]) {
				c++
			}
			if !worse(&h[c], &h[i]) {
				return
			}
			h[i], h[c] = h[c], h[i]
			i = c
		}
	}
	for pk, u := range t.use {
		p := PortUse{NetNS: pk.netns, Local: pk.local, Remote: pk.remote,
			Used: u.used, TimeWait: u.timeWait, RangeSize: t.rangeSize(pk.netns)}
		if len(h) < k {
			h = append(h, p)
			for i := len(h) - 1; i > 0; {
				parent := (i - 1) / 2
				if !worse(&h[i], &h[parent]) {
					break
				}
				h[i], h[parent] = h[parent], h[i]
				i = parent
			}
			continue
		}
		if worse(&p, &h[0]) || portOrder(&p, &h[0]) == 0 {
			continue
		}
		h[0] = p
		down(0)
	}
	slices.SortFunc(h, func(x, y PortUse) int { return portOrder(&x, &y) })
	return h
}

// portOrder is the order of Snapshot.Ports: most used first, then by
// namespace, remote and local address. Most pairs differ in the count,
// so the addresses are compared only when it is equal.
func portOrder(x, y *PortUse) int {
	if c := cmp.Compare(y.Used, x.Used); c != 0 {
		return c
	}
	if c := cmp.Compare(x.NetNS, y.NetNS); c != 0 {
		return c
	}
	if c := x.Remote.Compare(y.Remote); c != 0 {
		return c
	}
	return x.Local.Compare(y.Local)
}

// exhaustion is the port_exhaustion rule: the ports held towards one
// destination, as the last round published them, reach PortUseShare of
// the namespace's ephemeral range. The finding names the process of procs
// that holds most of them.
func (t *portTable) exhaustion(f *findingSet, th *Thresholds, procs map[ProcKey]*procStats) {
	if t.hot == nil || t.hotShare != th.PortUseShare {
		t.hot, t.hotShare = []portKey{}, th.PortUseShare
		for pk, u := range t.use {
			if float64(u.used)/float64(t.rangeSize(pk.netns)) >= th.PortUseShare {
				t.hot = append(t.hot, pk)
			}
		}
	}
	for _, pk := range t.hot {
		u := t.use[pk]
		size := t.rangeSize(pk.netns)
		share := float64(u.used) / float64(size)
		if share < th.PortUseShare {
			continue
		}
		p, r := portHolder(procs, pk)
		if p == nil {
			continue
		}
		k := findingKey{kind: FindingPortExhaustion, proc: p.key, remote: r.key, local: pk.local.String()}
		f.add(k, p, pk.netns,
			fmt.Sprintf("%d of %d ephemeral ports (%.0f%%) from %s to %s in use, %d in TIME_WAIT: new connections will fail with EADDRNOTAVAIL", u.used, size, 100*share, pk.local, pk.remote, u.timeWait),
			"reuse connections (pool, keep-alive); widen net.ipv4.ip_local_port_range; net.ipv4.tcp_tw_reuse=1; spread over more local or remote addresses",
			map[string]float64{"ports_used": float64(u.used), "range_size": float64(size), "share": share, "time_wait": float64(u.timeWait)})
	}
}

// portHolder returns the process of procs holding most sockets (open or
// TIME_WAIT) towards a destination.
func portHolder(procs map[ProcKey]*procStats, pk portKey) (*procStats, *remoteStats) {
	var bp *procStats
	var br *remoteStats
	var best uint32
	k := RemoteKey{NetNS: pk.netns, Addr: pk.remote}
	for _, p := range procs {
		if p.key.PID == 0 {
			continue
		}
		r, ok := p.remotes[k]
		if !ok {
			continue
		}
		var n uint32
		for _, s := range r.states {
			n += s.n
		}
		n += r.timeWait
		if n > best {
			bp, br, best = p, r, n
		}
	}
	return bp, br
}
