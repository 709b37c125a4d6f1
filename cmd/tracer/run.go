package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/conntracer/conntracer/internal/bootclock"
	"github.com/conntracer/conntracer/internal/events"
	"github.com/conntracer/conntracer/internal/export"
	"github.com/conntracer/conntracer/internal/kernel"
	"github.com/conntracer/conntracer/internal/probe"
)

// run is the whole program once flags are parsed: load, attach, read until
// cancelled or --duration elapses, and summarise.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	// Subcommands; without one, tracer streams one line per connection.
	if len(args) > 0 {
		switch args[0] {
		case "top":
			return runTop(ctx, args[1:], stdout, stderr)
		case "record":
			return runRecord(ctx, args[1:], stdout, stderr)
		case "report":
			return runReport(args[1:], stdout, stderr)
		case "export":
			return runExport(args[1:], stdout, stderr)
		case "serve":
			return runServe(ctx, args[1:], stdout, stderr)
		}
	}
	cfg, err := parseFlags(args, stdout)
	if err != nil {
		return err
	}
	if cfg.help {
		return nil
	}
	if cfg.duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cfg.duration)
		defer cancel()
	}

	probe, err := probe.Open(cfg.probe)
	if err != nil {
		return fmt.Errorf("start tracing: %w", err)
	}
	defer probe.Close()
	for _, n := range probe.Notes() {
		fmt.Fprintf(stderr, "tracer: note: %s\n", n)
	}

	clock := export.Clock(bootclock.ToWall())
	p := &pipeline{
		owners: events.NewOwners(),
		drops:  dropNames(stderr),
		filter: cfg.filter,
		stream: export.NewStream(stdout, cfg.format, clock),
	}

	// Connections that predate the tracer: attach first, then look, so
	// that none falls in a gap between the two.
	existing := 0
	if cfg.existing {
		evs, warnings, err := kernel.ExistingConnections()
		if err != nil {
			fmt.Fprintf(stderr, "tracer: warning: connections open before start-up will show no owner: %v\n", err)
		}
		// Some namespaces or processes are always unreadable (a sandbox's
		// init, processes that exit mid-scan): one line, not a flood.
		if len(warnings) > 0 {
			fmt.Fprintf(stderr, "tracer: note: start-up scan skipped %d item(s), e.g. %v\n", len(warnings), warnings[0])
		}
		for i := range evs {
			p.HandleEvent(&evs[i])
		}
		existing = len(evs)
	}

	fmt.Fprintf(stderr, "tracer: tracing TCP connections [%s]; %d already open; Ctrl-C to stop\n",
		attachSummary(probe.Attachments()), existing)
	releaseStartupMemory()

	var runErr error
	if cfg.web.listen != "" {
		sess, err := streamWithMetrics(cfg, probe, p, stderr)
		if err != nil {
			return err
		}
		runErr = sess.run(ctx, stderr)
	} else {
		runErr = probe.Run(ctx, p)
	}
	if err := p.stream.Flush(); err != nil && p.writeErr == nil {
		p.writeErr = err
	}
	if p.writeErr != nil && runErr == nil {
		runErr = fmt.Errorf("write output: %w", p.writeErr)
	}
	st := probe.Stats()
	fmt.Fprintf(stderr, "tracer: %d connections printed, %d filtered out; %d records read, %d lost in the kernel, %d undecodable\n",
		p.printed, p.filtered, st.Records, st.Lost, st.BadRecords)
	if !cfg.probe.NoConnect {
		fmt.Fprintf(stderr, "tracer: %d failed connect() calls printed\n", p.connectFailures)
	}
	if unsent, err := probe.UnsentDropRecords(); err == nil && (p.dropsPrinted > 0 || unsent > 0) {
		fmt.Fprintf(stderr, "tracer: %d drops printed, %d more counted but not printed (--drop-records-per-sec)\n", p.dropsPrinted, unsent)
	}
	if st.Lost > 0 {
		fmt.Fprintf(stderr, "tracer: the ring buffer overflowed: raise --ring-buffer-bytes (now %d) or narrow the filters\n", cfg.probe.RingBufferBytes)
	}
	return runErr
}

// dropNames names drop reasons from the kernel's BTF and locations from
// /proc/kallsyms; without them drops print numbers, with a note.
func dropNames(stderr io.Writer) *events.DropNames {
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

func attachSummary(as []probe.Attachment) string {
	parts := make([]string, len(as))
	for i, a := range as {
		parts[i] = a.String()
	}
	return strings.Join(parts, ", ")
}

// pipeline is the event loop's handler: enrich, filter, print. It runs on
// the reader's goroutine only.
type pipeline struct {
	owners   *events.Owners
	drops    *events.DropNames
	filter   events.Filter
	stream   *export.Stream
	printed  uint64
	filtered uint64
	// connectFailures counts the failed connect() calls printed (a line
	// may stand for several).
	connectFailures uint64
	writeErr        error // first output error, reported when the loop ends

	dropsPrinted uint64
}

// HandleEvent implements probe.Handler.
func (p *pipeline) HandleEvent(ev *events.Event) {
	p.owners.Apply(ev)
	if ev.Kind == events.KindConnect {
		p.handleConnect(ev)
		return
	}
	p.drops.Apply(ev)
	if ev.Kind == events.KindDrop {
		// The kernel applied the namespace filter; drops have no
		// connection to match the other filters against.
		p.dropsPrinted++
		if err := p.stream.Print(ev); err != nil && p.writeErr == nil {
			p.writeErr = err
		}
		return
	}
	if ev.Kind != events.KindConnClosed {
		return
	}
	if !p.filter.Match(ev) {
		p.filtered++
		return
	}
	p.printed++
	if err := p.stream.Print(ev); err != nil && p.writeErr == nil {
		p.writeErr = err
	}
}

// handleConnect prints failed connect() calls that pass the filters.
func (p *pipeline) handleConnect(ev *events.Event) {
	c := &ev.Connect
	if !c.Failed() {
		return
	}
	if !p.filter.MatchConnect(c) {
		return
	}
	p.connectFailures += c.Count
	if err := p.stream.Print(ev); err != nil && p.writeErr == nil {
		p.writeErr = err
	}
}

// Drained implements probe.Handler: flush lines while the kernel is quiet.
func (p *pipeline) Drained() {
	if err := p.stream.Flush(); err != nil && p.writeErr == nil {
		p.writeErr = err
	}
}

var _ probe.Handler = (*pipeline)(nil)
