package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/conntracer/conntracer"
	"github.com/conntracer/conntracer/internal/events"
	"github.com/conntracer/conntracer/internal/kernel"
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
	probe, err := conntracer.Open(cfg.probe)
	if err != nil {
		return fmt.Errorf("start tracing: %w", err)
	}
	defer probe.Close()
	sampler, err := probe.SocketSampler()
	if err != nil {
		return err
	}

	loop := newTopLoop(cfg)
	existing := 0
	if cfg.existing {
		evs, _, err := kernel.ExistingConnections()
		if err != nil {
			fmt.Fprintf(stderr, "tracer: warning: connections open before start-up will show no owner: %v\n", err)
		}
		now := time.Now()
		for i := range evs {
			loop.apply(&evs[i], now)
		}
		existing = len(evs)
	}
	// A first round of each sampler before saying "tracing": the
	// baseline that growth (pool_leak) is measured from.
	now := time.Now()
	if _, err := sampler.Sample(func(ev *events.Event) { loop.apply(ev, now) }); err != nil {
		return err
	}
	if cfg.reconcile > 0 {
		evs, _, err := kernel.TimeWaitDump()
		if err != nil {
			fmt.Fprintf(stderr, "tracer: warning: TIME_WAIT counts not reconciled with the kernel: %v\n", err)
		}
		for i := range evs {
			loop.apply(&evs[i], now)
		}
	}
	loop.snap.Store(loop.agg.Snapshot())
	what := "Ctrl-C or q to stop"
	if cfg.once {
		what = fmt.Sprintf("printing one snapshot in %s", cfg.interval)
	}
	fmt.Fprintf(stderr, "tracer: top: tracing TCP connections [%s]; %d already open; %s\n",
		attachSummary(probe.Attachments()), existing, what)

	runCtx := ctx
	var cancel context.CancelFunc
	if cfg.once {
		runCtx, cancel = context.WithTimeout(ctx, cfg.interval)
	} else {
		runCtx, cancel = context.WithCancel(ctx)
	}
	defer cancel()

	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		runSamplers(runCtx, sampler, cfg, loop.batches, stderr)
	}()
	var ui *top.UI
	if !cfg.once {
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
	runErr := probe.Run(runCtx, loop)
	cancel()
	wg.Wait()
	if runErr != nil {
		return runErr
	}
	if !cfg.once {
		return nil
	}

	// The event loop has returned: this goroutine may apply events now.
	// A last sample of each kind makes the document current to the moment
	// it is printed.
	now = time.Now()
	if _, err := sampler.Sample(func(ev *events.Event) { loop.apply(ev, now) }); err != nil {
		return err
	}
	if cfg.reconcile > 0 {
		evs, _, err := kernel.TimeWaitDump()
		if err != nil {
			fmt.Fprintf(stderr, "tracer: warning: TIME_WAIT not reconciled: %v\n", err)
		}
		for i := range evs {
			loop.apply(&evs[i], now)
		}
	}
	snap := loop.agg.Snapshot()
	if cfg.json {
		cgroups, _ := kernel.CgroupNames()
		return top.NewDocument(snap, cfg.interval, cgroups).WriteJSON(stdout)
	}
	_, err = io.WriteString(stdout, top.RenderText(snap, top.ViewOptions{Sort: cfg.sortBy, Width: 160}))
	return err
}

// topLoop is the event loop's handler for `tracer top`.
type topLoop struct {
	owners  *events.Owners
	netns   uint32
	agg     *events.Aggregator
	batches chan []events.Event
	snap    atomic.Pointer[events.Snapshot]
}

func newTopLoop(cfg *topConfig) *topLoop {
	l := &topLoop{
		owners:  events.NewOwners(),
		netns:   cfg.netns,
		agg:     events.NewAggregator(cfg.th),
		batches: make(chan []events.Event, 2),
	}
	l.snap.Store(l.agg.Snapshot())
	return l
}

// Snapshot returns the last published snapshot; safe from any goroutine.
func (l *topLoop) Snapshot() *events.Snapshot { return l.snap.Load() }

func (l *topLoop) apply(ev *events.Event, now time.Time) {
	l.owners.Apply(ev)
	// Events about one namespace are filtered; those ending a round of
	// every namespace (namespace 0) always pass.
	if l.netns != 0 && ev.Conn.NetNS != 0 && ev.Conn.NetNS != l.netns {
		return
	}
	l.agg.Apply(ev, now)
}

// HandleEvent implements conntracer.Handler.
func (l *topLoop) HandleEvent(ev *events.Event) { l.apply(ev, time.Now()) }

// Drained implements conntracer.Handler: the ring buffer is empty, a good
// moment to apply the samplers' batches and publish a snapshot.
func (l *topLoop) Drained() {
	for {
		select {
		case b := <-l.batches:
			now := time.Now()
			sampled := false
			for i := range b {
				l.apply(&b[i], now)
				sampled = sampled || b[i].Kind == events.KindSockSampleDone
			}
			if sampled {
				l.snap.Store(l.agg.Snapshot())
			}
		default:
			return
		}
	}
}

var _ conntracer.Handler = (*topLoop)(nil)

// runSamplers reads the kernel's socket table every cfg.sample and dumps
// TIME_WAIT sockets every cfg.reconcile, handing each round to the event
// loop as one batch.
func runSamplers(ctx context.Context, s *conntracer.SocketSampler, cfg *topConfig, out chan<- []events.Event, stderr io.Writer) {
	sampleT := time.NewTicker(cfg.sample)
	defer sampleT.Stop()
	var reconcileC <-chan time.Time
	if cfg.reconcile > 0 {
		t := time.NewTicker(cfg.reconcile)
		defer t.Stop()
		reconcileC = t.C
	}
	warned := false
	send := func(b []events.Event) bool {
		select {
		case out <- b:
			return true
		case <-ctx.Done():
			return false
		}
	}
	dumpTW := func() bool {
		evs, _, err := kernel.TimeWaitDump()
		if err != nil && !warned {
			warned = true
			fmt.Fprintf(stderr, "tracer: warning: TIME_WAIT counts not reconciled with the kernel: %v\n", err)
		}
		return len(evs) == 0 || send(evs)
	}
	last := 0 // size of the previous round: rounds change little
	sample := func() bool {
		b := make([]events.Event, 0, last+last/8+1)
		_, err := s.Sample(func(ev *events.Event) { b = append(b, *ev) })
		last = len(b)
		if err != nil && !errors.Is(err, context.Canceled) {
			fmt.Fprintf(stderr, "tracer: warning: %v\n", err)
		}
		return send(b)
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-sampleT.C:
			if !sample() {
				return
			}
		case <-reconcileC:
			if !dumpTW() {
				return
			}
		}
	}
}
