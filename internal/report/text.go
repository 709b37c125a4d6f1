package report

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/conntracer/conntracer/internal/export"
	"github.com/conntracer/conntracer/internal/record"
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
	fmt.Fprintf(&b, "timeline (per %s)\n", r.Step)
	fmt.Fprintf(&b, "%-8s %8s %8s %10s %12s %8s  %s\n", "TIME", "OPENED", "CLOSED", "TIME_WAIT", "CONNTRACK", "FAILED", "DROPS")
	for _, m := range r.Timeline {
		fmt.Fprintf(&b, "%-8s %8d %8d %10d %11.1f%% %8d  %s\n", r.stepLabel(m.Start), m.Opened, m.Closed, m.TimeWait, 100*m.ConntrackFill, m.FailedConnects, dropList(m.Drops))
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
	b.WriteString(export.RenderText(r.Final, export.ViewOptions{Sort: export.ColOpens, Width: 160, Identities: r.names.lookup(), NetNSNames: r.names.netnsLookup()}))
	_, err := io.WriteString(w, b.String())
	return err
}

// stepLabel prints a step's start as precisely as the step needs.
func (r *Report) stepLabel(t time.Time) string {
	if r.Step < time.Minute {
		return t.Local().Format("15:04:05")
	}
	return t.Local().Format("15:04")
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
// format of `tracer top --once --output json`. One schema: snake_case
// names, a finding's fields as in the final document's findings, and null
// for a time that is not known (never 0001-01-01T00:00:00Z).
type Document struct {
	Files       []FileJSON       `json:"files"`
	From        *time.Time       `json:"from"`
	To          *time.Time       `json:"to"`
	Events      uint64           `json:"events"`
	Totals      Totals           `json:"totals"`
	StepSeconds float64          `json:"step_seconds"` // of the timeline
	Timeline    []Step           `json:"timeline"`
	Findings    []FindingJSON    `json:"findings"`
	Final       *export.Document `json:"final"`
}

// FileJSON is a recording read: its header and what the reader read and
// skipped.
type FileJSON struct {
	Path          string       `json:"path"`
	Header        HeaderJSON   `json:"header"`
	Blocks        int          `json:"blocks"`
	Events        uint64       `json:"events"`
	LostBytes     int64        `json:"lost_bytes"`
	LostBlocks    int          `json:"lost_blocks"`
	RoundsSkipped int          `json:"rounds_skipped"`
	Damage        []DamageJSON `json:"damage"`
}

// HeaderJSON is a recording's header; the boot time a wall-clock time
// (its nanoseconds since 1970 are above 2^53, which jq rounds).
type HeaderJSON struct {
	Version  int        `json:"version"`
	Created  *time.Time `json:"created"`
	Host     string     `json:"host"`
	Kernel   string     `json:"kernel"`
	Tracer   string     `json:"tracer"`
	BootTime *time.Time `json:"boot_time"`
	Command  string     `json:"command"`
}

func headerJSON(h record.Header) HeaderJSON {
	j := HeaderJSON{Version: h.Version, Created: nullTime(h.Created), Host: h.Host, Kernel: h.Kernel, Tracer: h.Tracer, Command: h.Command}
	if h.BootTimeNs != 0 {
		j.BootTime = nullTime(time.Unix(0, h.BootTimeNs))
	}
	return j
}

// DamageJSON is a stretch of a recording that could not be read.
type DamageJSON struct {
	Offset int64  `json:"offset"`
	Length int64  `json:"length"`
	Why    string `json:"why"`
}

// FindingJSON is a finding with when it was first and last seen: the
// fields and names of export.Finding, times null when unknown.
type FindingJSON struct {
	Kind     string `json:"kind"`
	PID      uint32 `json:"pid"`
	Comm     string `json:"comm"`
	Remote   string `json:"remote"`
	Path     string `json:"path,omitempty"`
	Workload string `json:"workload,omitempty"` // the process's container or pod, from the recording
	NetNS    uint32 `json:"netns"`
	// NetNSName: the namespace's name as the recording has it (the pod,
	// container, `ip netns` name or "host" owning it).
	NetNSName string             `json:"netns_name,omitempty"`
	Evidence  map[string]float64 `json:"evidence"`
	Since     *time.Time         `json:"since"`
	Last      *time.Time         `json:"last"`
	Message   string             `json:"message"`
	Remedy    string             `json:"remedy"`
}

// nullTime is t in UTC, nil when t is not known.
func nullTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	t = t.UTC()
	return &t
}

// Document returns the JSON form.
func (r *Report) Document() *Document {
	d := &Document{From: nullTime(r.From), To: nullTime(r.To), Events: r.Events, Totals: r.Totals(),
		StepSeconds: r.Step.Seconds(), Timeline: r.Timeline, Findings: []FindingJSON{},
		Final: export.NewDocument(r.Final, time.Second, nil)}
	d.Final.Name(r.Final, r.names.lookup())
	d.Final.NameNetNS(r.names.netnsLookup())
	for _, f := range r.Files {
		fj := FileJSON{Path: f.Path, Header: headerJSON(f.Header), Blocks: f.Stats.Blocks, Events: f.Stats.Events, LostBytes: f.Stats.LostBytes,
			LostBlocks: f.Stats.LostBlocks, RoundsSkipped: f.Stats.RoundsSkipped, Damage: []DamageJSON{}}
		for _, dm := range f.Stats.Damage {
			fj.Damage = append(fj.Damage, DamageJSON(dm))
		}
		d.Files = append(d.Files, fj)
	}
	for _, f := range r.Findings {
		d.Findings = append(d.Findings, FindingJSON{Kind: f.Kind, PID: f.PID, Comm: f.Comm, Remote: f.Remote, Path: f.Path,
			NetNS: f.NetNS, Evidence: f.Evidence, Since: nullTime(f.Since), Last: nullTime(f.Last), Message: f.Message, Remedy: f.Remedy,
			Workload: r.names.workload(f.PID), NetNSName: r.names.netns[f.NetNS]})
	}
	return d
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
