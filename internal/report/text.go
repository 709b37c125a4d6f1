package report

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/conntracer/conntracer/internal/export"
)

// Totals are the report's headline numbers, from the final aggregate.
type Totals struct {
	Opened         uint64 `json:"opened"`
	Closed         uint64 `json:"closed"`
	FailedConnects uint64 `json:"failed_connects"`
	Drops          uint64 `json:"drops"`
	Processes      int    `json:"processes"`
}

// Totals sums the final aggregate's processes and the timeline.
func (r *Report) Totals() Totals {
	var t Totals
	for i := range r.Final.Processes {
		t.Opened += r.Final.Processes[i].Opened
		t.Closed += r.Final.Processes[i].Closed
	}
	t.Processes = len(r.Final.Processes)
	for _, m := range r.Timeline {
		t.FailedConnects += m.FailedConnects
		for _, n := range m.Drops {
			t.Drops += n
		}
	}
	return t
}

// WriteText prints the post-mortem for a terminal.
func (r *Report) WriteText(w io.Writer) error {
	var b strings.Builder
	for _, f := range r.Files {
		fmt.Fprintf(&b, "recording %s: host %s, kernel %s, tracer %s; %d blocks", f.Path, f.Header.Host, f.Header.Kernel, f.Header.Tracer, f.Stats.Blocks)
		if f.Stats.LostBytes > 0 || f.Stats.LostBlocks > 0 {
			fmt.Fprintf(&b, "; DAMAGED: %d bytes, %d blocks lost", f.Stats.LostBytes, f.Stats.LostBlocks)
			for _, d := range f.Stats.Damage {
				fmt.Fprintf(&b, "\n  at byte %d: %d bytes skipped (%s)", d.Offset, d.Length, d.Why)
			}
		}
		if f.Stats.RoundsSkipped > 0 {
			fmt.Fprintf(&b, "; %d socket-table rounds skipped after the damage", f.Stats.RoundsSkipped)
		}
		b.WriteByte('\n')
	}
	t := r.Totals()
	fmt.Fprintf(&b, "\nfrom %s to %s (%s), %d events\n", r.From.Format(time.RFC3339), r.To.Format(time.RFC3339), r.To.Sub(r.From).Round(time.Second), r.Events)
	fmt.Fprintf(&b, "totals: %d connections opened, %d closed, %d failed connects, %d packet drops, %d processes\n\n", t.Opened, t.Closed, t.FailedConnects, t.Drops, t.Processes)
	b.WriteString("timeline (per minute)\n")
	fmt.Fprintf(&b, "%-6s %8s %8s %10s %12s %8s  %s\n", "TIME", "OPENED", "CLOSED", "TIME_WAIT", "CONNTRACK", "FAILED", "DROPS")
	for _, m := range r.Timeline {
		fmt.Fprintf(&b, "%-6s %8d %8d %10d %11.1f%% %8d  %s\n", m.Start.Local().Format("15:04"), m.Opened, m.Closed, m.TimeWait, 100*m.ConntrackFill, m.FailedConnects, dropList(m.Drops))
	}
	b.WriteString("\nfindings\n")
	if len(r.Findings) == 0 {
		b.WriteString("  none\n")
	}
	for _, f := range r.Findings {
		fmt.Fprintf(&b, "  %s  %s .. %s  pid %d %s %s%s: %s\n", f.Kind, clock(f.Since), clock(f.Last), f.PID, r.names.owner(f.PID, f.Comm), f.Remote, f.Path, f.Message)
	}
	writeCountersText(&b, r.Final.KernelCounters)
	b.WriteString("\nat the end of the recording\n")
	b.WriteString(export.RenderText(r.Final, export.ViewOptions{Sort: export.ColOpens, Width: 160, Identities: r.names.lookup()}))
	_, err := io.WriteString(w, b.String())
	return err
}

func dropList(m map[string]uint64) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s=%d", k, m[k]))
	}
	return strings.Join(parts, " ")
}

// Document is the JSON form of a report: the recordings, the timeline,
// the findings with first and last seen, and the final aggregate in the
// format of `tracer top --once --output json`.
type Document struct {
	Files    []File           `json:"files"`
	From     time.Time        `json:"from"`
	To       time.Time        `json:"to"`
	Events   uint64           `json:"events"`
	Totals   Totals           `json:"totals"`
	Timeline []Minute         `json:"timeline"`
	Findings []FindingSpan    `json:"findings"`
	Final    *export.Document `json:"final"`
}

// Document returns the JSON form.
func (r *Report) Document() *Document {
	final := export.NewDocument(r.Final, time.Second, nil)
	final.Name(r.Final, r.names.lookup())
	return &Document{Files: r.Files, From: r.From, To: r.To, Events: r.Events, Totals: r.Totals(),
		Timeline: r.Timeline, Findings: r.Findings, Final: final}
}

// WriteJSON writes the JSON form.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r.Document())
}

// clock prints a time of day, "-" for a time the rule did not set.
func clock(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Local().Format("15:04:05")
}
