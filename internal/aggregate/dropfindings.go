package aggregate

import (
	"fmt"
	"strings"
	"time"
)

// DropFindingWindow: a drops or listen_overflow finding stands while its
// count rose within this window of now, and ends once the drops stop (a
// finding must mean something is wrong now, and conntracer_findings must
// be able to go down). The same window as DefaultConnectRules.
const DropFindingWindow = 5 * time.Minute

// Thresholds of the drop and conntrack findings.
const (
	// ConntrackNearFullFill raises conntrack_near_full.
	ConntrackNearFullFill = 0.9
	// longEstablishedTimeout: an established timeout of a day or more
	// keeps idle flows in the table long after their owners forgot them.
	longEstablishedTimeout = 86400
	// longTimeoutFill: entries "pile up" once they fill half the table.
	longTimeoutFill = 0.5
)

const conntrackRemedy = "raise net.netfilter.nf_conntrack_max (about 300 bytes of kernel memory per entry; hashsize = max/4), " +
	"shorten nf_conntrack_tcp_timeout_established (e.g. 600) and _time_wait, reuse connections instead of opening one per request, " +
	"or exempt trusted loopback/internal traffic with NOTRACK in the raw table"

// ConntrackFindings returns conntrack_near_full, conntrack_table_full and
// conntrack_long_timeouts for each namespace of the snapshot.
func ConntrackFindings(snap []ConntrackNSSnapshot) []Finding {
	var out []Finding
	for _, n := range snap {
		top := topProcess(n.TopProcesses)
		ev := map[string]float64{
			"entries": float64(n.Entries), "max": float64(n.Max), "fill": n.Fill,
			"conntrack_drops": float64(n.ConntrackDrops), "early_drops": float64(n.EarlyDrops),
			"insert_failed": float64(n.InsertFailed), "timeout_established_seconds": float64(n.TimeoutEstablished),
		}
		base := Finding{NetNS: n.NetNS, PID: top.PID, Comm: top.Comm, Last: n.Last, Evidence: ev}
		if n.ConntrackDrops > 0 {
			f := base
			f.Kind = "conntrack_table_full"
			var flows []string
			for i, r := range n.RefusedFlows {
				if i == 3 {
					break
				}
				flows = append(flows, fmt.Sprintf("%s %s->%s", r.Proto, r.Src, r.Dst))
			}
			f.Message = fmt.Sprintf("conntrack table full in netns %d: %d packets dropped (%d/%d entries)%s%s",
				n.NetNS, n.ConntrackDrops, n.Entries, n.Max, procText(top), flowText(flows))
			f.Remedy = conntrackRemedy
			out = append(out, f)
		} else if n.Max > 0 && n.Fill >= ConntrackNearFullFill {
			f := base
			f.Kind = "conntrack_near_full"
			f.Message = fmt.Sprintf("conntrack table %.0f%% full in netns %d (%d/%d entries)%s",
				100*n.Fill, n.NetNS, n.Entries, n.Max, procText(top))
			f.Remedy = conntrackRemedy
			out = append(out, f)
		}
		if n.TimeoutEstablished >= longEstablishedTimeout && n.Fill >= longTimeoutFill {
			f := base
			f.Kind = "conntrack_long_timeouts"
			f.Message = fmt.Sprintf("established conntrack entries live %ds (%.1f days) while the table in netns %d is %.0f%% full",
				n.TimeoutEstablished, float64(n.TimeoutEstablished)/86400, n.NetNS, 100*n.Fill)
			f.Remedy = "lower net.netfilter.nf_conntrack_tcp_timeout_established (e.g. 600) and nf_conntrack_tcp_timeout_time_wait; make clients close idle connections"
			out = append(out, f)
		}
	}
	return out
}

// dropFindingMin is how many packets one reason must have dropped in one
// namespace for a `drops` finding: a lone packet is not an incident.
const dropFindingMin = 10

// routineDropReasons are the kernel's frees that are part of normal
// operation, counted (the DROPS panel, /metrics) but never a finding: a
// finding must mean something is wrong. Each is what a healthy box does
// all day:
//   - QUEUE_PURGE: a socket's queues freed as it is destroyed
//     (sk_stream_kill_queues): data its application closed without reading;
//   - SOCKET_CLOSE, UNIX_DISCONNECT: buffers freed as a socket is released
//     or disconnected (unix_release_sock, tcp_close);
//   - NO_SOCKET: no socket for the packet: the RST answering a refused
//     connect (connect_refused names those), a segment for a connection
//     already gone;
//   - TCP_CLOSE, TCP_RESET: segments reaching a socket that is closing or
//     was reset;
//   - TCP_OLD_DATA, TCP_OLD_SEQUENCE, TCP_OLD_ACK, TCP_TOO_OLD_ACK,
//     TCP_OFOMERGE: duplicates of what was already received
//     (retransmissions);
//   - NOT_SPECIFIED, CONSUMED: frees, not drops (--drops-keep-normal).
var routineDropReasons = map[string]bool{
	"QUEUE_PURGE": true, "SOCKET_CLOSE": true, "UNIX_DISCONNECT": true, "NO_SOCKET": true,
	"TCP_CLOSE": true, "TCP_RESET": true, "TCP_OLD_DATA": true, "TCP_OLD_SEQUENCE": true,
	"TCP_OLD_ACK": true, "TCP_TOO_OLD_ACK": true, "TCP_OFOMERGE": true,
	"NOT_SPECIFIED": true, "CONSUMED": true,
}

// DropFindings returns listen_overflow per overflowing listener and a
// generic `drops` finding per reason and namespace, for reasons that are
// not routine (routineDropReasons) once they reach dropFindingMin
// packets.
func DropFindings(snap DropSnapshot, now time.Time) []Finding {
	var out []Finding
	recent := func(last time.Time) bool { return now.Sub(last) <= DropFindingWindow }
	for _, o := range snap.ListenOverflows {
		if !recent(o.Last) {
			continue
		}
		out = append(out, Finding{
			Kind: "listen_overflow", PID: o.PID, Comm: o.Comm, Remote: o.Addr, NetNS: o.NetNS,
			Since: o.First, Last: o.Last,
			Message: fmt.Sprintf("accept queue of %s (%s) overflowed %d times: backlog %d, somaxconn %d",
				o.Addr, procOrUnknown(o.PID, o.Comm), o.Overflows, o.Backlog, o.Somaxconn),
			Remedy: "accept faster (more workers), raise the listen() backlog and net.core.somaxconn together, or spread connects over time",
			Evidence: map[string]float64{"overflows": float64(o.Overflows), "backlog": float64(o.Backlog),
				"queue_len": float64(o.QueueLen), "somaxconn": float64(o.Somaxconn)},
		})
	}
	type k struct {
		reason string
		netns  uint32
	}
	byReason := map[k]*Finding{}
	var order []k
	for _, d := range snap.ByReason {
		if routineDropReasons[d.Reason] || !recent(d.Last) {
			continue
		}
		key := k{d.Reason, d.NetNS}
		f := byReason[key]
		if f == nil {
			f = &Finding{Kind: "drops", NetNS: d.NetNS, PID: d.PID, Comm: d.Comm,
				Evidence: map[string]float64{"count": 0}, Remedy: dropRemedy(d.Reason)}
			byReason[key] = f
			order = append(order, key)
		}
		f.Evidence["count"] += float64(d.Count)
		f.Message = fmt.Sprintf("%.0f packets dropped in netns %d: %s at %s", f.Evidence["count"], d.NetNS, d.Reason, d.Location)
	}
	for _, key := range order {
		if f := byReason[key]; f.Evidence["count"] >= dropFindingMin {
			out = append(out, *f)
		}
	}
	return out
}

func dropRemedy(reason string) string {
	switch {
	case reason == "NETFILTER_DROP":
		return "a firewall rule or a full conntrack table refused it: see conntrack_table_full, else `nft list ruleset`"
	case reason == "TCP_LISTEN_OVERFLOW":
		return "the accept queue is full: accept faster or raise backlog and net.core.somaxconn"
	case reason == "SOCKET_RCVBUFF" || reason == "PROTO_MEM":
		return "the receiver does not read fast enough: read faster or raise SO_RCVBUF / net.core.rmem_max"
	case reason == "NO_SOCKET":
		return "nothing listens on that port (or the connection is gone)"
	case strings.HasPrefix(reason, "QDISC") || reason == "CPU_BACKLOG":
		return "the box cannot send or process packets as fast as they come: check qdisc limits, net.core.netdev_max_backlog"
	}
	return "the kernel explains each reason beside its name in include/net/dropreason-core.h; the location names the code that dropped it"
}

func topProcess(ps []ProcessCount) ProcessCount {
	if len(ps) == 0 {
		return ProcessCount{}
	}
	return ps[0]
}

func procText(p ProcessCount) string {
	if p.PID == 0 {
		return ""
	}
	return fmt.Sprintf("; most entries/refusals: %s", procOrUnknown(p.PID, p.Comm))
}

func procOrUnknown(pid uint32, comm string) string {
	if pid == 0 {
		return "process unknown"
	}
	return fmt.Sprintf("%s[%d]", comm, pid)
}

func flowText(flows []string) string {
	if len(flows) == 0 {
		return ""
	}
	return "; refused: " + strings.Join(flows, ", ")
}
