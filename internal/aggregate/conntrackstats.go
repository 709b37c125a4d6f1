package aggregate

import (
	"github.com/conntracer/conntracer/internal/events"

	"cmp"
	"slices"
	"time"
)

// maxRefusedFlows bounds the refused flows kept per namespace.
const maxRefusedFlows = 32

// ConntrackStats aggregates KindConntrackStats samples and the drops that
// conntrack caused into the `conntrack` part of the snapshot, one object
// per network namespace. Single writer: the event loop. Run DropNames
// before it.
//
// Telling a table-full drop from a firewall rule's drop: both are
// NETFILTER_DROP freed by netfilter. A refused flow is a NETFILTER_DROP
// record of a packet without a conntrack entry (Drop.NoCT) in a namespace
// whose conntrack `drop` statistic rose in the same sampling window; such
// records wait for the next sample, and are discarded when the statistic
// did not move. The count itself is the kernel's statistic, exact.
//
// Where the in-kernel conntrack hooks run, KindConntrackAllocFailed names
// each refusal exactly (a failed __nf_conntrack_alloc: the refused tuple,
// no guessing): such a flow is confirmed at once. The same packet then also
// arrives as a NO_CT NETFILTER_DROP record (its alloc failure is written to
// the ring buffer first, on the same CPU, before the kernel drops it), so
// once a namespace has had an alloc failure its NO_CT drops are no longer
// refused flows of their own: a drop whose tuple matches a recent exact
// refusal without an owner lends it the owner (the drop record knows the
// socket's process, the alloc hook does not) and is otherwise ignored. One
// refusal is counted once either way.
type ConntrackStats struct {
	ns map[uint32]*conntrackNS
	// The entry tables (ctentries.go), per namespace whose entry
	// lifecycle is reported, and the socket index they are joined with.
	tables map[uint32]*ctTable
	socks  ctSockets
	// fresh: namespaces that appeared after tracing started
	// (KindNetNSNew) and have no sample yet: their baselines are zero.
	fresh map[uint32]bool
}

type conntrackNS struct {
	first, last events.Conntrack // first: the baseline when tracing started
	lastAt      time.Time
	pending     []RefusedFlow // NoCT drops since the last sample
	refused     []RefusedFlow // confirmed table-full drops, newest last
	refusedBy   map[uint32]*ProcessCount
	// exact: the in-kernel path reported an alloc failure here, so NO_CT
	// drops only name owners of its refusals (see ConntrackStats).
	exact bool
}

// RefusedFlow is a flow conntrack refused because its table was full.
type RefusedFlow struct {
	Time  time.Time `json:"time"`
	Proto string    `json:"proto"`
	Src   string    `json:"src"`
	Dst   string    `json:"dst"`
	PID   uint32    `json:"pid,omitempty"`
	Comm  string    `json:"comm,omitempty"`
	// Exact: reported by the kernel's failed conntrack allocation itself
	// (KindConntrackAllocFailed), not inferred from a drop and the
	// namespace's `drop` statistic.
	Exact bool `json:"exact,omitempty"`
}

// ProcessCount is a process's share of a namespace's table.
type ProcessCount struct {
	PID     uint32 `json:"pid"`
	Comm    string `json:"comm"`
	Entries uint64 `json:"entries"` // entries its flows hold (entry table, or table dumps)
	Refused uint64 `json:"refused"` // its packets refused because the table was full
	// ByState: its TCP entries by conntrack TCP state (entry table).
	ByState map[string]uint64 `json:"by_state,omitempty"`
}

// ConntrackNSSnapshot is one namespace's object in the `conntrack` list.
type ConntrackNSSnapshot struct {
	NetNS          uint32  `json:"netns"`
	Entries        uint64  `json:"entries"`
	Max            uint64  `json:"max"`
	Fill           float64 `json:"fill"` // entries / max
	ConntrackDrops uint64  `json:"conntrack_drops"`
	EarlyDrops     uint64  `json:"early_drops"`
	InsertFailed   uint64  `json:"insert_failed"`
	Invalid        uint64  `json:"invalid"`
	Inserts        uint64  `json:"inserts"`
	SearchRestart  uint64  `json:"search_restart"`
	// Timeouts in seconds.
	TimeoutEstablished uint32         `json:"timeout_established"`
	TimeoutTimeWait    uint32         `json:"timeout_time_wait"`
	TopProcesses       []ProcessCount `json:"top_processes"`
	RefusedFlows       []RefusedFlow  `json:"refused_flows"`
	// The entry table, where the entry lifecycle is followed (ctnetlink
	// events or the in-kernel hooks): Tracked entries (equal to Entries
	// when nothing was lost), TCP entries ByState (conntrack's state
	// names), all ByProto, Unattributed (no local TCP socket known:
	// UDP, ICMP, forwarded flows); Lost event overruns (each at least one
	// event) and the Resyncs (dumps) that followed them; Dumps of every
	// cause (the start-up one, refreshes of entries older than the
	// subscription, which report no events, and resyncs), and the entries
	// the dumps after the first Corrected (added or removed).
	Tracked      uint64            `json:"tracked,omitempty"`
	Unattributed uint64            `json:"unattributed,omitempty"`
	ByState      map[string]uint64 `json:"by_state,omitempty"`
	ByProto      map[string]uint64 `json:"by_proto,omitempty"`
	Lost         uint64            `json:"lost,omitempty"`
	Resyncs      uint64            `json:"resyncs,omitempty"`
	Dumps        uint64            `json:"dumps,omitempty"`
	Corrected    uint64            `json:"corrected,omitempty"`
	Since        time.Time         `json:"-"`
	Last         time.Time         `json:"-"`
}

// NewConntrackStats returns an empty aggregate.
func NewConntrackStats() *ConntrackStats {
	return &ConntrackStats{ns: map[uint32]*conntrackNS{}, tables: map[uint32]*ctTable{}, fresh: map[uint32]bool{}}
}

func (s *ConntrackStats) get(netns uint32) *conntrackNS {
	n := s.ns[netns]
	if n == nil {
		n = &conntrackNS{refusedBy: map[uint32]*ProcessCount{}}
		s.ns[netns] = n
	}
	return n
}

// Apply folds one event in; other kinds are ignored.
func (s *ConntrackStats) Apply(ev *events.Event, now time.Time) {
	switch ev.Kind {
	case events.KindNetNSNew:
		s.fresh[ev.Counters.NetNS] = true
	case events.KindNetNSGone:
		ino := ev.Counters.NetNS
		delete(s.ns, ino)
		delete(s.tables, ino)
		delete(s.fresh, ino)
	case events.KindConntrackStats:
		c := ev.Conntrack
		n := s.get(c.NetNS)
		if n.lastAt.IsZero() && !s.fresh[c.NetNS] {
			n.first = c
			n.last = c
			n.lastAt = now
			n.pending = n.pending[:0]
			return
		}
		if n.lastAt.IsZero() || c.Drop < n.last.Drop || c.Insert < n.last.Insert ||
			c.InsertFailed < n.last.InsertFailed || c.EarlyDrop < n.last.EarlyDrop ||
			c.Invalid < n.last.Invalid || c.SearchRestart < n.last.SearchRestart {
			// A namespace born within the trace, or counters that went
			// back: another namespace under a reused inode that nothing
			// reported. Either way its counters started at zero here.
			delete(s.fresh, c.NetNS)
			n.first = events.Conntrack{NetNS: c.NetNS}
			n.last = n.first
		}
		rose := c.Drop - n.last.Drop
		for i := range n.pending {
			if uint64(i) >= rose {
				break
			}
			n.confirm(n.pending[i])
		}
		n.pending = n.pending[:0]
		n.last, n.lastAt = c, now
	case events.KindConntrackNew, events.KindConntrackUpdate, events.KindConntrackDestroy, events.KindConntrackResync:
		ns := ev.ConntrackEntry.NetNS
		if ns == 0 {
			return
		}
		t := s.tables[ns]
		if t == nil {
			t = newCtTable()
			s.tables[ns] = t
		}
		t.applyEntry(ev, &s.socks)
	// Sockets are indexed only in namespaces whose table holds entries;
	// those open before tracing always (they come before any table, and
	// are forgotten when they close).
	case events.KindSockOpen:
		if t := s.tables[ev.Conn.NetNS]; t != nil && len(t.entries) > 0 {
			s.socks.sock(&ev.Conn, false)
		}
	case events.KindConnExisting:
		s.socks.sock(&ev.Conn, true)
	case events.KindConnClosed:
		if t := s.tables[ev.Conn.NetNS]; (t != nil && len(t.entries) > 0) || s.socks.has(&ev.Conn) {
			s.socks.closed(&ev.Conn)
		}
	case events.KindSockSampleDone:
		if len(s.tables) == 0 {
			return
		}
		for ns, t := range s.tables {
			t.resolve(ns, &s.socks)
		}
		s.socks.roundDone()
	case events.KindConntrackAllocFailed:
		c := &ev.ConntrackEntry
		n := s.get(c.NetNS)
		n.exact = true
		n.pending = n.pending[:0] // NO_CT drops from before are these refusals too
		n.confirm(RefusedFlow{
			Time: now, Proto: events.ProtoName(c.Proto), Src: c.OrigSrc.String(), Dst: c.OrigDst.String(), Exact: true,
		})
	case events.KindDrop:
		d := &ev.Drop
		if !d.NoCT || d.ReasonName != "NETFILTER_DROP" {
			return
		}
		n := s.get(d.NetNS)
		if n.exact {
			n.lendOwner(d)
			return
		}
		if len(n.pending) >= 4*maxRefusedFlows {
			return // bounded: more than this per second is shown as a count
		}
		n.pending = append(n.pending, RefusedFlow{
			Time: now, Proto: events.ProtoName(d.L4Proto), Src: d.Src.String(), Dst: d.Dst.String(),
			PID: d.Owner.PID, Comm: string(d.Owner.CommBytes()),
		})
	}
}

// lendOwner gives a NO_CT drop's owner to the newest exact refusal of the
// same flow that has none yet; the drop is not a refusal of its own.
func (n *conntrackNS) lendOwner(d *events.Drop) {
	if d.Owner.PID == 0 {
		return
	}
	proto, src, dst := events.ProtoName(d.L4Proto), d.Src.String(), d.Dst.String()
	for i := len(n.refused) - 1; i >= 0; i-- {
		f := &n.refused[i]
		if !f.Exact || f.PID != 0 || f.Proto != proto || f.Src != src || f.Dst != dst {
			continue
		}
		f.PID, f.Comm = d.Owner.PID, string(d.Owner.CommBytes())
		p := n.refusedBy[f.PID]
		if p == nil {
			p = &ProcessCount{PID: f.PID, Comm: f.Comm}
			n.refusedBy[f.PID] = p
		}
		p.Refused++
		return
	}
}

func (n *conntrackNS) confirm(f RefusedFlow) {
	if len(n.refused) == maxRefusedFlows {
		copy(n.refused, n.refused[1:])
		n.refused = n.refused[:maxRefusedFlows-1]
	}
	n.refused = append(n.refused, f)
	if f.PID != 0 {
		p := n.refusedBy[f.PID]
		if p == nil {
			p = &ProcessCount{PID: f.PID, Comm: f.Comm}
			n.refusedBy[f.PID] = p
		}
		p.Refused++
	}
}

// Snapshot returns one object per namespace that has conntrack samples,
// fullest first.
func (s *ConntrackStats) Snapshot() []ConntrackNSSnapshot {
	var out []ConntrackNSSnapshot
	for ino, t := range s.tables {
		if s.ns[ino] == nil && len(t.entries) > 0 {
			s.get(ino) // entries known before the first statistics sample
		}
	}
	for ino, n := range s.ns {
		t := s.tables[ino]
		if n.lastAt.IsZero() && (t == nil || len(t.entries) == 0) {
			continue
		}
		c, f := n.last, n.first
		sn := ConntrackNSSnapshot{
			NetNS: ino, Entries: c.Entries, Max: c.Max,
			ConntrackDrops: c.Drop - f.Drop, EarlyDrops: c.EarlyDrop - f.EarlyDrop,
			InsertFailed: c.InsertFailed - f.InsertFailed, Invalid: c.Invalid - f.Invalid,
			Inserts: c.Insert - f.Insert, SearchRestart: c.SearchRestart - f.SearchRestart,
			TimeoutEstablished: c.TimeoutEstablished, TimeoutTimeWait: c.TimeoutTimeWait,
			RefusedFlows: slices.Clone(n.refused), Last: n.lastAt,
		}
		if c.Max > 0 {
			sn.Fill = float64(c.Entries) / float64(c.Max)
		}
		procs := map[uint32]ProcessCount{}
		if t != nil {
			t.snapshot(&sn)
			for _, o := range t.owners {
				q := procs[o.key.PID]
				q.PID, q.Comm = o.key.PID, string(o.comm[:clen(o.comm[:])])
				q.Entries += o.entries
				for st, k := range o.byState {
					if k > 0 {
						if q.ByState == nil {
							q.ByState = map[string]uint64{}
						}
						q.ByState[conntrackTCPStateNames[st]] += k
					}
				}
				procs[o.key.PID] = q
			}
		}
		for pid, p := range n.refusedBy {
			q := procs[pid]
			q.PID, q.Refused = pid, p.Refused
			if q.Comm == "" {
				q.Comm = p.Comm
			}
			procs[pid] = q
		}
		for _, p := range procs {
			sn.TopProcesses = append(sn.TopProcesses, p)
		}
		slices.SortFunc(sn.TopProcesses, func(a, b ProcessCount) int {
			return cmp.Or(cmp.Compare(b.Entries, a.Entries), cmp.Compare(b.Refused, a.Refused), cmp.Compare(a.PID, b.PID))
		})
		if len(sn.TopProcesses) > 10 {
			sn.TopProcesses = sn.TopProcesses[:10]
		}
		out = append(out, sn)
	}
	slices.SortFunc(out, func(a, b ConntrackNSSnapshot) int {
		return cmp.Or(cmp.Compare(b.Fill, a.Fill), cmp.Compare(a.NetNS, b.NetNS))
	})
	return out
}

// clen is the length of a NUL-padded comm.
func clen(b []byte) int {
	for i, c := range b {
		if c == 0 {
			return i
		}
	}
	return len(b)
}
