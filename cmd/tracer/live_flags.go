package main

import (
	"github.com/spf13/pflag"

	"github.com/conntracer/conntracer/internal/probe"
	"github.com/conntracer/conntracer/internal/session"
)

// liveConfig is what the flags of the aggregating commands (`tracer top`,
// `serve` and `record`) decide. newLiveConfig holds the defaults that
// the flags show and start from.
type liveConfig struct {
	help    bool
	session session.Config
	probe   probe.Options
	web     webConfig // /metrics, when a listen address is set
	noView  bool
}

func newLiveConfig() *liveConfig { return &liveConfig{session: session.DefaultConfig()} }

// addSessionFlags defines the flags of the session (the shared probe
// flags, the samplers' intervals, the conntrack entry source, the
// findings' thresholds) with the session's defaults; the returned
// function validates them after parsing and completes cfg.
func addSessionFlags(fs *pflag.FlagSet, cfg *liveConfig) func() error {
	defaults := probe.DefaultOptions()
	// The drop hook is on: the drops and conntrack sections need it.
	defaults.Drops = true
	// Conntrack entries from the kernel's own functions where it allows
	// (probe.ConntrackInKernel says which source is in use; the ctnetlink
	// event source is the fallback).
	defaults.ConntrackInKernel = true
	s := &cfg.session
	iv, ct, th := &s.Intervals, &s.Conntrack, &s.Thresholds
	pf := addProbeFlags(fs, defaults)
	addIdentityFlags(fs, &s.Identity)
	fs.DurationVar(&iv.Sample, "sample-interval", iv.Sample, "how often the kernel's table of open sockets is read")
	fs.DurationVar(&iv.Reconcile, "reconcile-interval", iv.Reconcile, "how often TIME_WAIT counts are checked against each namespace's sockstat, and a namespace that differs reconciled with a sock_diag dump (0: never)")
	fs.DurationVar(&iv.NetNS, "netns-interval", iv.NetNS, "how often every namespace's conntrack statistics and listen overflows are read (0: never)")
	fs.DurationVar(&iv.Counters, "counters-interval", iv.Counters, "how often the kernel's TCP counters (nstat), sockstat and the tracer's loss counters are read and recorded (0: never)")
	fs.DurationVar(&iv.Unix, "unix-interval", iv.Unix, "how often listening Unix sockets (backlog, queue, owner) are read (0: never)")
	fs.StringVar(&ct.Entries, "conntrack-entries", ct.Entries, "where conntrack entries (per process, by state) come from: auto (the in-kernel hooks where the kernel allows fentry or kprobes, else ctnetlink), ctnetlink (NEW/UPDATE/DESTROY events per namespace) or off")
	fs.IntVar(&ct.EventsBuffer, "conntrack-events-buffer", ct.EventsBuffer, "receive buffer of each ctnetlink event socket in bytes (0: 4 MiB); events beyond it are lost, counted and resynchronised with a dump")
	fs.DurationVar(&ct.Refresh, "conntrack-refresh-interval", ct.Refresh, "how often a namespace's conntrack table is dumped again: with ctnetlink events, while entries older than the tracer remain (they report no events); with the in-kernel hooks, always (for the TCP states)")
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
		if iv.Sample <= 0 || iv.Reconcile < 0 || iv.NetNS < 0 || iv.Unix < 0 || iv.Counters < 0 {
			return usagef("--sample-interval must be positive, --reconcile-interval, --netns-interval, --unix-interval and --counters-interval not negative")
		}
		var err error
		if cfg.probe, err = pf.options(); err != nil {
			return err
		}
		s.Existing = pf.existing
		s.NetNS = cfg.probe.Filter.NetNS
		switch ct.Entries {
		case session.ConntrackAuto:
		case session.ConntrackCtnetlink, session.ConntrackOff:
			cfg.probe.ConntrackInKernel = false
		default:
			return usagef("--conntrack-entries %q: use auto, ctnetlink or off", ct.Entries)
		}
		if ct.EventsBuffer < 0 || ct.Refresh <= 0 {
			return usagef("--conntrack-events-buffer must not be negative, --conntrack-refresh-interval must be positive")
		}
		if ct.EventsBuffer > maxEventsBuffer {
			return usagef("--conntrack-events-buffer %d: at most %d (256 MiB of kernel memory per network namespace)", ct.EventsBuffer, maxEventsBuffer)
		}
		if r := &s.Record; r.Keep < 0 || r.Keep > maxRecordKeep || r.RotateSize < 0 || r.RotateAge < 0 || r.Flight < 0 {
			return usagef("--record-keep must be from 0 to %d, --record-rotate-size, --record-rotate-age and --flight-recorder not negative", maxRecordKeep)
		}
		if s.Record.Flight > maxFlight {
			return usagef("--flight-recorder %v: at most %v (the window is held in memory; use --record for longer)", s.Record.Flight, maxFlight)
		}
		if th.PortUseShare <= 0 || th.PortUseShare > 1 {
			return usagef("--finding.port-use %v: give a share between 0 and 1, e.g. 0.8", th.PortUseShare)
		}
		return nil
	}
}

// addRecordFlags defines the recording flags of the live commands.
func addRecordFlags(fs *pflag.FlagSet, cfg *liveConfig) {
	r := &cfg.session.Record
	fs.StringVar(&r.Path, "record", r.Path, "also record every aggregated event to this file (read it with `tracer report`)")
	fs.DurationVar(&r.Flight, "flight-recorder", r.Flight, "keep the last DURATION of events in memory and write them to --flight-dir on a new finding or SIGUSR1")
	fs.StringVar(&r.FlightDir, "flight-dir", r.FlightDir, "where --flight-recorder writes its dumps")
	fs.Int64Var(&r.RotateSize, "record-rotate-size", r.RotateSize, "start a new recording file past this many bytes (0: never)")
	fs.DurationVar(&r.RotateAge, "record-rotate-age", r.RotateAge, "start a new recording file after this long (0: never)")
	fs.IntVar(&r.Keep, "record-keep", r.Keep, "rotated recording files kept (FILE.1 newest)")
	fs.BoolVar(&cfg.noView, "no-view", false, "run without the terminal view (what `tracer record` does)")
}
