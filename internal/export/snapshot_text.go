package export

import (
	"github.com/conntracer/conntracer/internal/aggregate"

	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/conntracer/conntracer/internal/events"
)

// Column is a sortable column of the view.
type Column string

// The sortable columns, in the order the sort key cycles through them.
const (
	ColOpens     Column = "opens"      // new connections per second (10 s)
	ColCloses    Column = "closes"     // closed connections per second (10 s)
	ColEstab     Column = "estab"      // ESTABLISHED now
	ColCloseWait Column = "close-wait" // CLOSE_WAIT now
	ColTimeWait  Column = "time-wait"  // TIME_WAIT left behind, now
	ColShort     Column = "short"      // share of short-lived connections
	ColPorts     Column = "ports"      // ephemeral port use, share of the range
	ColPID       Column = "pid"
)

var columns = []Column{ColOpens, ColCloses, ColEstab, ColCloseWait, ColTimeWait, ColShort, ColPorts, ColPID}

// Step returns the column n places after c in the cycle (n < 0: before);
// an unknown c gives the first column.
func (c Column) Step(n int) Column {
	for i, x := range columns {
		if x == c {
			return columns[((i+n)%len(columns)+len(columns))%len(columns)]
		}
	}
	return columns[0]
}

// ParseColumn validates a column name.
func ParseColumn(s string) (Column, bool) {
	for _, c := range columns {
		if string(c) == s {
			return c, true
		}
	}
	return "", false
}

// ColumnNames lists the column names for help texts.
func ColumnNames() string {
	names := make([]string, len(columns))
	for i, c := range columns {
		names[i] = string(c)
	}
	return strings.Join(names, ", ")
}

// ViewOptions say what RenderText shows.
type ViewOptions struct {
	Sort    Column
	Remotes bool   // one row per process x remote instead of per process
	Filter  string // substring of comm, pid or remote; "" shows all
	Width   int    // terminal width; lines are cut to it
	Height  int    // terminal height; 0: no limit
	NoHelp  bool
	// Identities names processes' containers and pods: a WORKLOAD column,
	// matched by Filter, and the findings' lines (snapshot_identity.go).
	Identities events.CgroupLookup
	// NetNSNames names network namespaces: a NETNS column (the pod,
	// container, `ip netns` name or "host" owning the connections' namespace,
	// else its inode), matched by Filter.
	NetNSNames events.NetNSLookup
	// Findings lists every finding with its remedy in place of the
	// table (the `f` key).
	Findings bool
}

// row is one line of the table.
type row struct {
	pid      uint32
	comm     string
	remote   string
	opens    float64
	closes   float64
	estab    uint32
	closeW   uint32
	finW2    uint32
	timeW    uint32
	short    float64
	ports    float64
	opened   uint64
	oldestCW time.Duration
	workload string
	netns    string // NETNS column, "" when off
}

func newRow(pid uint32, comm, remote string, c *aggregate.ConnSnapshot, ports float64) row {
	return row{
		pid: pid, comm: comm, remote: remote,
		opens: c.OpenRate[1], closes: c.CloseRate[1],
		estab: c.States[events.TCPEstablished].Count, closeW: c.States[events.TCPCloseWait].Count,
		finW2: c.States[events.TCPFinWait2].Count, timeW: c.TimeWait,
		short: c.ShortLivedShare(), ports: ports, opened: c.Opened,
		oldestCW: c.States[events.TCPCloseWait].OldestAge,
	}
}

func rows(s *aggregate.Snapshot, o *ViewOptions) []row {
	out := make([]row, 0, len(s.Processes))
	f := strings.ToLower(o.Filter)
	for i := range s.Processes {
		p := &s.Processes[i]
		if !o.Remotes {
			r := newRow(p.PID, p.Comm, "", &p.ConnSnapshot, p.PortUse)
			r.workload = o.workload(p.CgroupID)
			r.netns = o.processNetNS(p)
			if f == "" || r.matches(f) {
				out = append(out, r)
			}
			continue
		}
		for j := range p.Remotes {
			rs := &p.Remotes[j]
			var share float64
			if rs.PortRange > 0 {
				share = float64(rs.PortsUsed) / float64(rs.PortRange)
			}
			r := newRow(p.PID, p.Comm, rs.Remote, &rs.ConnSnapshot, share)
			r.workload = o.workload(p.CgroupID)
			if o.NetNSNames != nil {
				r.netns = o.netnsName(rs.Key.NetNS)
			}
			if f == "" || r.matches(f) {
				out = append(out, r)
			}
		}
	}
	slices.SortFunc(out, func(a, b row) int {
		var c int
		switch o.Sort {
		case ColOpens:
			c = cmp.Compare(b.opens, a.opens)
		case ColCloses:
			c = cmp.Compare(b.closes, a.closes)
		case ColEstab:
			c = cmp.Compare(b.estab, a.estab)
		case ColCloseWait:
			c = cmp.Compare(b.closeW, a.closeW)
		case ColTimeWait:
			c = cmp.Compare(b.timeW, a.timeW)
		case ColShort:
			c = cmp.Compare(b.short, a.short)
		case ColPorts:
			c = cmp.Compare(b.ports, a.ports)
		}
		return cmp.Or(c, cmp.Compare(a.pid, b.pid), cmp.Compare(a.remote, b.remote))
	})
	return out
}

func (r *row) matches(f string) bool {
	return strings.Contains(strings.ToLower(r.comm), f) || strings.Contains(fmt.Sprint(r.pid), f) ||
		strings.Contains(r.remote, f) || strings.Contains(strings.ToLower(r.workload), f) ||
		strings.Contains(strings.ToLower(r.netns), f)
}

// RenderText renders a snapshot as text: a summary line, the table sorted
// by o.Sort, the panels of the other concerns, the findings and a help
// line, cut to o.Width x o.Height. It is what the terminal view of
// internal/top draws, what `tracer top --once` prints and what
// `tracer report` ends with.
func RenderText(s *aggregate.Snapshot, o ViewOptions) string {
	var b strings.Builder
	b.Grow(8 << 10)
	rs := rows(s, &o)
	fmt.Fprintf(&b, "tracer top  %s  processes %d  TIME_WAIT %d (unattributed %d)  findings %d  sort: %s\n",
		s.Time.Format("15:04:05"), len(s.Processes), s.TimeWait.Total, s.TimeWait.Unattributed, len(s.Findings), o.Sort)
	head := fmt.Sprintf("%-8s %-15s", "PID", "COMM")
	if o.Remotes {
		head += fmt.Sprintf(" %-28s", "REMOTE")
	}
	head += fmt.Sprintf(" %8s %8s %7s %8s %6s %7s %6s %6s %9s",
		mark("OPEN/s", o.Sort == ColOpens), mark("CLOSE/s", o.Sort == ColCloses), mark("ESTAB", o.Sort == ColEstab),
		mark("CL_WAIT", o.Sort == ColCloseWait), "FIN_W2", mark("T_WAIT", o.Sort == ColTimeWait),
		mark("SHORT", o.Sort == ColShort), mark("PORTS", o.Sort == ColPorts), "OPENED")
	if o.NetNSNames != nil {
		head += fmt.Sprintf("  %-*s", netnsWidth, "NETNS")
	}
	if o.Identities != nil {
		head += "  WORKLOAD"
	}
	if !o.Findings {
		line(&b, head, o.Width)
	}

	findings := s.Findings
	extra := panels(s, &o)
	if o.Findings {
		extra = nil // the findings take the table's place
	}
	// Every line counts against the height: title, header, help, the
	// panels, and the findings with their title and "... and N more".
	// The table's rows get what is left (at least one, unless findings
	// fill the screen), then findings are cut to fit.
	shown := len(findings)
	if !o.Findings {
		shown = min(shown, maxFindings)
	}
	budget := -1
	if o.Height > 0 {
		fixed := 1 + boolInt(!o.Findings) + boolInt(!o.NoHelp) + len(extra)
		if o.Findings {
			// Two lines a finding (its remedy), the title and the "more" line.
			shown = min(shown, max((o.Height-fixed-2)/2, 0))
		} else {
			shown = min(shown, max(o.Height-fixed-1-2, 0)) // keep a row of the table
		}
		budget = max(o.Height-fixed-findingsLines(shown, len(findings)), 0)
	}
	if o.Findings {
		budget = 0
	}
	for i, r := range rs {
		if budget >= 0 && i >= budget {
			break
		}
		l := fmt.Sprintf("%-8d %-15s", r.pid, r.comm)
		if o.Remotes {
			l += fmt.Sprintf(" %-28s", r.remote)
		}
		l += fmt.Sprintf(" %8.1f %8.1f %7d %8d %6d %7d %5.0f%% %5.0f%% %9d",
			r.opens, r.closes, r.estab, r.closeW, r.finW2, r.timeW, 100*r.short, 100*r.ports, r.opened)
		if o.NetNSNames != nil {
			l += fmt.Sprintf("  %-*s", netnsWidth, r.netns)
		}
		if r.workload != "" {
			l += "  " + r.workload
		}
		line(&b, l, o.Width)
	}
	for _, l := range extra {
		line(&b, l, o.Width)
	}
	if len(findings) > 0 {
		line(&b, "FINDINGS (most urgent first)", o.Width)
		for i, f := range findings {
			if i == shown {
				line(&b, fmt.Sprintf("  ... and %d more (f: all findings; tracer top --once --output json lists all)", len(findings)-i), o.Width)
				break
			}
			pid := "-" // no process to name (a drop in softirq)
			if f.PID != 0 {
				pid = strconv.FormatUint(uint64(f.PID), 10)
			}
			line(&b, fmt.Sprintf("  %-21s %s %s  %s", f.Kind, pid, o.findingOwner(s, &f), f.Message), o.Width)
			if o.Findings && f.Remedy != "" {
				line(&b, "      remedy: "+f.Remedy, o.Width)
			}
		}
	}
	if !o.NoHelp {
		filter := ""
		if o.Filter != "" {
			filter = "  filter: " + o.Filter
		}
		line(&b, "s/S: sort  r: process x remote  /: filter  esc: clear  f: findings  q: quit"+filter, o.Width)
	}
	return b.String()
}

// mark flags the sort column with a leading '*': a suffix ran into the
// name ("OPEN/sv").
func mark(name string, sorted bool) string {
	if sorted {
		return "*" + name
	}
	return name
}

// maxFindings is how many findings the table view lists.
const maxFindings = 8

// findingsLines is how many lines the findings take when shown of total
// are listed: their title, the rows, and "... and N more".
func findingsLines(shown, total int) int {
	if total == 0 {
		return 0
	}
	return 1 + shown + boolInt(shown < total)
}

func line(b *strings.Builder, s string, width int) {
	if width > 0 && len(s) > width {
		s = s[:width]
	}
	b.WriteString(s)
	b.WriteByte('\n')
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
