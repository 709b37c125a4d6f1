package main

import (
	"github.com/conntracer/conntracer/internal/aggregate"
	"github.com/conntracer/conntracer/internal/export"

	"fmt"
	"io"
	"time"

	"github.com/spf13/pflag"

	"github.com/conntracer/conntracer/internal/probe"
)

// topConfig is everything `tracer top`'s flags decide.
type topConfig struct {
	help       bool
	once       bool
	json       bool
	interval   time.Duration
	sample     time.Duration
	reconcile  time.Duration
	netnsEvery time.Duration
	unixEvery  time.Duration
	// countersEvery: nstat TCP counters, sockstat and the tracer's loss
	// counters (0: never).
	countersEvery time.Duration
	existing      bool
	// ctEntries picks the conntrack entry source (ctentries.go);
	// ctReadBuffer sizes its ctnetlink event sockets (0: the default).
	ctEntries    string
	ctReadBuffer int
	ctRefresh    time.Duration
	netns        uint32
	sortBy       export.Column
	th           aggregate.Thresholds
	probe        probe.Options
	recordFlags
	web webConfig // /metrics, when a listen address is set
}

func parseTopFlags(args []string, stdout io.Writer) (*topConfig, error) {
	fs := pflag.NewFlagSet("tracer top", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.SortFlags = false

	cfg := &topConfig{}
	var (
		output = fs.StringP("output", "o", "text", "with --once: text (a table) or json (one documented object)")
		sortBy = fs.String("sort", string(export.ColOpens), "initial sort column: "+export.ColumnNames())
	)
	fs.BoolVarP(&cfg.help, "help", "h", false, "show this help")
	addRecordFlags(fs, &cfg.recordFlags)
	fs.BoolVar(&cfg.once, "once", false, "watch for --interval, print one snapshot and exit")
	fs.DurationVar(&cfg.interval, "interval", time.Second, "refresh interval; with --once, how long to watch before printing")
	finish := addLoopFlags(fs, cfg)
	addWebFlags(fs, &cfg.web, false)

	if err := fs.Parse(args); err != nil {
		return nil, usageError{err}
	}
	if cfg.help {
		fmt.Fprintf(stdout, "Usage: tracer top [flags]\n\nA live view of TCP connections per process and remote: opens and closes per\nsecond, sockets by state, TIME_WAIT, short-lived share, ephemeral port use;\npanels of conntrack fill per namespace, drops by reason, failed connects and\nUnix socket backlogs; and findings (pool_leak, close_wait_leak, no_reuse,\ntime_wait_pileup, port_exhaustion, fin_wait2_stuck, unix_backlog_overflow,\nconnect_refused, connect_timeouts, conntrack_table_full, conntrack_near_full,\nconntrack_long_timeouts, listen_overflow, drops) naming the process and the cause.\n\nKeys: s/S sort by next/previous column, r toggle process x remote, / filter,\nf findings panel, q quit.\n\nWith --web.listen-address it also serves /metrics (see tracer serve --help).\n\nFlags:\n%s", fs.FlagUsages())
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

// addLoopFlags defines the flags of the aggregating event loop and its
// samplers, shared by `tracer top` and `tracer serve`; the returned
// function validates them after parsing and completes cfg.
func addLoopFlags(fs *pflag.FlagSet, cfg *topConfig) func() error {
	defaults := probe.DefaultOptions()
	th := aggregate.DefaultThresholds()
	// The drop hook is on: the drops and conntrack sections need it.
	defaults.Drops = true
	// Conntrack entries from the kernel's own functions where it allows
	// (probe.ConntrackInKernel says which source is in use; the ctnetlink
	// event source is the fallback).
	defaults.ConntrackInKernel = true
	cfg.probe = defaults
	var (
		netns      = fs.String("netns", "", "only this network namespace: its inode number or a name in /run/netns")
		attachMode = fs.String("attach-mode", string(defaults.AttachMode), "how to attach to sock/inet_sock_set_state: auto, tp_btf, raw_tp or tracepoint")
	)
	fs.DurationVar(&cfg.sample, "sample-interval", time.Second, "how often the kernel's table of open sockets is read")
	fs.DurationVar(&cfg.reconcile, "reconcile-interval", 5*time.Second, "how often TIME_WAIT counts are reconciled with a sock_diag dump of every namespace (0: never)")
	fs.DurationVar(&cfg.netnsEvery, "netns-interval", time.Second, "how often every namespace's conntrack statistics and listen overflows are read (0: never)")
	fs.DurationVar(&cfg.countersEvery, "counters-interval", 10*time.Second, "how often the kernel's TCP counters (nstat), sockstat and the tracer's loss counters are read and recorded (0: never)")
	fs.DurationVar(&cfg.unixEvery, "unix-interval", 2*time.Second, "how often listening Unix sockets (backlog, queue, owner) are read (0: never)")
	fs.StringVar(&cfg.ctEntries, "conntrack-entries", ctEntriesAuto, "where conntrack entries (per process, by state) come from: auto (the in-kernel hooks where the kernel allows fentry or kprobes, else ctnetlink), ctnetlink (NEW/UPDATE/DESTROY events per namespace) or off")
	fs.IntVar(&cfg.ctReadBuffer, "conntrack-events-buffer", 0, "receive buffer of each ctnetlink event socket in bytes (0: 4 MiB); events beyond it are lost, counted and resynchronised with a dump")
	fs.DurationVar(&cfg.ctRefresh, "conntrack-refresh-interval", 10*time.Second, "how often a namespace's conntrack table is dumped again: with ctnetlink events, while entries older than the tracer remain (they report no events); with the in-kernel hooks, always (for the TCP states)")
	fs.BoolVar(&cfg.existing, "existing", true, "find connections open before start-up (sock_diag) and their owners")
	fs.Uint32Var(&cfg.probe.MaxSockets, "max-sockets", defaults.MaxSockets, "connections tracked at once in the kernel (LRU beyond that)")
	fs.IntVar(&cfg.probe.RingBufferBytes, "ring-buffer-bytes", defaults.RingBufferBytes, "size of the kernel-to-user ring buffer, a power of two")
	fs.DurationVar(&th.ShortLived, "finding.short-lived", th.ShortLived, "connections that live less are short-lived")
	fs.DurationVar(&th.PoolLeakWindow, "finding.pool-leak-window", th.PoolLeakWindow, "pool_leak: window over which ESTABLISHED growth is measured")
	fs.Uint32Var(&th.PoolLeakGrowth, "finding.pool-leak-growth", th.PoolLeakGrowth, "pool_leak: ESTABLISHED connections to one remote grew by at least this over the window")
	fs.Float64Var(&th.PoolLeakCloseRatio, "finding.pool-leak-close-ratio", th.PoolLeakCloseRatio, "pool_leak: ...while at most this times the growth closed")
	fs.Uint32Var(&th.CloseWaitCount, "finding.close-wait-count", th.CloseWaitCount, "close_wait_leak: sockets in CLOSE_WAIT to one remote")
	fs.DurationVar(&th.CloseWaitAge, "finding.close-wait-age", th.CloseWaitAge, "close_wait_leak: or any one in CLOSE_WAIT for longer than this")
	fs.Float64Var(&th.NoReuseRate, "finding.no-reuse-rate", th.NoReuseRate, "no_reuse: new connections per second to one remote (over 10 s)")
	fs.DurationVar(&th.NoReuseMedian, "finding.no-reuse-median", th.NoReuseMedian, "no_reuse: ...living less than this (median)")
	fs.Uint32Var(&th.TimeWaitCount, "finding.time-wait-count", th.TimeWaitCount, "time_wait_pileup: TIME_WAIT sockets left by one process towards one remote")
	fs.Float64Var(&th.PortUseShare, "finding.port-use", th.PortUseShare, "port_exhaustion: share of the ephemeral port range held towards one destination")
	fs.Uint32Var(&th.FinWait2Count, "finding.fin-wait2-count", th.FinWait2Count, "fin_wait2_stuck: sockets in FIN_WAIT2 to one remote")
	fs.DurationVar(&th.FinWait2Age, "finding.fin-wait2-age", th.FinWait2Age, "fin_wait2_stuck: ...for longer than this")
	fs.DurationVar(&th.IdleExpiry, "finding.idle-expiry", th.IdleExpiry, "forget a process or remote with nothing open after this long without events")

	return func() error {
		if cfg.sample <= 0 || cfg.reconcile < 0 || cfg.netnsEvery < 0 || cfg.unixEvery < 0 || cfg.countersEvery < 0 {
			return usagef("--sample-interval must be positive, --reconcile-interval, --netns-interval, --unix-interval and --counters-interval not negative")
		}
		var err error
		if cfg.probe.AttachMode, err = probe.ParseAttachMode(*attachMode); err != nil {
			return usageError{err}
		}
		if r := cfg.probe.RingBufferBytes; r < 4096 || r&(r-1) != 0 {
			return usagef("--ring-buffer-bytes %d: must be a power of two of at least 4096", r)
		}
		switch cfg.ctEntries {
		case ctEntriesAuto:
		case ctEntriesCtnetlink, ctEntriesOff:
			cfg.probe.ConntrackInKernel = false
		default:
			return usagef("--conntrack-entries %q: use auto, ctnetlink or off", cfg.ctEntries)
		}
		if cfg.ctReadBuffer < 0 || cfg.ctRefresh <= 0 {
			return usagef("--conntrack-events-buffer must not be negative, --conntrack-refresh-interval must be positive")
		}
		if cfg.probe.MaxSockets == 0 {
			return usagef("--max-sockets must be at least 1")
		}
		if *netns != "" {
			if cfg.netns, err = parseNetNS(*netns); err != nil {
				return usageError{err}
			}
			cfg.probe.Filter.NetNS = cfg.netns
		}
		if th.PortUseShare <= 0 || th.PortUseShare > 1 {
			return usagef("--finding.port-use %v: give a share between 0 and 1, e.g. 0.8", th.PortUseShare)
		}
		cfg.th = th
		return nil
	}
}
