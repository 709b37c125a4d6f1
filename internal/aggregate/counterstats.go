package aggregate

import (
	"github.com/conntracer/conntracer/internal/events"

	"cmp"
	"slices"
	"time"
)

// CounterStats keeps, per source of counters (a namespace's kernel
// counters, a BPF object's loss counters), the first and the last values
// seen: the snapshot shows the last values and the deltas between them.
type CounterStats struct {
	m map[counterKey]*counterEntry
	// fresh: namespaces that appeared after tracing started
	// (KindNetNSNew) and have no counters yet: they count from zero.
	fresh map[uint32]bool
}

type counterKey struct {
	kind   events.Kind
	netns  uint32
	object string
}

type counterEntry struct {
	first, last         events.Counters
	firstTime, lastTime time.Time
}

// Apply takes KindKernelCounters and KindTracerCounters events, and
// KindNetNSNew and KindNetNSGone: a namespace's counters are forgotten when
// it goes, and count from zero when it appeared within the trace.
func (s *CounterStats) Apply(ev *events.Event, now time.Time) {
	switch ev.Kind {
	case events.KindNetNSNew:
		if s.fresh == nil {
			s.fresh = map[uint32]bool{}
		}
		s.fresh[ev.Counters.NetNS] = true
		return
	case events.KindNetNSGone:
		delete(s.fresh, ev.Counters.NetNS)
		for k := range s.m {
			if k.kind == events.KindKernelCounters && k.netns == ev.Counters.NetNS {
				delete(s.m, k)
			}
		}
		return
	case events.KindKernelCounters, events.KindTracerCounters:
	default:
		return
	}
	if s.m == nil {
		s.m = make(map[counterKey]*counterEntry)
	}
	k := counterKey{ev.Kind, ev.Counters.NetNS, ev.Counters.Object}
	e, ok := s.m[k]
	names := events.CounterNames(ev.Kind)
	switch {
	case !ok && ev.Kind == events.KindKernelCounters && s.fresh[k.netns]:
		delete(s.fresh, k.netns)
		e = &counterEntry{first: zeroCounts(ev.Counters, names), firstTime: now}
		s.m[k] = e
	case !ok:
		e = &counterEntry{first: ev.Counters, firstTime: now}
		s.m[k] = e
	case wentBack(&e.last, &ev.Counters, names):
		// Another namespace under a reused inode that nothing reported
		// (or a restarted source): its counts started at zero, and a
		// change is never negative.
		e.first, e.firstTime = zeroCounts(ev.Counters, names), now
	}
	e.last, e.lastTime = ev.Counters, now
}

// zeroCounts returns c with its counts (not its gauges) zeroed: the
// baseline of a source that started counting within the trace.
func zeroCounts(c events.Counters, names []string) events.Counters {
	for i, n := range names {
		if i < len(c.Values) && !events.KernelGauges[n] {
			c.Values[i] = 0
		}
	}
	return c
}

// wentBack tells whether a count (not a gauge) is lower in cur than in
// prev.
func wentBack(prev, cur *events.Counters, names []string) bool {
	for i, n := range names {
		if i < len(cur.Values) && !events.KernelGauges[n] && cur.Values[i] < prev.Values[i] {
			return true
		}
	}
	return false
}

// CounterSnapshot is one source's counters: the last values and their
// change since the first snapshot the tracer took (since the recording or
// the live session began). Gauges (KernelGauges) change both ways.
type CounterSnapshot struct {
	Kind   string            `json:"kind"` // kernel_counters or tracer_counters
	NetNS  uint32            `json:"netns,omitempty"`
	Object string            `json:"object,omitempty"`
	Since  time.Time         `json:"since"`
	Time   time.Time         `json:"time"`
	Values map[string]uint64 `json:"values"`
	Deltas map[string]int64  `json:"deltas"`
}

// Snapshot lists every source, kernel counters first, by namespace and
// object.
func (s *CounterStats) Snapshot() []CounterSnapshot {
	out := make([]CounterSnapshot, 0, len(s.m))
	for k, e := range s.m {
		names := events.CounterNames(k.kind)
		c := CounterSnapshot{Kind: k.kind.String(), NetNS: k.netns, Object: k.object, Since: e.firstTime, Time: e.lastTime,
			Values: make(map[string]uint64, len(names)), Deltas: make(map[string]int64, len(names))}
		for i, n := range names {
			c.Values[n] = e.last.Values[i]
			c.Deltas[n] = int64(e.last.Values[i] - e.first.Values[i])
		}
		out = append(out, c)
	}
	slices.SortFunc(out, func(x, y CounterSnapshot) int {
		return cmp.Or(cmp.Compare(x.Kind, y.Kind), cmp.Compare(x.NetNS, y.NetNS), cmp.Compare(x.Object, y.Object))
	})
	return out
}
