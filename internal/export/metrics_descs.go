package export

import "github.com/prometheus/client_golang/prometheus"

// metricDescs are the collector's metric descriptions. Names follow the
// Prometheus naming guide: conntracer_ prefix, base units, _total on
// counters; no pid, address or port labels unless the operator asks.
type metricDescs struct {
	// Per process group (comm, cgroup): the top K processes, the rest
	// folded into comm="other".
	opened, closed, sent, received, sockets, portUse *prometheus.Desc
	processes                                        *prometheus.Desc

	// Histograms.
	lifetime, connectLatency, sentPerConn, receivedPerConn *prometheus.Desc

	// Node and namespace.
	timeWait, portUseMax, destPorts, destRange             *prometheus.Desc
	connectFailures, drops, listenOverflows, unixOverflows *prometheus.Desc
	ctEntries, ctMax, ctInserts, ctInsertFailed            *prometheus.Desc
	ctDrops, ctEarlyDrops, findings                        *prometheus.Desc
	ctByState, ctByComm, ctDumps                           *prometheus.Desc
}

func newMetricDescs(named, netnsNamed bool) metricDescs {
	proc := processLabels(named)
	ns := []string{"netns"}
	if netnsNamed {
		ns = append(ns, "netns_name")
	}
	n := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("conntracer_"+name, help, labels, nil)
	}
	return metricDescs{
		opened:    n("connections_opened_total", "TCP connections whose handshake the tracer saw, by process group and role (active: connect, passive: accept).", append(proc, "role")...),
		closed:    n("connections_closed_total", "TCP connections closed, by process group and role (unknown: open before tracing started).", append(proc, "role")...),
		sent:      n("sent_bytes_total", "Payload bytes sent and acknowledged on closed connections, by process group.", proc...),
		received:  n("received_bytes_total", "Payload bytes received on closed connections, by process group.", proc...),
		sockets:   n("sockets", "TCP sockets open now, by process group and state (TIME_WAIT included), as of the last sample of the socket table.", append(proc, "state")...),
		portUse:   n("ephemeral_port_use_ratio", "Highest share of an ephemeral port range that a process group's connections to one destination hold.", proc...),
		processes: n("tracked_processes", "Processes the aggregate tracks (before folding into the top K)."),

		lifetime:        n("connection_lifetime_seconds", "Lifetime of closed TCP connections whose open the tracer saw, by role and end state.", "role", "end_state"),
		connectLatency:  n("connect_latency_seconds", "Time from SYN_SENT to ESTABLISHED of active opens."),
		sentPerConn:     n("connection_sent_bytes", "Payload bytes sent per closed connection, by role.", "role"),
		receivedPerConn: n("connection_received_bytes", "Payload bytes received per closed connection, by role.", "role"),

		timeWait:        n("time_wait_sockets", "Sockets in TIME_WAIT, per network namespace (reconciled with sock_diag dumps).", ns...),
		portUseMax:      n("ephemeral_port_use_max_ratio", "Share of the ephemeral port range held towards the busiest destination, per network namespace.", ns...),
		destPorts:       n("destination_ports_used", "Local ports held towards a destination (opt-in, capped: --metrics.destinations).", append(ns[:len(ns):len(ns)], "destination")...),
		destRange:       n("destination_port_range_size", "Size of the ephemeral port range of the namespace of a destination (opt-in, with destination_ports_used).", append(ns[:len(ns):len(ns)], "destination")...),
		connectFailures: n("connect_failures_total", "Failed connect() calls, by errno name.", "errno"),
		drops:           n("drops_total", "Packets the kernel dropped, by drop reason (from the running kernel's BTF).", "reason"),
		listenOverflows: n("listen_overflows_total", "TCP listen queue overflows, per network namespace.", ns...),
		unixOverflows:   n("unix_backlog_overflows_total", "connect() calls to a Unix stream socket that failed with EAGAIN (backlog full), per network namespace.", ns...),
		ctEntries:       n("conntrack_entries", "Entries in the conntrack table, per network namespace.", ns...),
		ctMax:           n("conntrack_max_entries", "Size limit of the conntrack table (nf_conntrack_max), per network namespace.", ns...),
		ctInserts:       n("conntrack_inserts_total", "Conntrack entries inserted, per network namespace.", ns...),
		ctInsertFailed:  n("conntrack_insert_failed_total", "Conntrack insertions that failed, per network namespace.", ns...),
		ctDrops:         n("conntrack_drops_total", "Packets dropped because a conntrack entry could not be created (table full), per network namespace.", ns...),
		ctEarlyDrops:    n("conntrack_early_drops_total", "Conntrack entries evicted early to make room, per network namespace.", ns...),
		ctByState:       n("conntrack_entries_by_state", "TCP conntrack entries by conntrack TCP state, per network namespace (from the entry events: ctnetlink or in-kernel).", append(ns[:len(ns):len(ns)], "state")...),
		ctByComm:        n("conntrack_process_entries", "Conntrack entries held by the flows of the processes of a command (the top processes of each namespace, summed by comm).", "comm"),
		ctDumps:         n("conntrack_table_dumps_total", "Dumps of a namespace's conntrack table replacing the tracer's view of it (one at start-up, one after each event loss, refreshes while entries older than the subscription remain), per network namespace.", ns...),
		findings:        n("findings", "Active findings, by kind (pool_leak, time_wait_pileup, conntrack_table_full...).", "kind"),
	}
}

func (d *metricDescs) each(f func(*prometheus.Desc)) {
	for _, desc := range []*prometheus.Desc{
		d.opened, d.closed, d.sent, d.received, d.sockets, d.portUse, d.processes,
		d.lifetime, d.connectLatency, d.sentPerConn, d.receivedPerConn,
		d.timeWait, d.portUseMax, d.destPorts, d.destRange,
		d.connectFailures, d.drops, d.listenOverflows, d.unixOverflows,
		d.ctEntries, d.ctMax, d.ctInserts, d.ctInsertFailed, d.ctDrops, d.ctEarlyDrops, d.findings,
		d.ctByState, d.ctByComm, d.ctDumps,
	} {
		f(desc)
	}
}
