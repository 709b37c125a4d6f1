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

// Apply takes KindKernelCounters and KindTracerCounters events.
func (s *CounterStats) Apply(ev *events.Event, now time.Time) {
	if ev.Kind != events.KindKernelCounters && ev.Kind != events.KindTracerCounters {
		return
	}
	if s.m == nil {
		s.m = make(map[counterKey]*counterEntry)
	}
	k := counterKey{ev.Kind, ev.Counters.NetNS, ev.Counters.Object}
	e, ok := s.m[k]
	if !ok {
		e = &counterEntry{first: ev.Counters, firstTime: now}
		s.m[k] = e
	}
	e.last, e.lastTime = ev.Counters, now
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
