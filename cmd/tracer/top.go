package main

import (
	"github.com/conntracer/conntracer/internal/aggregate"

	"context"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/conntracer/conntracer/internal/events"
	"github.com/conntracer/conntracer/internal/export"
	"github.com/conntracer/conntracer/internal/kernel"
	"github.com/conntracer/conntracer/internal/probe"
	"github.com/conntracer/conntracer/internal/top"
)

// runTop is `tracer top`: the same probe as the stream, feeding an
// aggregator instead of a printer, plus the samplers of the kernel's
// socket table and TIME_WAIT sockets.
//
// Goroutines: the event loop (probe.Run) alone applies events to the
// aggregator, those of the ring buffer and the batches the samplers hand
// over; it publishes snapshots through an atomic pointer. The sampler
// goroutine reads the kernel and sends batches. The terminal view reads
// published snapshots only.
func runTop(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := parseTopFlags(args, stdout)
	if err != nil {
		return err
	}
	if cfg.help {
		return nil
	}
	sess, err := openSession(cfg, stderr)
	if err != nil {
		return err
	}
	defer sess.close()
	loop := sess.loop
	what := "Ctrl-C or q to stop"
	if cfg.once {
		what = fmt.Sprintf("printing one snapshot in %s", cfg.interval)
	}
	fmt.Fprintf(stderr, "tracer: top: tracing TCP connections [%s]; %d already open; %s\n",
		attachSummary(sess.probe.Attachments()), sess.existing, what)

	runCtx := ctx
	var cancel context.CancelFunc
	if cfg.once {
		runCtx, cancel = context.WithTimeout(ctx, cfg.interval)
	} else {
		runCtx, cancel = context.WithCancel(ctx)
	}
	defer cancel()

	var wg sync.WaitGroup
	var ui *top.UI
	if !cfg.once && !cfg.noView {
		ui = top.NewUI(loop.Snapshot, cfg.interval, cfg.sortBy)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer cancel() // quitting the view stops the tracer
			if err := ui.Run(runCtx, stdout); err != nil {
				fmt.Fprintf(stderr, "tracer: terminal view: %v\n", err)
			}
		}()
	}
	runErr := sess.run(runCtx, stderr)
	cancel()
	wg.Wait()
	if runErr != nil {
		return runErr
	}
	if !cfg.once {
		return nil
	}

	// The event loop has returned: this goroutine may apply events now,
	// the batches still waiting first (conntrack entry events). A last
	// round of each sampler makes the document current to the moment it
	// is printed.
	loop.Drained()
	if err := loop.sampleAll(sess.samplers, stderr); err != nil {
		return err
	}
	snap := loop.agg.Snapshot()
	if cfg.json {
		cgroups, _ := kernel.CgroupNames()
		return export.NewDocument(snap, cfg.interval, cgroups).WriteJSON(stdout)
	}
	_, err = io.WriteString(stdout, export.RenderText(snap, export.ViewOptions{Sort: cfg.sortBy, Width: 160}))
	return err
}

// topLoop is the event loop's handler for `tracer top`.
type topLoop struct {
	owners  *events.Owners
	netns   uint32
	agg     *aggregate.Aggregator
	batches chan []events.Event
	// spare takes back the big batches once applied, for the samplers to
	// fill again (reuseBatch): nothing here keeps a reference to them.
	spare chan []events.Event
	snap  atomic.Pointer[aggregate.Snapshot]
	rec   *loopRecorder        // nil unless recording (record_hook.go)
	ct    conntrackEntrySource // nil: off; its losses (counters.go)

	// Self-metrics, when /metrics is served (session.openMetrics).
	health      *export.Health
	probe       *probe.Probe
	healthAt    time.Time
	sampled     uint64 // events the samplers handed over
	sockEntries int    // KindSockOpen events of the last socket-table round

	// The tracer's loss counters, applied every countersEvery (counters.go).
	countersEvery time.Duration
	countersAt    time.Time
}

// newTopLoop makes the aggregator with its drop names (from the running
// kernel) and the port lookup that port_exhaustion findings cite.
func newTopLoop(cfg *topConfig, stderr io.Writer) *topLoop {
	l := &topLoop{
		owners:  events.NewOwners(),
		netns:   cfg.netns,
		agg:     aggregate.NewAggregator(cfg.th),
		batches: make(chan []events.Event, 4),
		spare:   make(chan []events.Event, 2),

		countersEvery: cfg.countersEvery,
	}
	l.agg.SetDropNames(dropNames(stderr))
	ports := &kernel.PortInfoCache{TTL: 10 * time.Second}
	l.agg.SetConnectRules(aggregate.DefaultConnectRules(), ports.Lookup)
	l.snap.Store(l.agg.Snapshot())
	return l
}

// Snapshot returns the last published snapshot; safe from any goroutine.
func (l *topLoop) Snapshot() *aggregate.Snapshot { return l.snap.Load() }

func (l *topLoop) apply(ev *events.Event, now time.Time) {
	l.owners.Apply(ev)
	// Events about one namespace are filtered; those ending a round of
	// every namespace (namespace 0) always pass.
	if ns := ev.NetNS(); l.netns != 0 && ns != 0 && ns != l.netns {
		return
	}
	l.agg.Apply(ev, now)
	l.rec.Record(ev, now)
}

// HandleEvent implements probe.Handler.
func (l *topLoop) HandleEvent(ev *events.Event) { l.apply(ev, time.Now()) }

// Drained implements probe.Handler: the ring buffer is empty, a good
// moment to apply the samplers' batches and publish a snapshot.
func (l *topLoop) Drained() {
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
				select {
				case l.spare <- b[:0]:
				default:
				}
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
func (l *topLoop) updateHealth() {
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

var _ probe.Handler = (*topLoop)(nil)

// minSpareBatch is the smallest batch worth recycling (reuseBatch).
const minSpareBatch = 256
