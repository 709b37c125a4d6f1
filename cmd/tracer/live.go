package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/conntracer/conntracer/internal/probe"
	"github.com/conntracer/conntracer/internal/session"
)

// live is a running tracer's wiring: the probe, the session around it
// and, when a listen address is set, the metrics server.
type live struct {
	probe   *probe.Probe
	sess    *session.Session
	metrics *metricsServer // nil without --web.listen-address
	stderr  io.Writer
}

// openLive loads and attaches the probe, builds the session (which feeds
// the start-up scan and the samplers' first round) and binds the metrics
// address.
func openLive(cfg session.Config, opts probe.Options, web webConfig, stderr io.Writer) (_ *live, err error) {
	prb, err := probe.Open(opts)
	if err != nil {
		return nil, fmt.Errorf("start tracing: %w", err)
	}
	// What Open chose and why, e.g. "conntrack hooks: in-kernel (fentry)".
	for _, n := range prb.Notes() {
		fmt.Fprintf(stderr, "tracer: note: %s\n", n)
	}
	l := &live{probe: prb, stderr: stderr}
	defer func() {
		if err != nil {
			l.close()
		}
	}()
	if l.sess, err = session.New(cfg, prb, stderr); err != nil {
		return nil, err
	}
	if web.listen == "" {
		return l, nil
	}
	reg := prometheus.NewRegistry()
	if err := l.sess.RegisterMetrics(reg, web.metrics); err != nil {
		return nil, err
	}
	if l.metrics, err = listenMetrics(web, reg, stderr); err != nil {
		return nil, err
	}
	fmt.Fprintf(stderr, "tracer: serving metrics on %s/metrics\n", l.metrics.URL())
	return l, nil
}

// run runs the session, with the metrics server beside it, until ctx is
// done.
func (l *live) run(ctx context.Context) error {
	if l.metrics != nil {
		return l.sess.Run(ctx, l.metrics.Run)
	}
	return l.sess.Run(ctx)
}

// attachSummary says how each hook is attached, for the start-up line.
func (l *live) attachSummary() string {
	as := l.probe.Attachments()
	parts := make([]string, len(as))
	for i, a := range as {
		parts[i] = a.String()
		if a.Hook == probe.ConntrackHook && a.Mode == "" {
			// The in-kernel hooks are off, and a note said why; what
			// matters is where the entries come from instead ("off"
			// here read as if there were none, next to the note that
			// ctnetlink supplies them).
			if src := l.sess.ConntrackEntries(); src != "" {
				parts[i] = a.Hook + "=" + src
			}
		}
	}
	return strings.Join(parts, ", ")
}

// close closes the recording, then the probe.
func (l *live) close() {
	if l.sess != nil {
		if err := l.sess.Close(); err != nil {
			fmt.Fprintf(l.stderr, "tracer: closing the recording: %v\n", err)
		}
	}
	l.probe.Close()
}
