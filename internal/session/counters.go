package session

import (
	"time"

	"github.com/conntracer/conntracer/internal/events"
)

// tracerCounters applies the tracer's own loss counters as
// KindTracerCounters events, at most once per --counters-interval: one
// event per BPF object (records the kernel could not write to the ring
// buffer) and one with the reader's totals (records read, undecodable,
// sampler batches waiting). It runs on the event loop (Drained), or on
// the goroutine that owns the loop before and after it runs, because the
// probe's reader counts are the event loop's.
func (l *loop) tracerCounters(now time.Time, force bool) {
	if l.probe == nil || l.countersEvery <= 0 || (!force && now.Sub(l.countersAt) < l.countersEvery) {
		return
	}
	l.countersAt = now
	objs, err := l.probe.LostByObject()
	if err != nil {
		return // the maps are gone: the probe is closing
	}
	ev := events.Event{Kind: events.KindTracerCounters}
	for _, o := range objs {
		ev.Counters = events.Counters{Object: o.Object}
		ev.Counters.Values[tcLost] = o.Lost
		l.apply(&ev, now)
	}
	if l.ct != nil {
		// The entry source's losses, as one more object.
		ev.Counters = events.Counters{Object: l.ct.Name()}
		ev.Counters.Values[tcLost] = l.ct.Lost()
		l.apply(&ev, now)
	}
	st := l.probe.Stats()
	ev.Counters = events.Counters{}
	ev.Counters.Values[tcRecords] = st.Records
	ev.Counters.Values[tcUndecodable] = st.BadRecords
	ev.Counters.Values[tcBatches] = uint64(len(l.batches))
	l.apply(&ev, now)
}

// Indices into events.TracerCounterNames.
const (
	tcLost = iota
	tcRecords
	tcUndecodable
	tcBatches
)
