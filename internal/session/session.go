// Package session runs the pipeline of a live tracer on one event loop.
//
// A Session is built around a probe the caller opened: it names drop
// reasons from the running kernel once, keeps the one table of
// connections that predate tracing (events.Owners), feeds the start-up
// scan of open connections to every stage, and then runs the event loop
// (probe.Run) with a handler that, depending on the Config, prints the
// stream (Printer), aggregates (the aggregator of `tracer top`, its
// samplers, the conntrack entry source, the recorder), or both: `tracer
// --web.listen-address` prints and serves /metrics from the same events,
// one pipeline per process.
//
// Goroutines: the event loop (the one calling Run, inside probe.Run) alone
// touches the owners table, the printer, the aggregator and the
// recorder. The sampler goroutine reads the kernel's tables and hands
// each round over as one batch on a channel, applied by the event loop
// when the ring buffer runs dry (Drained); so does the conntrack entry
// source. Snapshots are published through an atomic pointer that the
// terminal view and the Prometheus collector read.
//
// May import: internal/probe, internal/events, internal/aggregate,
// internal/kernel, internal/export, internal/record, internal/bootclock.
package session

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/conntracer/conntracer/internal/aggregate"
	"github.com/conntracer/conntracer/internal/events"
	"github.com/conntracer/conntracer/internal/export"
	"github.com/conntracer/conntracer/internal/kernel"
	"github.com/conntracer/conntracer/internal/probe"
)

// Config says what a session runs.
type Config struct {
	// Existing: scan the connections open before start-up (sock_diag in
	// every namespace, owners through /proc/PID/fd) and feed them to every
	// stage as KindConnExisting events, so that their close names the
	// owner and the aggregator counts them as open.
	Existing bool
	// NetNS keeps one network namespace (0: all). The probe filters in the
	// kernel; the aggregator drops the sampler events of other namespaces.
	NetNS uint32
	// Printer prints the stream of finished connections (nil: no stream).
	Printer *Printer
	// Aggregate runs the aggregator, its samplers, the conntrack entry
	// source and the recorder: `tracer top`, `serve`, `record`, and the
	// stream with /metrics.
	Aggregate  bool
	Intervals  Intervals
	Thresholds aggregate.Thresholds
	Conntrack  ConntrackConfig
	Record     RecordConfig
	// Identity: where container and pod names come from (identity.go).
	Identity IdentityConfig
}

// DefaultConfig is the configuration of `tracer top` without flags.
func DefaultConfig() Config {
	return Config{
		Existing:   true,
		Aggregate:  true,
		Intervals:  DefaultIntervals(),
		Thresholds: aggregate.DefaultThresholds(),
		Conntrack:  ConntrackConfig{Entries: ConntrackAuto, Refresh: 10 * time.Second},
		Record:     RecordConfig{FlightDir: ".", Keep: 5},
	}
}

// Session is the pipeline of one live tracer: see the package comment.
type Session struct {
	cfg      Config
	probe    *probe.Probe
	owners   *events.Owners
	drops    *events.DropNames
	handler  sink
	loop     *loop // nil unless cfg.Aggregate
	samplers []*sampler
	existing int
	// ct produces the conntrack entry events (nil: off); chosen at
	// start-up (ctentries.go).
	ct     conntrackEntrySource
	stderr io.Writer
	// ids names containers and pods by cgroup id (identity.go).
	ids *identities
	// said holds the warnings already printed: the start-up scan and two
	// samplers walk the same namespaces, and an unreadable one was
	// reported three times.
	said saidOnce
}

// saidOnce filters out warnings whose text was already let through.
// The start-up scan, the samplers' first rounds and the sampler goroutine
// use it, hence the lock.
type saidOnce struct {
	mu   sync.Mutex
	seen map[string]bool
}

// fresh returns the warnings not seen before, and marks them seen.
func (o *saidOnce) fresh(warnings []error) []error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.seen == nil {
		o.seen = map[string]bool{}
	}
	var out []error
	for _, w := range warnings {
		if k := w.Error(); !o.seen[k] {
			o.seen[k] = true
			out = append(out, w)
		}
	}
	return out
}

// sink is an event loop handler that also takes events applied at a
// given time: the start-up scan's.
type sink interface {
	probe.Handler
	applyAt(ev *events.Event, now time.Time)
}

// New builds the session around prb, which the caller opened and still
// owns: it names drops from the running kernel, chooses the conntrack
// entry source, opens the recording, feeds the start-up scan to every
// stage and, when aggregating, a first round of every sampler (the
// baselines that growth and counter deltas are measured from). It starts
// no goroutine.
func New(cfg Config, prb *probe.Probe, stderr io.Writer) (_ *Session, err error) {
	s := &Session{cfg: cfg, probe: prb, owners: events.NewOwners(), drops: loadDropNames(stderr), stderr: stderr}
	s.ids = newIdentities(cfg.Identity, stderr)
	if s.ids.v1 {
		s.owners.SetCgroupByPID(s.ids.res.CgroupOfPID) // identity.go
	}
	if p := cfg.Printer; p != nil {
		p.owners, p.drops = s.owners, s.drops
		p.setIdentities(s.ids.res.Lookup, s.ids.nets.Lookup)
	}
	if cfg.Aggregate {
		if err := s.openAggregate(); err != nil {
			return nil, err
		}
		defer func() {
			if err != nil {
				s.loop.rec.Close()
			}
		}()
	}
	switch {
	case cfg.Printer != nil && s.loop != nil:
		s.handler = tee{cfg.Printer, s.loop}
	case s.loop != nil:
		s.handler = s.loop
	case cfg.Printer != nil:
		s.handler = cfg.Printer
	default:
		return nil, errors.New("session: nothing to run: neither a printer nor the aggregator")
	}

	// Connections that predate the tracer: the probe is attached already,
	// so none falls in a gap between the scan and the tracing.
	if cfg.Existing {
		s.scanExisting()
	}
	if s.loop != nil {
		if err := s.loop.sampleAll(s.samplers, stderr); err != nil {
			return nil, err
		}
		s.loop.snap.Store(s.loop.agg.Snapshot())
	}
	releaseStartupMemory()
	return s, nil
}

// openAggregate makes the aggregating loop, its conntrack entry source,
// samplers and recorder.
func (s *Session) openAggregate() error {
	socks, err := s.probe.SocketSampler()
	if err != nil {
		return err
	}
	s.loop = newLoop(&s.cfg, s.owners, s.drops)
	if s.ct, err = chooseConntrackSource(s.cfg.Conntrack, s.probe, s.loop.batches); err != nil {
		return err
	}
	s.loop.ct = s.ct
	fmt.Fprintf(s.stderr, "tracer: conntrack entries: %s\n", conntrackSourceName(s.ct))
	s.samplers = samplers(&s.cfg, socks, s.ct, s.loop.spare, &s.said, s.loop.Snapshot)
	s.loop.probe = s.probe // the tracer's loss counters (counters.go)
	// The recorder sees every event the aggregator applies, the start-up
	// scan and first sampler round included (recorder.go).
	s.loop.rec, err = newRecorder(s.cfg.Record, s.stderr)
	if s.loop.rec != nil {
		s.loop.rec.names.lookup = s.ids.res.Lookup // names containers once (identity.go)
		s.loop.rec.names.netns = s.ids.nets.Info   // and network namespaces
	}
	return err
}

// scanExisting feeds the connections open now to the handler.
func (s *Session) scanExisting() {
	evs, warnings, err := kernel.ExistingConnections()
	if err != nil {
		fmt.Fprintf(s.stderr, "tracer: warning: connections open before start-up will show no owner: %v\n", err)
	}
	// Some namespaces or processes are always unreadable (a sandbox's
	// init, processes that exit mid-scan): one line, not a flood.
	if len(warnings) > 0 {
		fmt.Fprintf(s.stderr, "tracer: note: start-up scan skipped %d item(s), e.g. %v\n", len(warnings), warnings[0])
		s.said.fresh(warnings[:1])
	}
	now := time.Now()
	for i := range evs {
		s.handler.applyAt(&evs[i], now)
	}
	s.existing = len(evs)
}

// loadDropNames names drop reasons from the kernel's BTF and locations
// from /proc/kallsyms; without them drops show numbers, with a note.
func loadDropNames(stderr io.Writer) *events.DropNames {
	reasons, err := kernel.DropReasons()
	if err != nil {
		fmt.Fprintf(stderr, "tracer: note: drop reasons print as numbers: %v\n", err)
	}
	var sym func(uint64) string
	if ks, err := kernel.LoadKallsyms(); err != nil {
		fmt.Fprintf(stderr, "tracer: note: drop locations print as addresses: %v\n", err)
	} else {
		sym = ks.Symbolize
	}
	return events.NewDropNames(reasons, sym)
}

// Existing is how many connections the start-up scan found open.
func (s *Session) Existing() int { return s.existing }

// ConntrackEntries names the source of conntrack entry events in use
// ("ctnetlink events", "in-kernel (fentry)..."), "off", or "" for a
// session without the aggregator (the stream alone).
func (s *Session) ConntrackEntries() string {
	if s.loop == nil {
		return ""
	}
	return conntrackSourceName(s.ct)
}

// Snapshot returns the aggregate the event loop last published (nil
// without the aggregator); safe from any goroutine.
func (s *Session) Snapshot() *aggregate.Snapshot {
	if s.loop == nil {
		return nil
	}
	return s.loop.Snapshot()
}

// RegisterMetrics registers on reg the collector (metrics computed at
// scrape time from the last published snapshot) and the tracer's own
// health, which the event loop keeps current; the cgroup label's names
// are refreshed by a sampler. Call before Run.
func (s *Session) RegisterMetrics(reg *prometheus.Registry, opts export.MetricsOptions) error {
	if s.loop == nil {
		return errors.New("session: metrics need the aggregator")
	}
	// The identities' refresher keeps the cgroup tree's names (identity.go).
	opts.CgroupName = s.ids.cgroupPath
	opts.Identities = s.ids.res.Lookup
	opts.NetNSNames = s.ids.nets.Lookup
	if err := reg.Register(export.NewCollector(s.loop.Snapshot, opts)); err != nil {
		return fmt.Errorf("register collector: %w", err)
	}
	attached := map[string]string{}
	for _, a := range s.probe.Attachments() {
		attached[a.Hook] = string(a.Mode)
	}
	if _, ok := s.ct.(*kernel.CtEvents); ok && attached[probe.ConntrackHook] == "" {
		// The entries come from ctnetlink instead: not a hook that is off.
		attached[probe.ConntrackHook] = ConntrackCtnetlink
	}
	health, err := export.NewHealth(reg, attached)
	if err != nil {
		return fmt.Errorf("register self-metrics: %w", err)
	}
	s.loop.health = health
	if err := reg.Register(newMissesCollector(s.probe)); err != nil { // counters.go
		return fmt.Errorf("register recursion misses: %w", err)
	}
	return nil
}

// Health is the self-instrumentation RegisterMetrics made (nil before):
// its Progress tells a health check whether the event loop moves.
func (s *Session) Health() *export.Health {
	if s.loop == nil {
		return nil
	}
	return s.loop.health
}

// Run runs the event loop until ctx is done, with the sampler goroutine,
// the conntrack entry source and each of beside (e.g. the metrics
// server) on goroutines of their own; a failing beside stops the
// session. It returns when all have stopped: the event loop's error
// first, else the first of beside's.
func (s *Session) Run(ctx context.Context, beside ...func(context.Context) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	if s.loop != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runSamplers(ctx, s.samplers, s.loop.batches, s.probe.Wake, s.stderr)
		}()
	}
	if s.ct != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.ct.Run(ctx); err != nil {
				fmt.Fprintf(s.stderr, "tracer: warning: conntrack entries: %v\n", err)
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.ids.run(ctx)
	}()
	besideErrs := make([]error, len(beside))
	for i, run := range beside {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if besideErrs[i] = run(ctx); besideErrs[i] != nil {
				cancel()
			}
		}()
	}
	runErr := s.probe.Run(ctx, s.handler)
	cancel()
	wg.Wait()
	if s.loop != nil {
		// The loop is this goroutine's again: apply what the samplers
		// left waiting and the tracer's loss counters as of now, so that
		// a recording ends with them (the periodic ones can be a
		// counters interval old).
		s.loop.Drained()
		s.loop.tracerCounters(time.Now(), true)
	}
	if runErr != nil {
		return runErr
	}
	for _, err := range besideErrs {
		if err != nil {
			return err
		}
	}
	return nil
}

// Final makes the aggregate current to now and returns it: the batches
// still waiting (conntrack entry events) and one more round of every
// sampler are applied on the calling goroutine. Call after Run returned
// (the event loop's state is then the caller's): `tracer top --once`.
func (s *Session) Final() (*aggregate.Snapshot, error) {
	if s.loop == nil {
		return nil, errors.New("session: no aggregator")
	}
	s.loop.Drained()
	if err := s.loop.sampleAll(s.samplers, s.stderr); err != nil {
		return nil, err
	}
	return s.loop.agg.Snapshot(), nil
}

// RecordErr is the first write failure of the recording or of a flight
// dump (nil: none so far): the caller ends non-zero.
func (s *Session) RecordErr() error {
	if s.loop == nil {
		return nil
	}
	return s.loop.rec.Err()
}

// Close closes the recording, if any, and returns its first write
// failure. The probe stays the caller's. Idempotent.
func (s *Session) Close() error {
	if s.loop == nil {
		return nil
	}
	return s.loop.rec.Close()
}
