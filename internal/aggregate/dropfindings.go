package aggregate

import (
	"fmt"
	"strings"
)

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

// DropFindings returns listen_overflow per overflowing listener and a
// generic `drops` finding per reason and namespace.
func DropFindings(snap DropSnapshot) []Finding {
	var out []Finding
	for _, o := range snap.ListenOverflows {
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
		out = append(out, *byReason[key])
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
	return "see the kernel's enum skb_drop_reason for this reason"
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
