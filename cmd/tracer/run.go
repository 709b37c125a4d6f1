package main

import (
	"context"
	"fmt"
	"io"

	"github.com/conntracer/conntracer/internal/bootclock"
	"github.com/conntracer/conntracer/internal/export"
	"github.com/conntracer/conntracer/internal/probe"
	"github.com/conntracer/conntracer/internal/session"
	"github.com/conntracer/conntracer/internal/version"
)

// run is the whole program: the subcommand args name, or without one the
// stream of one line per finished connection.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
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
		case "--version", "version":
			_, err := fmt.Fprintln(stdout, version.Get())
			return err
		}
	}
	return runStream(ctx, args, stdout, stderr)
}

// runStream is plain `tracer`: load, attach, print until cancelled or
// --duration elapses, and summarise. With --web.listen-address the same
// event loop also aggregates for /metrics (one session, one owners table).
func runStream(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := parseFlags(args, stdout)
	if err != nil || cfg.help {
		return err
	}
	if cfg.duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cfg.duration)
		defer cancel()
	}

	printer := session.NewPrinter(export.NewStream(stdout, cfg.format, export.Clock(bootclock.ToWall())), cfg.filter)
	printer.PrintRoutine(cfg.routine)
	scfg := session.Config{Existing: cfg.existing, NetNS: cfg.filter.NetNS, Printer: printer}
	if cfg.web.listen != "" {
		scfg = session.DefaultConfig()
		scfg.Existing, scfg.NetNS, scfg.Printer = cfg.existing, cfg.filter.NetNS, printer
	}
	scfg.Identity = cfg.identity
	l, err := openLive(scfg, cfg.probe, cfg.web, stderr)
	if err != nil {
		return err
	}
	defer l.close()
	fmt.Fprintf(stderr, "tracer: tracing TCP connections [%s]; %d already open; Ctrl-C to stop\n",
		l.attachSummary(), l.sess.Existing())

	runErr := l.run(ctx)
	if err := printer.Close(); err != nil && runErr == nil {
		runErr = fmt.Errorf("write output: %w", err)
	}
	n := printer.Counts()
	st := l.probe.Stats()
	missed, missedBy := recursionMisses(l.probe)
	if _, unseen, err := l.probe.UnseenClosesByObject(); err == nil && unseen > 0 {
		missed += unseen
		missedBy += fmt.Sprintf("; %d closes that reached no program, found when their address was reused", unseen)
	}
	fmt.Fprintf(stderr, "tracer: %d connections printed, %d filtered out; %d records read, %d lost in the kernel, %d state changes not seen (programs skipped by the kernel, recursion%s), %d undecodable\n",
		n.Connections, n.Filtered, st.Records, st.Lost, missed, missedBy, st.BadRecords)
	if !cfg.probe.NoConnect {
		fmt.Fprintf(stderr, "tracer: %d failed connect() calls printed", n.ConnectFailures)
		if n.RoutineConnectFailures > 0 {
			fmt.Fprintf(stderr, ", %d routine ones counted only (Unix ENOENT, nscd/syslog refused: --connect-routine prints them)", n.RoutineConnectFailures)
		}
		fmt.Fprintln(stderr)
	}
	if unsent, err := l.probe.UnsentDropRecords(); err == nil && (n.Drops > 0 || unsent > 0) {
		fmt.Fprintf(stderr, "tracer: %d drops printed, %d more counted but not printed (--drop-records-per-sec)\n", n.Drops, unsent)
	}
	if st.Lost > 0 {
		fmt.Fprintf(stderr, "tracer: the ring buffer overflowed: raise --ring-buffer-bytes (now %d) or narrow the filters\n", cfg.probe.RingBufferBytes)
	}
	return runErr
}

// recursionMisses sums the state changes no program saw (runs the kernel
// skipped that no rescuer handled) for the summary, naming each program
// that missed any, with how many its rescuer handled.
func recursionMisses(p *probe.Probe) (total uint64, by string) {
	progs, err := p.RecursionMisses()
	if err != nil {
		return 0, fmt.Sprintf(": unreadable, %v", err)
	}
	for _, pm := range progs {
		switch {
		case pm.Misses == 0:
		case pm.Rescuer:
			by += fmt.Sprintf(", %s/%s %d skipped (a rescuer: loses nothing itself)", pm.Object, pm.Program, pm.Misses)
		case pm.Rescued > 0:
			total += pm.Unhandled()
			by += fmt.Sprintf(", %s/%s %d skipped, %d of them rescued", pm.Object, pm.Program, pm.Misses, pm.Rescued)
		default:
			total += pm.Unhandled()
			by += fmt.Sprintf(", %s/%s %d skipped", pm.Object, pm.Program, pm.Misses)
		}
	}
	return total, by
}
