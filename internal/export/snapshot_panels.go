package export

import (
	"github.com/conntracer/conntracer/internal/aggregate"

	"cmp"
	"fmt"
	"maps"
	"slices"
	"strings"
)

// panelRows bounds each panel: the table of processes is the view's body;
// the JSON document lists everything.
const panelRows = 3

// panels renders the compact panels of the other concerns, each only when
// it has something to show: conntrack fill per namespace, drops by reason,
// failed connects, Unix socket backlogs and failed datagram sends.
func panels(s *aggregate.Snapshot, o *ViewOptions) []string {
	var out []string
	add := func(title string, items []string, total int) {
		if len(items) == 0 {
			return
		}
		more := ""
		if total > len(items) {
			more = fmt.Sprintf("  (+%d more)", total-len(items))
		}
		out = append(out, title+"  "+strings.Join(items, "  |  ")+more)
	}

	var ct []string
	for _, c := range s.Conntrack[:min(len(s.Conntrack), panelRows)] {
		ct = append(ct, fmt.Sprintf("netns %s %d/%d (%.0f%%) drop %d early %d ins_fail %d",
			o.netnsName(c.NetNS), c.Entries, c.Max, 100*c.Fill, c.ConntrackDrops, c.EarlyDrops, c.InsertFailed)+conntrackEntriesText(&c))
	}
	add("CONNTRACK", ct, len(s.Conntrack))

	drops := slices.Clone(s.Drops.ByReason)
	slices.SortStableFunc(drops, func(a, b aggregate.DropCount) int { return cmp.Compare(b.Count, a.Count) })
	var dr []string
	for _, d := range drops[:min(len(drops), panelRows)] {
		who := ""
		if d.PID != 0 {
			who = fmt.Sprintf(" %d/%s", d.PID, d.Comm)
		}
		dr = append(dr, fmt.Sprintf("%s %d (netns %s%s)", d.Reason, d.Count, o.netnsName(d.NetNS), who))
	}
	for _, o := range s.Drops.ListenOverflows[:min(len(s.Drops.ListenOverflows), panelRows)] {
		dr = append(dr, fmt.Sprintf("LISTEN_OVERFLOW %s %d (%d/%s, backlog %d)", o.Addr, o.Overflows, o.PID, o.Comm, o.Backlog))
	}
	add("DROPS", dr, len(drops)+len(s.Drops.ListenOverflows))

	var cf []string
	for _, f := range s.ConnectFailures[:min(len(s.ConnectFailures), panelRows)] {
		cf = append(cf, fmt.Sprintf("%d/%s -> %s %s", f.PID, f.Comm, f.Destination, countsText(f.Counts)))
	}
	add("CONNECT FAILED", cf, len(s.ConnectFailures))

	// Unix paths whose queues overflow (EAGAIN: a saturated receiver)
	// first, then by failures: a path nobody serves (glibc's tries of an
	// absent nscd, ENOENT by the thousand) must not push them out.
	unixPaths := slices.Clone(s.Unix)
	count := func(u *aggregate.UnixPathStats, keep func(errno string) bool) uint64 {
		var n uint64
		for _, cs := range [][]aggregate.UnixCaller{u.Callers, u.DgramSendFailures} {
			for _, c := range cs {
				for k, v := range c.Counts {
					if keep(k) {
						n += v
					}
				}
			}
		}
		return n
	}
	failed := func(u *aggregate.UnixPathStats) uint64 { return count(u, func(k string) bool { return k != "OK" }) }
	eagain := func(u *aggregate.UnixPathStats) uint64 { return count(u, func(k string) bool { return k == "EAGAIN" }) }
	slices.SortStableFunc(unixPaths, func(a, b aggregate.UnixPathStats) int {
		return cmp.Or(cmp.Compare(eagain(&b), eagain(&a)), cmp.Compare(failed(&b), failed(&a)))
	})
	var ux []string
	for i := range unixPaths[:min(len(unixPaths), panelRows)] {
		u := &unixPaths[i]
		if len(u.DgramSendFailures) > 0 {
			ux = append(ux, dgramText(u))
			continue
		}
		ux = append(ux, unixText(u, failed(u)))
	}
	add("UNIX", ux, len(unixPaths))
	return out
}

// unixText renders a stream path: its listener's queue when a round of
// the Unix listeners saw one ("queue 2/1 (44/php-fpm)"), else "no
// listener sampled", and the failed connects.
func unixText(u *aggregate.UnixPathStats, failed uint64) string {
	listener := "no listener sampled"
	if u.ListenerPID != 0 || u.Backlog != 0 {
		listener = fmt.Sprintf("queue %d/%d (%s)", u.Queue, u.Backlog, procText(u.ListenerPID, u.ListenerComm))
	}
	return fmt.Sprintf("%s %s failed %d", u.Path, listener, failed)
}

// procText renders "44/php-fpm", or "owner unknown" for pid 0.
func procText(pid uint32, comm string) string {
	if pid == 0 {
		return "owner unknown"
	}
	return fmt.Sprintf("%d/%s", pid, comm)
}

// dgramText renders a datagram path's failed sends: "/dev/log dgram sends
// failed EAGAIN 812 (3 senders, most 4242/app)".
func dgramText(u *aggregate.UnixPathStats) string {
	sum := map[string]uint64{}
	var top aggregate.UnixCaller
	var topN uint64
	for _, c := range u.DgramSendFailures {
		var n uint64
		for k, v := range c.Counts {
			sum[k] += v
			n += v
		}
		if n > topN {
			top, topN = c, n
		}
	}
	path := u.Path
	if path == "" {
		path = "(gone peer)"
	}
	return fmt.Sprintf("%s dgram sends failed %s (%d senders, most %d/%s)", path, countsText(sum), len(u.DgramSendFailures), top.PID, top.Comm)
}

// countsText renders counts by errno name, largest first: "ECONNREFUSED 20 ETIMEDOUT 1".
func countsText(m map[string]uint64) string {
	keys := slices.Collect(maps.Keys(m))
	slices.SortFunc(keys, func(a, b string) int { return cmp.Or(cmp.Compare(m[b], m[a]), cmp.Compare(a, b)) })
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%s %d", k, m[k])
	}
	return b.String()
}

// conntrackEntriesText renders a namespace's entry table, when the entry
// events are followed: TCP entries by conntrack state, the processes whose
// flows hold most entries, and event losses.
func conntrackEntriesText(c *aggregate.ConntrackNSSnapshot) string {
	var b strings.Builder
	if len(c.ByState) > 0 {
		b.WriteString("; " + countsText(c.ByState))
	}
	n := 0
	for _, p := range c.TopProcesses {
		if p.Entries == 0 || n == panelRows {
			continue
		}
		if n == 0 {
			b.WriteString("; top")
		}
		fmt.Fprintf(&b, " %d/%s %d", p.PID, p.Comm, p.Entries)
		n++
	}
	if c.Lost > 0 {
		fmt.Fprintf(&b, "; lost %d, resynced", c.Lost)
	}
	return b.String()
}
