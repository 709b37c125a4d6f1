package session

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/conntracer/conntracer/internal/aggregate"
	"github.com/conntracer/conntracer/internal/bootclock"
	"github.com/conntracer/conntracer/internal/events"
	"github.com/conntracer/conntracer/internal/kernel"
	"github.com/conntracer/conntracer/internal/probe"
)

// Intervals are how often the samplers read the kernel's tables (0: never,
// except Sample, which must be positive).
type Intervals struct {
	Sample    time.Duration // the socket table (the probe's socks map)
	Reconcile time.Duration // the TIME_WAIT dump of every namespace
	NetNS     time.Duration // conntrack statistics and listen overflows per namespace
	Unix      time.Duration // listening Unix sockets
	// Counters: nstat TCP counters, sockstat and the tracer's loss
	// counters.
	Counters time.Duration
}

// DefaultIntervals are the intervals of `tracer top` without flags.
func DefaultIntervals() Intervals {
	return Intervals{Sample: time.Second, Reconcile: 5 * time.Second, NetNS: time.Second, Unix: 2 * time.Second, Counters: 10 * time.Second}
}

// sampler reads one of the kernel's tables and turns it into a round of
// events for the aggregator, on its own interval. Every sampler of the
// session is one of these: runSamplers calls them on the sampler
// goroutine and hands each round to the event loop as one batch;
// sampleAll calls them directly before the loop runs and after it
// returned.
type sampler struct {
	name  string
	every time.Duration // 0: off
	read  func() ([]events.Event, error)
	// required: a failure of the first round stops the session (the
	// aggregate would be empty); other samplers only warn.
	required bool
	warned   bool
}

// round reads the sampler once. A failure is reported once per sampler:
// the same error every second says nothing new; what was read is still
// used. The error is returned only for a required sampler.
func (s *sampler) round(stderr io.Writer) ([]events.Event, error) {
	evs, err := s.read()
	if err == nil || errors.Is(err, context.Canceled) {
		return evs, nil
	}
	if s.required {
		return evs, fmt.Errorf("%s: %w", s.name, err)
	}
	if !s.warned {
		s.warned = true
		fmt.Fprintf(stderr, "tracer: warning: %s: %v\n", s.name, err)
	}
	return evs, nil
}

// sampleAll applies one round of every sampler that is on, in list order,
// on the calling goroutine: before the event loop starts (the baselines)
// and after it returned (the document of --once is current to the moment
// it is printed).
func (l *loop) sampleAll(samplers []*sampler, stderr io.Writer) error {
	for _, s := range samplers {
		if s.every <= 0 {
			continue
		}
		evs, err := s.round(stderr)
		if err != nil {
			return err
		}
		now := time.Now()
		for i := range evs {
			l.apply(&evs[i], now)
		}
	}
	l.tracerCounters(time.Now(), true)
	return nil
}

// samplers lists the samplers of the session, the socket table last: its
// round ends with KindSockSampleDone, on which the aggregator evaluates the
// findings and the loop publishes a snapshot, so the other tables read in
// the same pass are already in.
func samplers(cfg *Config, socks *probe.SocketSampler, ct conntrackEntrySource, spare chan []events.Event, said *saidOnce, published func() *aggregate.Snapshot) []*sampler {
	// One listing of the namespaces serves every sampler: those due in
	// the same pass share it, and it is kept up to date by change
	// (kernel.NetNSList).
	netns := kernel.NewNetNSList()
	nsSampler := kernel.NewNetNSSampler()
	nsSampler.OnlyNetNS = cfg.NetNS
	nsSampler.NetNS = netns
	unixSampler := &kernel.UnixSampler{NetNS: netns}
	if w, ok := ct.(kernel.ConntrackNSWatcher); ok {
		nsSampler.Watcher = w // a namespace is followed from its first sample on
	}
	// Size of the previous socket round: rounds change little, so the
	// next batch is sized once. (A TIME_WAIT dump sizes its batch from
	// each namespace's sockstat count, and only if it dumps at all: most
	// rounds dump nothing, and a batch sized from the last dump, 14 MiB
	// for 10,000 sockets, was allocated every 5 s for nothing.)
	last := 0
	tw := timeWaitGate{only: cfg.NetNS, every: fullDumpRounds * cfg.Intervals.Reconcile, published: published}
	return []*sampler{
		{name: "conntrack and listen overflows", every: cfg.Intervals.NetNS, read: func() ([]events.Event, error) {
			now := bootclock.Now()
			evs, warnings := nsSampler.Sample(now)
			return evs, errors.Join(said.fresh(warnings)...)
		}},
		{name: "unix listeners", every: cfg.Intervals.Unix, read: func() ([]events.Event, error) {
			evs, _, err := unixSampler.Sample()
			return evs, err
		}},
		{name: "TIME_WAIT counts not reconciled with the kernel", every: cfg.Intervals.Reconcile, read: func() ([]events.Event, error) {
			evs, _, err := netns.TimeWaitDump(spareBatch(spare), tw.round(time.Now()))
			if len(evs) == 0 && cap(evs) > 0 { // nothing dumped: the batch goes back
				select {
				case spare <- evs:
				default:
				}
			}
			return evs, err
		}},
		{name: "kernel TCP counters and sockstat", every: cfg.Intervals.Counters, read: func() ([]events.Event, error) {
			now := bootclock.Now()
			evs, warnings := netns.KernelCounters(cfg.NetNS, now)
			return evs, errors.Join(said.fresh(warnings)...)
		}},
		{name: "socket table", every: cfg.Intervals.Sample, required: true, read: func() ([]events.Event, error) {
			b := reuseBatch(spare, last+last/8+1)
			_, err := socks.Sample(func(ev *events.Event) { b = append(b, *ev) })
			last = len(b)
			return b, err
		}},
	}
}

// runSamplers calls each sampler on its own interval and hands every
// round to the event loop as one batch, until ctx is done, and calls handed
// after each (the loop applies batches when it wakes, and an idle loop
// waits long: probe.Probe.Wake). Samplers due at the same moment run in
// list order.
func runSamplers(ctx context.Context, samplers []*sampler, out chan<- []events.Event, handed func(), stderr io.Writer) {
	next := make([]time.Time, len(samplers))
	start := time.Now()
	for i, s := range samplers {
		next[i] = start.Add(s.every)
	}
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		var wake time.Time
		for i, s := range samplers {
			if s.every > 0 && (wake.IsZero() || next[i].Before(wake)) {
				wake = next[i]
			}
		}
		if wake.IsZero() {
			return // nothing to sample
		}
		t.Reset(time.Until(wake))
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		for i, s := range samplers {
			if s.every <= 0 || now.Before(next[i]) {
				continue
			}
			// A slow round skips the ticks it overran, like time.Ticker.
			if next[i] = next[i].Add(s.every); next[i].Before(now) {
				next[i] = now.Add(s.every)
			}
			b, err := s.round(stderr)
			if err != nil {
				fmt.Fprintf(stderr, "tracer: warning: %v\n", err)
			}
			if len(b) == 0 {
				continue
			}
			select {
			case out <- b:
				handed()
			case <-ctx.Done():
				return
			}
		}
	}
}

// reuseBatch returns an empty batch with room for n events: one the event
// loop has finished with (loop.spare) if it is big enough, else a new
// one. The socket table and the TIME_WAIT dump hand over tens of
// thousands of events a round under churn (1.4 KB each); recycling their
// batches spares the allocation, the growth copies and the garbage
// collector's scan of them, which a profile of `tracer serve` under churn
// showed as most of its CPU.
func reuseBatch(spare chan []events.Event, n int) []events.Event {
	select {
	case b := <-spare:
		// One far bigger than needed is dropped, not reused: the churn
		// that filled it is over, and a small round would keep it (and
		// its MiB) alive for good.
		if cap(b) >= n && cap(b) <= 4*n+minSpareBatch {
			return b[:0]
		}
	default:
	}
	return make([]events.Event, 0, n)
}

// spareBatch returns an empty batch the event loop has finished with, or
// nil if there is none.
func spareBatch(spare chan []events.Event) []events.Event {
	select {
	case b := <-spare:
		return b[:0]
	default:
		return nil
	}
}

// fullDumpRounds: a namespace whose sockstat agrees with the tracer is
// still dumped every fullDumpRounds reconcile intervals (a minute by
// default, the TIME_WAIT length), which puts right an attribution that a
// matching count would hide.
const fullDumpRounds = 12

// timeWaitGate decides which namespaces a TIME_WAIT round dumps: those
// whose sockstat tw count differs from the timewait sockets the tracer
// holds there (the last published snapshot), and those not dumped for
// every, and those with a socket pending in substate FIN_WAIT2 (only a
// dump shows it turned TIME_WAIT, and the census counts it from then on).
// A dump lists every timewait socket of the namespace, so its cost
// grows with the pile-up it counts (up to tcp_max_tw_buckets); the check
// costs one read of sockstat. Close records, reuse and the kernel's 60 s
// keep the census between dumps, so a namespace where nothing changed is
// not dumped again, and a disagreement (a record still in flight, an
// expiry not yet swept, a socket the tracer never saw) is dumped as often
// as before.
type timeWaitGate struct {
	only      uint32 // --netns: the other namespaces are filtered out anyway
	every     time.Duration
	published func() *aggregate.Snapshot
	dumped    map[uint32]time.Time // last dump per namespace
	next      map[uint32]time.Time // this round's, swapped in: gone namespaces drop out
}

// round returns the TimeWaitDump need function of one round at now.
func (g *timeWaitGate) round(now time.Time) func(ino uint32, tw int) bool {
	g.dumped, g.next = g.next, g.dumped
	if g.next == nil {
		g.next = make(map[uint32]time.Time)
	}
	clear(g.next)
	var held, pending map[uint32]uint32
	if g.published != nil {
		if s := g.published(); s != nil {
			held, pending = s.TimeWait.Sockets, s.TimeWait.Pending
		}
	}
	return func(ino uint32, tw int) bool {
		if g.only != 0 && ino != g.only {
			return false
		}
		last, ok := g.dumped[ino]
		if !ok || tw < 0 || held == nil || uint32(tw) != held[ino] || pending[ino] > 0 || now.Sub(last) >= g.every {
			g.next[ino] = now
			return true
		}
		g.next[ino] = last
		return false
	}
}
