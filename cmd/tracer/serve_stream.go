package main

import (
	"github.com/conntracer/conntracer/internal/aggregate"

	"io"
	"time"

	"github.com/conntracer/conntracer/internal/events"
	"github.com/conntracer/conntracer/internal/probe"
)

// streamWithMetrics makes plain `tracer` serve /metrics too: the stream's
// pipeline and the aggregating loop of `tracer top` see the same events
// on the same event loop, and the session's samplers and metrics server
// run beside it. The caller keeps owning probe.
func streamWithMetrics(cfg *config, probe *probe.Probe, p *pipeline, stderr io.Writer) (*session, error) {
	tcfg := &topConfig{
		sample:     time.Second,
		reconcile:  5 * time.Second,
		netnsEvery: time.Second,
		unixEvery:  2 * time.Second,

		countersEvery: 10 * time.Second,
		ctEntries:     ctEntriesAuto,
		netns:         cfg.filter.NetNS,
		th:            aggregate.DefaultThresholds(),
		probe:         cfg.probe,
		web:           cfg.web,
	}
	s, err := newSession(tcfg, probe, stderr)
	if err != nil {
		return nil, err
	}
	s.handler = teeHandler{p, s.loop}
	return s, nil
}

// teeHandler hands every event to the stream first, then the aggregate.
type teeHandler struct {
	stream *pipeline
	agg    *topLoop
}

// HandleEvent implements probe.Handler.
func (h teeHandler) HandleEvent(ev *events.Event) {
	h.stream.HandleEvent(ev)
	h.agg.HandleEvent(ev)
}

// Drained implements probe.Handler.
func (h teeHandler) Drained() {
	h.stream.Drained()
	h.agg.Drained()
}
