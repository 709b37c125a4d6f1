package events

// Kind says what an Event reports.
//
// Kinds are part of the recording format: a recording stores each event's
// Kind as this number (internal/record), and its name is the stable
// identifier of JSON output. So every kind is numbered here, explicitly,
// once: a number is never changed or reused, and a new kind takes a new
// one. The numbers were assigned in blocks per source (per-connection
// 1..4, sampler rounds 32..36, drops and namespace statistics 40..43,
// counters 48..49, conntrack entries 56..60, Unix datagram sends 64,
// cgroup identities 72, network namespace names 73);
// kind_test.go pins every number and name.
type Kind uint8

const (
	// KindUnknown is the zero Kind; a decoded Event never carries it.
	KindUnknown Kind = 0

	// KindConnClosed reports a TCP connection that ended, emitted by the
	// kernel once per connection when its socket reaches TCP_CLOSE.
	KindConnClosed Kind = 1
	// KindConnExisting reports a TCP connection that was already open when
	// tracing started, found by a sock_diag dump. It carries the owner that
	// /proc/PID/fd resolved, so a later KindConnClosed can name it.
	KindConnExisting Kind = 2
	// KindConnect reports one connect() call (Event.Connect): every
	// failure, every EINPROGRESS, every Unix connect.
	KindConnect Kind = 3
	// KindUnixListener reports a listening Unix socket sampled through
	// sock_diag (Event.Connect: path, listener, backlog, queue).
	KindUnixListener Kind = 4

	// Sampler rounds (sample.go): what the tracer reads from the kernel's
	// own tables on a tick, one round at a time, ended by a Done event.

	// KindSockOpen reports one socket open right now, read from the
	// kernel's table of live connections (the BPF socks map). Conn holds
	// its owner (if the kernel knows it), tuple, role and open time;
	// Conn.LastState is its current state. Conn.Local's port is 0 for a
	// socket in SYN_SENT (the port is bound after the transition).
	// Sample.TimeNs is when the round was read.
	KindSockOpen Kind = 32
	// KindSockSampleDone ends a round of KindSockOpen events.
	KindSockSampleDone Kind = 33
	// KindTimeWait reports one TIME_WAIT socket found by a sock_diag dump
	// of every network namespace: Conn holds its namespace and tuple,
	// Sample.ExpiresNs the time left on its timer.
	KindTimeWait Kind = 34
	// KindTimeWaitDone ends a dump of KindTimeWait events. Sample.TimeNs
	// is when the dump started; the dump is complete for the namespaces
	// it covered (Conn.NetNS: one namespace's part; 0: the whole dump).
	KindTimeWaitDone Kind = 35
	// KindPortRange reports a network namespace's
	// net.ipv4.ip_local_port_range (Conn.NetNS, Sample.PortLow/PortHigh).
	KindPortRange Kind = 36

	// Drops, listen queues and conntrack statistics (drop.go,
	// conntrack.go).

	// KindDrop is one packet the kernel freed with a drop reason (a sample:
	// the kernel sends at most a configured number per second and CPU).
	KindDrop Kind = 40
	// KindDropCount carries the exact cumulative number of drops of one
	// (location, reason, netns, owner) since tracing started, read from the
	// kernel's counters once a second. Drop.Count is cumulative, so
	// applying the latest value is idempotent.
	KindDropCount Kind = 41
	// KindListenOverflow reports accept-queue overflows of one listener
	// since the previous sample: Drop.Count is the namespace's
	// TcpExtListenOverflows delta attributed to it.
	KindListenOverflow Kind = 42
	// KindConntrackStats is one namespace's conntrack statistics, sampled
	// through ctnetlink (cumulative kernel counters summed over CPUs).
	KindConntrackStats Kind = 43
	// KindNetNSNew says that network namespace Counters.NetNS appeared
	// after tracing started (or its inode now names another namespace):
	// every counter the kernel keeps for it started at zero within the
	// trace, so its baselines are zero, not its first sample.
	KindNetNSNew Kind = 44
	// KindNetNSGone says that network namespace Counters.NetNS no longer
	// exists (or its inode was reused by another one): what is kept per
	// namespace is forgotten; a later event with the same inode is about
	// another namespace.
	KindNetNSGone Kind = 45

	// Counters (kcounters.go): periodic snapshots of counters the kernel
	// and the tracer keep themselves.

	// KindKernelCounters reports one network namespace's TCP MIB counters
	// (/proc/net/snmp Tcp, /proc/net/netstat TcpExt: what `nstat` shows)
	// and /proc/net/sockstat, read inside it. Counters.NetNS, TimeNs and
	// Values indexed by KernelCounterNames.
	KindKernelCounters Kind = 48
	// KindTracerCounters reports the tracer's own losses: per BPF object
	// (Counters.Object) the records the kernel could not write to the ring
	// buffer; for Object "" the reader's totals. Values indexed by
	// TracerCounterNames.
	KindTracerCounters Kind = 49

	// The conntrack entry lifecycle (ctentry.go). Two sources produce
	// these, and the aggregator cannot tell which did (conntrack entries
	// are the same facts either way): ctnetlink's NEW/DESTROY event groups
	// with a resynchronising dump after a loss (every kernel), or BPF
	// programs on the kernel's own conntrack functions where the kernel
	// allows fentry or kprobes.

	// KindConntrackNew is a conntrack entry confirmed into a namespace's
	// table (ctnetlink IPCTNL_MSG_CT_NEW event, or __nf_conntrack_confirm).
	KindConntrackNew Kind = 56
	// KindConntrackDestroy is an entry removed from the table (ctnetlink
	// IPCTNL_MSG_CT_DELETE event, or nf_ct_delete).
	KindConntrackDestroy Kind = 57
	// KindConntrackAllocFailed is an entry the kernel refused to create
	// because the namespace's table was full (a failed
	// __nf_conntrack_alloc): the refused flow's tuple, when it is known.
	KindConntrackAllocFailed Kind = 58
	// KindConntrackResync marks a complete dump of one namespace's table
	// after events were lost (ENOBUFS) or at start-up: the entries of that
	// namespace that the dump did not list are gone. It precedes the
	// dump's KindConntrackNew events (with ConntrackEntry.Dump set) and
	// carries ConntrackEntry.Generation; ConntrackEntry.Lost counts the
	// events the kernel dropped before it.
	KindConntrackResync Kind = 59
	// KindConntrackUpdate is a change of an entry already in the table (a
	// ctnetlink IPCTNL_MSG_CT_NEW event without NLM_F_CREATE: its TCP
	// state moved, its status changed). It is not a new entry; an update
	// of an entry the table does not know (its NEW was lost) adds it.
	KindConntrackUpdate Kind = 60

	// KindUnixDgramSend reports failed sends on a Unix datagram socket
	// (Event.Connect: the sender in Owner, the destination in Path,
	// SockDgram, Errno EAGAIN when the receiver's queue was full,
	// ECONNREFUSED or ENOENT when the receiver was gone, and Count failures
	// since the last event for this sender, destination and errno: the
	// kernel counts them in place).
	KindUnixDgramSend Kind = 64

	// KindCgroupIdentity names a cgroup (Event.Cgroup: its id, path and
	// identity: container, pod, unit). Recordings carry one per cgroup,
	// before the first event of a process in it, so that a report read
	// after the container is gone still names it (identity.go).
	KindCgroupIdentity Kind = 72
	// KindNetNSName names a network namespace (Event.NetNSName: its inode
	// and the name an operator knows it by: the pod or container owning
	// it, its `ip netns` name, "host"). Recordings carry one per
	// namespace, before the first event in it, so that a report read after
	// the namespace is gone still names it.
	KindNetNSName Kind = 73
)

// kindNames are the stable names of the kinds, by number: JSON output,
// exports and reports print them. A number without a name is unknown.
var kindNames = [...]string{
	KindConnClosed:           "conn_closed",
	KindConnExisting:         "conn_existing",
	KindConnect:              "connect",
	KindUnixListener:         "unix_listener",
	KindSockOpen:             "sock_open",
	KindSockSampleDone:       "sock_sample_done",
	KindTimeWait:             "time_wait",
	KindTimeWaitDone:         "time_wait_done",
	KindPortRange:            "port_range",
	KindDrop:                 "drop",
	KindDropCount:            "drop_count",
	KindListenOverflow:       "listen_overflow",
	KindConntrackStats:       "conntrack_stats",
	KindNetNSNew:             "netns_new",
	KindNetNSGone:            "netns_gone",
	KindKernelCounters:       "kernel_counters",
	KindTracerCounters:       "tracer_counters",
	KindConntrackNew:         "conntrack_new",
	KindConntrackDestroy:     "conntrack_destroy",
	KindConntrackAllocFailed: "conntrack_alloc_failed",
	KindConntrackResync:      "conntrack_resync",
	KindConntrackUpdate:      "conntrack_update",
	KindUnixDgramSend:        "unix_dgram_send",
	KindCgroupIdentity:       "cgroup_identity",
	KindNetNSName:            "netns_name",
}

// String returns the kind's stable name ("conn_closed"...), "unknown" for
// KindUnknown and numbers no kind has.
func (k Kind) String() string {
	if int(k) < len(kindNames) && kindNames[k] != "" {
		return kindNames[k]
	}
	return "unknown"
}
