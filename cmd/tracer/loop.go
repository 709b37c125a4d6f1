package main

import (
	"context"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/conntracer/conntracer/internal/events"
	"github.com/conntracer/conntracer/internal/export"
	"github.com/conntracer/conntracer/internal/kernel"
	"github.com/conntracer/conntracer/internal/probe"
)

// session is what `tracer top` and `tracer serve` share: the probe, the
// aggregating event loop (topLoop) and the samplers feeding it, and, when
// a listen address is given, the /metrics server reading the loop's
// published snapshots. There is one event loop and one sampler loop
// whatever shows the result.
type session struct {
	cfg      *topConfig
	probe    *probe.Probe
	loop     *topLoop
	samplers []*topSampler
	existing int
	// ct produces the conntrack entry events (nil: off); chosen at
	// start-up (ctentries.go).
	ct      conntrackEntrySource
	metrics *metricsServer // nil without --web.listen-address
	stderr  io.Writer
	// handler is what the event loop calls: the loop itself, or the
	// stream's pipeline teed with it (streamWithMetrics).
	handler probe.Handler
}

// openSession loads and attaches the probe, feeds the start-up snapshot
// and a first round of every sampler (the baselines that growth and
// counter deltas are measured from), and binds the metrics address.
func openSession(cfg *topConfig, stderr io.Writer) (*session, error) {
	prb, err := probe.Open(cfg.probe)
	if err != nil {
		return nil, fmt.Errorf("start tracing: %w", err)
	}
	// What Open chose and why, e.g. "conntrack hooks: in-kernel (fentry)".
	for _, n := range prb.Notes() {
		fmt.Fprintf(stderr, "tracer: note: %s\n", n)
	}
	s, err := newSession(cfg, prb, stderr)
	if err != nil {
		prb.Close()
		return nil, err
	}
	releaseStartupMemory()
	return s, nil
}

// newSession builds the session around a probe the caller opened and
// still owns.
func newSession(cfg *topConfig, probe *probe.Probe, stderr io.Writer) (_ *session, err error) {
	s := &session{cfg: cfg, probe: probe, stderr: stderr}
	socks, err := s.probe.SocketSampler()
	if err != nil {
		return nil, err
	}
	s.loop = newTopLoop(cfg, stderr)
	if s.ct, err = chooseConntrackSource(cfg, probe, s.loop.batches); err != nil {
		return nil, err
	}
	s.loop.ct = s.ct
	fmt.Fprintf(stderr, "tracer: conntrack entries: %s\n", conntrackSourceName(s.ct))
	s.samplers = topSamplers(cfg, socks, s.ct, s.loop.spare)
	s.loop.probe = probe // the tracer's loss counters (counters.go)
	s.handler = s.loop
	// The recorder sees every event the aggregator applies, the start-up
	// snapshot and first sampler round included (record_hook.go).
	if s.loop.rec, err = newLoopRecorder(cfg, stderr); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			s.loop.rec.Close()
		}
	}()
	if cfg.existing {
		evs, _, err := kernel.ExistingConnections()
		if err != nil {
			fmt.Fprintf(stderr, "tracer: warning: connections open before start-up will show no owner: %v\n", err)
		}
		now := time.Now()
		for i := range evs {
			s.loop.apply(&evs[i], now)
		}
		s.existing = len(evs)
	}
	if err := s.loop.sampleAll(s.samplers, stderr); err != nil {
		return nil, err
	}
	s.loop.snap.Store(s.loop.agg.Snapshot())
	if cfg.web.listen != "" {
		if err := s.openMetrics(stderr); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// openMetrics registers the collector (metrics computed from the last
// published snapshot at scrape time) and the tracer's own health on a
// fresh registry, and binds the listen address.
func (s *session) openMetrics(stderr io.Writer) error {
	reg := prometheus.NewRegistry()
	opts := s.cfg.web.metrics
	cgroups := &cgroupNames{}
	opts.CgroupName = cgroups.name
	// The cgroup tree changes rarely: a sampler refreshes the names.
	s.samplers = append([]*topSampler{{name: "cgroup names", every: 30 * time.Second, read: cgroups.refresh}}, s.samplers...)
	_, _ = cgroups.refresh()
	if err := reg.Register(export.NewCollector(s.loop.Snapshot, opts)); err != nil {
		return fmt.Errorf("register collector: %w", err)
	}
	attached := map[string]string{}
	for _, a := range s.probe.Attachments() {
		attached[a.Hook] = string(a.Mode)
	}
	health, err := export.NewHealth(reg, attached)
	if err != nil {
		return fmt.Errorf("register self-metrics: %w", err)
	}
	s.loop.health = health
	s.loop.probe = s.probe
	s.metrics, err = listenMetrics(s.cfg.web, reg, stderr)
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "tracer: serving metrics on %s/metrics\n", s.metricsURL())
	return nil
}

func (s *session) metricsURL() string {
	scheme := "http"
	if s.cfg.web.configFile != "" {
		scheme = "http(s)"
	}
	return scheme + "://" + s.metrics.Addr().String()
}

// run runs the event loop until ctx is done, with the sampler goroutine
// and, if on, the metrics server beside it; it returns when all have
// stopped.
func (s *session) run(ctx context.Context, stderr io.Writer) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		runSamplers(ctx, s.samplers, s.loop.batches, stderr)
	}()
	if s.ct != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.ct.Run(ctx); err != nil {
				fmt.Fprintf(stderr, "tracer: warning: conntrack entries: %v\n", err)
			}
		}()
	}
	var serveErr error
	if s.metrics != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if serveErr = s.metrics.Run(ctx); serveErr != nil {
				cancel() // a server that cannot serve stops the tracer
			}
		}()
	}
	runErr := s.probe.Run(ctx, s.handler)
	cancel()
	wg.Wait()
	if runErr != nil {
		return runErr
	}
	return serveErr
}

func (s *session) close() {
	if err := s.loop.rec.Close(); err != nil {
		fmt.Fprintf(s.stderr, "tracer: closing the recording: %v\n", err)
	}
	if s.probe != nil {
		s.probe.Close()
	}
}

// cgroupNames caches the cgroup tree's names for the cgroup label. The
// sampler goroutine refreshes it; scrapes read it.
type cgroupNames struct {
	mu    sync.Mutex
	names map[uint64]string
}

func (c *cgroupNames) refresh() ([]events.Event, error) {
	names, err := kernel.CgroupNames()
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.names = names
	c.mu.Unlock()
	return nil, nil
}

func (c *cgroupNames) name(id uint64) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.names[id]
}
