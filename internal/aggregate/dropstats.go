package aggregate

import (
	"github.com/conntracer/conntracer/internal/events"

	"cmp"
	"maps"
	"slices"
	"time"
)

// DropStats aggregates drop and listen-overflow events into the `drops`
// part of the snapshot. Totals come from KindDropCount (the kernel's exact
// cumulative counters), never from counting KindDrop records, which are
// rate-limited samples. Single writer: the event loop. Run DropNames before
// it so that reasons carry names.
type DropStats struct {
	counts map[dropStatKey]uint64
	// changed: when each key's count last rose, so that a finding about
	// drops ends once they stop (DropFindingWindow).
	changed   map[dropStatKey]time.Time
	comms     map[uint32][16]byte // pid -> comm, from records and overflows
	overflows map[listenerKey]*ListenerOverflow
	// offsets: the counts the kernel's keys of departed namespaces had
	// when the namespace went. The kernel's counter map keeps such a key
	// until it is evicted, and a namespace reusing the inode adds to it:
	// what is above the offset is the new namespace's.
	offsets map[dropStatKey]uint64
	// departed: drops by reason of namespaces that are gone, so that the
	// node's totals never go down.
	departed map[string]uint64
}

type dropStatKey struct {
	reason   string
	location string
	netns    uint32
	pid      uint32
	noCT     bool
}

type listenerKey struct {
	netns uint32
	addr  string
}

// DropCount is one line of the `drops` snapshot: drops of one reason in
// one namespace, by one owner where known.
type DropCount struct {
	Reason   string `json:"reason"`
	NetNS    uint32 `json:"netns"`
	PID      uint32 `json:"pid,omitempty"`
	Comm     string `json:"comm,omitempty"`
	Location string `json:"location"`
	Count    uint64 `json:"count"`
	// Last is when the count last rose (the latest of the merged keys).
	Last time.Time `json:"last"`
	// NoConntrackEntry: NETFILTER_DROP of packets conntrack had no entry
	// for (a table-full drop if the namespace's drop statistic rose).
	NoConntrackEntry bool `json:"no_conntrack_entry,omitempty"`
}

// ListenerOverflow is the overflow history of one listener.
type ListenerOverflow struct {
	NetNS     uint32    `json:"netns"`
	Addr      string    `json:"addr"`
	PID       uint32    `json:"pid,omitempty"`
	Comm      string    `json:"comm,omitempty"`
	Overflows uint64    `json:"overflows"`
	Backlog   uint32    `json:"backlog"`
	QueueLen  uint32    `json:"queue_len"`
	Somaxconn uint32    `json:"somaxconn"`
	First     time.Time `json:"first"`
	Last      time.Time `json:"last"`
}

// NewDropStats returns an empty aggregate.
func NewDropStats() *DropStats {
	return &DropStats{
		counts:    map[dropStatKey]uint64{},
		changed:   map[dropStatKey]time.Time{},
		comms:     map[uint32][16]byte{},
		overflows: map[listenerKey]*ListenerOverflow{},
		offsets:   map[dropStatKey]uint64{},
		departed:  map[string]uint64{},
	}
}

// Apply folds one event in; other kinds are ignored.
func (s *DropStats) Apply(ev *events.Event, now time.Time) {
	d := &ev.Drop
	switch ev.Kind {
	case events.KindDrop:
		if d.Owner.PID != 0 {
			s.comms[d.Owner.PID] = d.Owner.Comm
		}
	case events.KindDropCount:
		// Cumulative per kernel key: the latest value is the total. Keys
		// are bounded by the kernel map (LRU, 16384 entries).
		k := dropStatKey{d.ReasonName, d.Symbol, d.NetNS, d.Owner.PID, d.NoCT}
		n := d.Count
		if off, ok := s.offsets[k]; ok {
			if n >= off {
				n -= off
			} else {
				delete(s.offsets, k) // the kernel's key was evicted and began anew
			}
			if n == 0 {
				return // the departed namespace's key, read again: nothing new
			}
		}
		if n > s.counts[k] {
			s.changed[k] = now
		}
		s.counts[k] = n
	case events.KindNetNSGone:
		ino := ev.Counters.NetNS
		for k, n := range s.counts {
			if k.netns == ino {
				s.departed[k.reason] += n
				s.offsets[k] += n
				delete(s.counts, k)
				delete(s.changed, k)
			}
		}
		for k := range s.overflows {
			if k.netns == ino {
				delete(s.overflows, k)
			}
		}
	case events.KindListenOverflow:
		k := listenerKey{d.NetNS, d.Dst.String()}
		o := s.overflows[k]
		if o == nil {
			o = &ListenerOverflow{NetNS: d.NetNS, Addr: k.addr, First: now}
			s.overflows[k] = o
		}
		o.Overflows += d.Count
		o.PID, o.Comm = d.Owner.PID, string(d.Owner.CommBytes())
		o.Backlog, o.QueueLen, o.Somaxconn = d.Backlog, d.QueueLen, d.Somaxconn
		o.Last = now
	}
}

// DropSnapshot is the `drops` object of the JSON snapshot.
type DropSnapshot struct {
	ByReason        []DropCount        `json:"by_reason"`
	ListenOverflows []ListenerOverflow `json:"listen_overflows"`
	// Departed: the drops, by reason, of namespaces that are gone (their
	// lines left ByReason): node totals add them.
	Departed map[string]uint64 `json:"departed,omitempty"`
}

// Snapshot returns the aggregate, largest counts first. It merges keys
// that differ only in location, which the operator reads in `location`
// (the busiest one).
func (s *DropStats) Snapshot() DropSnapshot {
	type k struct {
		reason string
		netns  uint32
		pid    uint32
		noCT   bool
	}
	merged := map[k]*DropCount{}
	best := map[k]uint64{}
	for key, n := range s.counts {
		mk := k{key.reason, key.netns, key.pid, key.noCT}
		dc := merged[mk]
		if dc == nil {
			dc = &DropCount{Reason: key.reason, NetNS: key.netns, PID: key.pid, NoConntrackEntry: key.noCT}
			if c, ok := s.comms[key.pid]; ok {
				p := events.Process{Comm: c}
				dc.Comm = string(p.CommBytes())
			}
			merged[mk] = dc
		}
		dc.Count += n
		if c := s.changed[key]; c.After(dc.Last) {
			dc.Last = c
		}
		if n > best[mk] {
			best[mk], dc.Location = n, key.location
		}
	}
	var snap DropSnapshot
	if len(s.departed) > 0 {
		snap.Departed = maps.Clone(s.departed)
	}
	for _, dc := range merged {
		snap.ByReason = append(snap.ByReason, *dc)
	}
	slices.SortFunc(snap.ByReason, func(a, b DropCount) int {
		return cmp.Or(cmp.Compare(b.Count, a.Count), cmp.Compare(a.Reason, b.Reason),
			cmp.Compare(a.NetNS, b.NetNS), cmp.Compare(a.PID, b.PID))
	})
	for _, o := range s.overflows {
		snap.ListenOverflows = append(snap.ListenOverflows, *o)
	}
	slices.SortFunc(snap.ListenOverflows, func(a, b ListenerOverflow) int {
		return cmp.Or(cmp.Compare(b.Overflows, a.Overflows), cmp.Compare(a.Addr, b.Addr))
	})
	return snap
}
