package main

import (
	"context"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/conntracer/conntracer/internal/export"
	"github.com/conntracer/conntracer/internal/kernel"
	"github.com/conntracer/conntracer/internal/top"
)

// topConfig is everything `tracer top`'s flags decide.
type topConfig struct {
	liveConfig
	once     bool
	json     bool
	interval time.Duration
	sortBy   export.Column
}

func parseTopFlags(args []string, stdout io.Writer) (*topConfig, error) {
	fs := newFlagSet("tracer top")
	cfg := &topConfig{liveConfig: *newLiveConfig()}
	var (
		output = fs.StringP("output", "o", "text", "with --once: text (a table) or json (one documented object)")
		sortBy = fs.String("sort", string(export.ColOpens), "initial sort column: "+export.ColumnNames())
	)
	fs.BoolVarP(&cfg.help, "help", "h", false, "show this help")
	addRecordFlags(fs, &cfg.liveConfig)
	fs.BoolVar(&cfg.once, "once", false, "watch for --interval, print one snapshot and exit")
	fs.DurationVar(&cfg.interval, "interval", time.Second, "refresh interval; with --once, how long to watch before printing")
	finish := addSessionFlags(fs, &cfg.liveConfig)
	addWebFlags(fs, &cfg.web, false)

	if err := fs.Parse(args); err != nil {
		return nil, usageError{err}
	}
	if cfg.help {
		fmt.Fprintf(stdout, "Usage: tracer top [flags]\n\nA live view of TCP connections per process and remote: opens and closes per\nsecond, sockets by state, TIME_WAIT, short-lived share, ephemeral port use;\npanels of conntrack fill per namespace, drops by reason, failed connects and\nUnix socket backlogs; and findings (pool_leak, close_wait_leak, no_reuse,\ntime_wait_pileup, port_exhaustion, fin_wait2_stuck, unix_backlog_overflow,\nconnect_refused, connect_timeouts, conntrack_table_full, conntrack_near_full,\nconntrack_long_timeouts, listen_overflow, drops) naming the process and the cause.\n\nKeys: s/S sort by next/previous column, r toggle process x remote, / filter,\nf every finding with its remedy (f again: back), q quit.\n\nWith --web.listen-address it also serves /metrics (see tracer serve --help).\n\nFlags:\n%s", fs.FlagUsages())
		return cfg, nil
	}
	if fs.NArg() > 0 {
		return nil, usagef("unexpected argument %q", fs.Arg(0))
	}
	switch *output {
	case "text":
	case "json":
		if !cfg.once {
			return nil, usagef("--output json needs --once (the live view is for terminals)")
		}
		cfg.json = true
	default:
		return nil, usagef("unknown output format %q: use text or json", *output)
	}
	if cfg.interval <= 0 {
		return nil, usagef("--interval must be positive")
	}
	col, ok := export.ParseColumn(*sortBy)
	if !ok {
		return nil, usagef("--sort %q: use one of %s", *sortBy, export.ColumnNames())
	}
	cfg.sortBy = col
	if err := finish(); err != nil {
		return nil, err
	}
	return cfg, cfg.web.validate()
}

// runTop is `tracer top`: the same probe as the stream, feeding the
// session's aggregator instead of a printer, with the terminal view (or,
// with --once, one snapshot printed at the end) reading its published
// snapshots.
func runTop(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := parseTopFlags(args, stdout)
	if err != nil || cfg.help {
		return err
	}
	return runLive(ctx, cfg, stdout, stderr)
}

// runLive runs `tracer top` or `tracer record` (no view) as cfg says.
func runLive(ctx context.Context, cfg *topConfig, stdout, stderr io.Writer) (err error) {
	l, err := openLive(cfg.session, cfg.probe, cfg.web, stderr)
	if err != nil {
		return err
	}
	defer func() {
		// The recording's last block is written on close: a failure
		// then fails the command too.
		if cerr := l.close(); err == nil {
			err = cerr
		}
	}()
	what := "Ctrl-C or q to stop"
	if cfg.noView {
		what = "Ctrl-C or SIGTERM to stop"
	}
	if cfg.once {
		what = fmt.Sprintf("printing one snapshot in %s", cfg.interval)
	}
	fmt.Fprintf(stderr, "tracer: top: tracing TCP connections [%s]; %d already open; %s\n",
		l.attachSummary(), l.sess.Existing(), what)

	var runCtx context.Context
	var cancel context.CancelFunc
	if cfg.once {
		runCtx, cancel = context.WithTimeout(ctx, cfg.interval)
	} else {
		runCtx, cancel = context.WithCancel(ctx)
	}
	defer cancel()

	var wg sync.WaitGroup
	if !cfg.once && !cfg.noView {
		ui := top.NewUI(l.sess.Snapshot, cfg.interval, cfg.sortBy)
		ui.Identities = l.sess.Identities()
		ui.NetNSNames = l.sess.NetNSNames()
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer cancel() // quitting the view stops the tracer
			if err := ui.Run(runCtx, stdout); err != nil {
				fmt.Fprintf(stderr, "tracer: terminal view: %v\n", err)
			}
		}()
	}
	runErr := l.run(runCtx)
	cancel()
	wg.Wait()
	if runErr != nil || !cfg.once {
		return runErr
	}

	// The event loop has returned: the document is made current to the
	// moment it is printed.
	snap, err := l.sess.Final()
	if err != nil {
		return err
	}
	if cfg.json {
		cgroups, _ := kernel.CgroupNames()
		doc := export.NewDocument(snap, cfg.interval, cgroups)
		doc.Name(snap, l.sess.Identities())
		doc.NameNetNS(l.sess.NetNSNames())
		return doc.WriteJSON(stdout)
	}
	_, err = io.WriteString(stdout, export.RenderText(snap, export.ViewOptions{Sort: cfg.sortBy, Width: 160, Identities: l.sess.Identities(), NetNSNames: l.sess.NetNSNames()}))
	return err
}
