package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/conntracer/conntracer/internal/privdrop"
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
	l.metrics.serveHealth(l.sess.Health().Progress, stallAfter)
	fmt.Fprintf(stderr, "tracer: serving metrics on %s/metrics\n", l.metrics.URL())
	return l, nil
}

// run runs the session, with the metrics server beside it, until ctx is
// done. A recording that failed to write (full disk) fails the run, after
// the aggregate ran on to the end.
func (l *live) run(ctx context.Context) error {
	if ctx.Value(privilegeDropKey{}) != nil {
		if err := l.dropPrivileges(); err != nil {
			return err
		}
	}
	var err error
	if l.metrics != nil {
		err = l.sess.Run(ctx, l.metrics.Run)
	} else {
		err = l.sess.Run(ctx)
	}
	if err == nil {
		err = l.sess.RecordErr()
	}
	return err
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

// close closes the recording, then the probe. It returns the recording's
// failure (the recorder has said it on stderr already), for the exit.
func (l *live) close() error {
	var err error
	if l.sess != nil {
		err = l.sess.Close()
	}
	l.probe.Close()
	return err
}

// privilegeDropKey marks a context whose process is the tracer's own
// (main), which may give up its capabilities; a test calling run in its
// own process must keep them for the next test.
type privilegeDropKey struct{}

func withPrivilegeDrop(ctx context.Context) context.Context {
	return context.WithValue(ctx, privilegeDropKey{}, true)
}

// dropPrivileges gives up, now that the programs are attached and the
// start-up scan is done, every capability the rest does not need
// (internal/privdrop says which are kept and why) and sets no_new_privs.
func (l *live) dropPrivileges() error {
	if err := privdrop.Drop(); err != nil {
		return fmt.Errorf("drop privileges after attaching: %w", err)
	}
	fmt.Fprintf(l.stderr, "tracer: dropped every capability but %s; no_new_privs set\n", privdrop.Names())
	return nil
}
