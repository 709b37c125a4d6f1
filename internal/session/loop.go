package session

import (
	"sync/atomic"
	"time"

	"github.com/conntracer/conntracer/internal/aggregate"
	"github.com/conntracer/conntracer/internal/events"
	"github.com/conntracer/conntracer/internal/export"
	"github.com/conntracer/conntracer/internal/kernel"
	"github.com/conntracer/conntracer/internal/probe"
)

// loop is the aggregating handler of the event loop: it applies the ring
// buffer's events and the samplers' batches to the aggregator, hands each
// to the recorder, and publishes a snapshot per socket-table round.
type loop struct {
	owners  *events.Owners // shared with the printer
	netns   uint32
	agg     *aggregate.Aggregator
	batches chan []events.Event
	// spare takes back the big batches once applied, for the samplers to
	// fill again (reuseBatch): nothing here keeps a reference to them.
	spare chan []events.Event
	snap  atomic.Pointer[aggregate.Snapshot]
	rec   *recorder            // nil unless recording (recorder.go)
	ct    conntrackEntrySource // nil: off; its losses (counters.go)

	// Self-metrics, when /metrics is served (Session.RegisterMetrics).
	health      *export.Health
	probe       *probe.Probe
	healthAt    time.Time
	sampled     uint64    // events the samplers handed over
	sockEntries int       // KindSockOpen events of the last socket-table round
	bigAt       time.Time // when the last batch worth recycling was applied

	// The tracer's loss counters, applied every countersEvery (counters.go).
	countersEvery time.Duration
	countersAt    time.Time
}

// newLoop makes the aggregator with the drop names of the running kernel
// and the port lookup that port_exhaustion findings cite.
func newLoop(cfg *Config, owners *events.Owners, drops *events.DropNames) *loop {
	l := &loop{
		owners:  owners,
		netns:   cfg.NetNS,
		agg:     aggregate.NewAggregator(cfg.Thresholds),
		batches: make(chan []events.Event, 4),
		spare:   make(chan []events.Event, 2),

		countersEvery: cfg.Intervals.Counters,
	}
	l.agg.SetDropNames(drops)
	ports := &kernel.PortInfoCache{TTL: 10 * time.Second}
	l.agg.SetConnectRules(aggregate.DefaultConnectRules(), ports.Lookup)
	l.snap.Store(l.agg.Snapshot())
	return l
}

// Snapshot returns the last published snapshot; safe from any goroutine.
func (l *loop) Snapshot() *aggregate.Snapshot { return l.snap.Load() }

// apply attributes ev (events.Owners) and aggregates it.
func (l *loop) apply(ev *events.Event, now time.Time) {
	l.owners.Apply(ev)
	l.applyAttributed(ev, now)
}

// applyAttributed aggregates and records an event the owners table has
// seen already.
func (l *loop) applyAttributed(ev *events.Event, now time.Time) {
	// Events about one namespace are filtered; those ending a round of
	// every namespace (namespace 0) always pass.
	if ns := ev.NetNS(); l.netns != 0 && ns != 0 && ns != l.netns {
		return
	}
	l.agg.Apply(ev, now)
	l.rec.Record(ev, now)
}

func (l *loop) applyAt(ev *events.Event, now time.Time) { l.apply(ev, now) }

// HandleEvent implements probe.Handler.
func (l *loop) HandleEvent(ev *events.Event) { l.apply(ev, time.Now()) }

// Drained implements probe.Handler: the ring buffer is empty, a good
// moment to apply the samplers' batches and publish a snapshot.
func (l *loop) Drained() {
	for {
		select {
		case b := <-l.batches:
			now := time.Now()
			sampled := false
			socks := 0
			for i := range b {
				l.apply(&b[i], now)
				sampled = sampled || b[i].Kind == events.KindSockSampleDone
				if b[i].Kind == events.KindSockOpen {
					socks++
				}
			}
			l.sampled += uint64(len(b))
			if sampled {
				l.sockEntries = socks
				l.snap.Store(l.agg.Snapshot())
			}
			if cap(b) >= minSpareBatch {
				// Recycled only while big batches keep coming (churn):
				// an idle tracer's rare big batch (a TIME_WAIT dump of a
				// standing pile, once a minute) is left to the garbage
				// collector rather than kept, tens of MiB, for the next.
				if now.Sub(l.bigAt) < spareKeep {
					select {
					case l.spare <- b[:0]:
					default:
					}
				}
				l.bigAt = now
			}
		default:
			l.tracerCounters(time.Now(), false)
			l.rec.Tick(time.Now(), l.snap.Load())
			l.updateHealth()
			return
		}
	}
}

// updateHealth hands the probe's counts to the self-metrics, at most
// twice a second: Drained runs whenever the ring buffer runs dry.
func (l *loop) updateHealth() {
	if l.health == nil {
		return
	}
	now := time.Now()
	if now.Sub(l.healthAt) < 500*time.Millisecond {
		return
	}
	l.healthAt = now
	st := l.probe.Stats()
	lost, err := l.probe.LostRecords()
	if err != nil {
		lost = st.Lost
	}
	used, size := l.probe.RingBufferUse()
	var ctLost uint64
	if l.ct != nil {
		ctLost = l.ct.Lost()
	}
	l.health.Set(export.HealthCounts{ConntrackLost: ctLost,
		Records: st.Records, BadRecords: st.BadRecords, Lost: lost, SampledEvents: l.sampled,
		RingUsedBytes: used, RingSizeBytes: size,
		SockEntries: l.sockEntries, SockMaxEntries: l.probe.MaxSockets(),
	})
}

var _ probe.Handler = (*loop)(nil)

// minSpareBatch is the smallest batch worth recycling (reuseBatch).
const minSpareBatch = 256

// spareKeep: a big batch is recycled when the previous one came less than
// this long before it (the socket table's rounds under churn come every
// second).
const spareKeep = 3 * time.Second
