package main

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/conntracer/conntracer/internal/events"
	"github.com/conntracer/conntracer/internal/export"
	"github.com/conntracer/conntracer/internal/kernel"
	"github.com/conntracer/conntracer/internal/probe"
	"github.com/conntracer/conntracer/internal/session"
)

// usageError marks errors caused by the command line (exit code 2).
type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }

func usagef(format string, a ...any) error { return usageError{fmt.Errorf(format, a...)} }

// newFlagSet is a subcommand's flag set: errors are returned (and printed
// by main with a pointer to --help), flags listed in definition order.
func newFlagSet(name string) *pflag.FlagSet {
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.SortFlags = false
	return fs
}

// probeFlags are the flags of the probe that every live command shares
// (the stream, top, serve and record): the namespace, the start-up scan,
// how to attach, and the kernel-side sizes.
type probeFlags struct {
	netns      string
	attachMode string
	existing   bool
	opts       probe.Options
}

// addProbeFlags defines the shared probe flags on fs with the defaults of
// opts; probeFlags.options validates them after parsing.
func addProbeFlags(fs *pflag.FlagSet, opts probe.Options) *probeFlags {
	f := &probeFlags{opts: opts}
	fs.StringVar(&f.netns, "netns", "", "only this network namespace: its inode number (ls -l /proc/PID/ns/net) or a name in /run/netns")
	fs.BoolVar(&f.existing, "existing", true, "find connections open before start-up (sock_diag) and their owners, so that their close names the owner")
	fs.StringVar(&f.attachMode, "attach-mode", string(opts.AttachMode), "how to attach to sock/inet_sock_set_state: auto, tp_btf, raw_tp or tracepoint")
	fs.IntVar(&f.opts.RingBufferBytes, "ring-buffer-bytes", opts.RingBufferBytes, "size of the kernel-to-user ring buffer, a power of two")
	fs.Uint32Var(&f.opts.MaxSockets, "max-sockets", opts.MaxSockets, "connections tracked at once in the kernel (LRU beyond that)")
	return f
}

// options returns the probe options the flags decide; the namespace is
// in Filter.NetNS (0: all).
func (f *probeFlags) options() (probe.Options, error) {
	o := f.opts
	var err error
	if o.AttachMode, err = probe.ParseAttachMode(f.attachMode); err != nil {
		return o, usageError{err}
	}
	if r := o.RingBufferBytes; r < 4096 || r > maxRingBufferBytes || r&(r-1) != 0 {
		return o, usagef("--ring-buffer-bytes %d: must be a power of two of at least 4096 and at most %d (1 GiB: it is pinned kernel memory)", r, maxRingBufferBytes)
	}
	if o.MaxSockets == 0 || o.MaxSockets > maxMaxSockets {
		return o, usagef("--max-sockets %d: must be from 1 to %d (about 200 bytes of kernel memory each; beyond the limit the least recently used are evicted)", o.MaxSockets, maxMaxSockets)
	}
	if f.netns != "" {
		if o.Filter.NetNS, err = parseNetNS(f.netns); err != nil {
			return o, usageError{err}
		}
	}
	return o, nil
}

// config is everything the flags of the stream (plain `tracer`) decide.
type config struct {
	help     bool
	format   export.Format
	duration time.Duration
	existing bool
	routine  bool // --connect-routine
	filter   events.Filter
	probe    probe.Options
	web      webConfig // /metrics beside the stream, when a listen address is set
	identity session.IdentityConfig
}

func parseFlags(args []string, stdout io.Writer) (*config, error) {
	fs := newFlagSet("tracer")
	defaults := probe.DefaultOptions()
	var (
		help     = fs.BoolP("help", "h", false, "show this help")
		output   = fs.StringP("output", "o", "text", "output format: text or json (one object per line)")
		duration = fs.Duration("duration", 0, "stop after this long (e.g. 30s, 5m); 0 runs until Ctrl-C or SIGTERM")
		pid      = fs.Uint32("pid", 0, "only connections owned by this process (tgid)")
		comm     = fs.String("comm", "", "only connections owned by processes with this name (15 characters at most, as in /proc/PID/comm)")
		port     = fs.Uint16("port", 0, "only connections with this local or remote port")
		cgroup   = fs.String("cgroup", "", "only processes in this cgroup v2 or below it (e.g. /sys/fs/cgroup/system.slice/nginx.service)")
		family   = fs.String("family", "all", "address family: ipv4, ipv6 or all (IPv4-mapped IPv6 counts as ipv4)")
	)
	workload := addWorkloadFlags(fs)
	pf := addProbeFlags(fs, defaults)
	var (
		pollEvery   = fs.Duration("poll-interval", defaults.PollInterval, "how often the reader checks the ring buffer when the kernel has not woken it")
		wakeupBytes = fs.Uint64("wakeup-bytes", defaults.WakeupBytes, "the kernel wakes the reader once this many bytes are waiting")
		connect     = fs.Bool("connect", true, "trace connect() calls (syscall tracepoints): failed connects, Unix sockets included, are printed")
		unixDgram   = fs.Bool("unix-dgram", true, "count Unix datagram sends failing on a full or vanished receiver (exit tracepoints of write, sendto, sendmsg, sendmmsg; needs --connect)")
		dgramWrite  = fs.Bool("unix-dgram-write", false, "with --unix-dgram, also hook write(2) (connected datagram senders such as Go's log/syslog); costs every write() on the machine about 100 ns")
		latency     = fs.Bool("connect-latency", false, "also hook the entry of connect() so that failed and Unix connects show their latency; costs every system call on the machine a little (about 0.5% of CPU under heavy connection churn)")
		routine     = fs.Bool("connect-routine", false, "also print routine failed connects, which are otherwise only counted: Unix connects failing with ENOENT (no socket at that path), or with ECONNREFUSED to /var/run/nscd/socket, /run/nscd/socket or /dev/log (glibc programs try nscd and syslog, absent on most hosts)")
		inProgress  = fs.Bool("connect-in-progress", false, "also send a record per non-blocking connect() that returns EINPROGRESS (otherwise counted only; its outcome is the connection's line)")
		drops       = fs.Bool("drops", false, "also trace dropped packets (skb:kfree_skb) with their reason, location, tuple and owner")
		keepNormal  = fs.Bool("drops-keep-normal", false, "also count frees with reason NOT_SPECIFIED or CONSUMED, which are mostly not drops")
		dropRate    = fs.Uint32("drop-records-per-sec", defaults.DropRecordsPerSec, "individual drop records per second and CPU (0: no limit); every drop is still counted exactly")
	)
	var web webConfig
	addWebFlags(fs, &web, false)
	var ids session.IdentityConfig
	addIdentityFlags(fs, &ids)
	if err := fs.Parse(args); err != nil {
		return nil, usageError{err}
	}
	cfg := &config{help: *help, duration: *duration, existing: pf.existing, routine: *routine, web: web, identity: ids}
	if cfg.help {
		fmt.Fprintf(stdout, "Usage: tracer [flags]\n\nTraces every TCP connection's life and prints one line per finished\nconnection: owner, addresses, role, lifetime, bytes and how it ended.\n\nSubcommands:\n  top    live view per process and remote, with findings ('tracer top --help')\n  serve  daemon serving Prometheus metrics at /metrics ('tracer serve --help')\n  record record what top aggregates to a file ('tracer record --help')\n  report post-mortem of recordings: text, json or html ('tracer report --help')\n  export recorded events as JSON lines ('tracer export --help')\n  version print the version and exit (also --version)\n\nFlags:\n%s", fs.FlagUsages())
		return cfg, nil
	}
	if fs.NArg() > 0 {
		return nil, usagef("unexpected argument %q", fs.Arg(0))
	}

	var err error
	if cfg.format, err = export.ParseFormat(*output); err != nil {
		return nil, usageError{err}
	}
	if *duration < 0 {
		return nil, usagef("--duration must not be negative")
	}
	if cfg.probe, err = pf.options(); err != nil {
		return nil, err
	}
	if *pollEvery <= 0 {
		return nil, usagef("--poll-interval must be positive")
	}
	if *wakeupBytes > uint64(cfg.probe.RingBufferBytes) {
		return nil, usagef("--wakeup-bytes %d: must not exceed --ring-buffer-bytes (%d), or the reader is woken only by --poll-interval", *wakeupBytes, cfg.probe.RingBufferBytes)
	}
	cfg.probe.PollInterval = *pollEvery
	cfg.probe.WakeupBytes = *wakeupBytes
	cfg.probe.NoConnect = !*connect
	cfg.probe.ConnectInProgress = *inProgress
	cfg.probe.ConnectLatency = *latency
	cfg.probe.NoUnixDgram = !*unixDgram
	cfg.probe.UnixDgramWrite = *dgramWrite
	cfg.probe.Drops = *drops
	cfg.probe.DropsKeepNormal = *keepNormal
	cfg.probe.DropRecordsPerSec = *dropRate

	f := &cfg.filter
	f.NetNS = cfg.probe.Filter.NetNS
	f.PID = *pid
	f.Port = *port
	if len(*comm) > 15 {
		return nil, usagef("--comm %q: the kernel keeps 15 characters of a process name; use %q", *comm, (*comm)[:15])
	}
	f.Comm = *comm
	if f.Workload, err = workload.filter(); err != nil {
		return nil, err
	}
	switch strings.ToLower(*family) {
	case "all", "":
	case "ipv4", "4", "inet":
		f.Family = events.FamilyIPv4
	case "ipv6", "6", "inet6":
		f.Family = events.FamilyIPv6
	default:
		return nil, usagef("--family %q: use ipv4, ipv6 or all", *family)
	}
	if *cgroup != "" {
		id, level, err := kernel.ResolveCgroup(*cgroup)
		if err != nil {
			return nil, usageError{err}
		}
		if f.CgroupPath, err = kernel.CgroupProcPath(*cgroup); err != nil {
			return nil, usageError{err}
		}
		f.CgroupID = id
		cfg.probe.Filter.CgroupID = id
		cfg.probe.Filter.CgroupLevel = uint32(level)
	}
	cfg.probe.Filter.PID = f.PID
	cfg.probe.Filter.Port = f.Port
	cfg.probe.Filter.Family = f.Family
	cfg.probe.Filter.Comm = f.Comm
	return cfg, cfg.web.validate()
}

// parseNetNS accepts an inode number or a name from `ip netns`.
func parseNetNS(s string) (uint32, error) {
	if n, err := strconv.ParseUint(s, 10, 32); err == nil {
		if n == 0 {
			return 0, fmt.Errorf("--netns 0: give a namespace inode number (ls -l /proc/PID/ns/net) or a name in /run/netns")
		}
		return uint32(n), nil
	}
	ino, err := kernel.NetNSByName(s)
	if err != nil {
		return 0, fmt.Errorf("--netns %q: not an inode number, and %w", s, err)
	}
	return ino, nil
}
