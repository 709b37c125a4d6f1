// Package report turns recordings into post-mortems: it replays the
// recorded events through the same aggregate.Aggregator (and so the same
// findings rules) that ran live, and renders what it found as text, JSON
// or a self-contained HTML page.
package report

import (
	"github.com/conntracer/conntracer/internal/aggregate"

	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/conntracer/conntracer/internal/events"
	"github.com/conntracer/conntracer/internal/record"
)

// Options select what is replayed.
type Options struct {
	Since, Until time.Time // zero: open-ended
	NetNS        uint32    // 0: every namespace
	Thresholds   aggregate.Thresholds
}

// File is one recording read.
type File struct {
	Path   string        `json:"path"`
	Header record.Header `json:"header"`
	Stats  record.Stats  `json:"stats"`
}

// Step is one point of the timeline: counts over the step, gauges at its
// end. The step's length is chosen from the recording's (Report.Step).
type Step struct {
	Start          time.Time         `json:"start"`
	Opened         uint64            `json:"opened"` // connections whose close was recorded in this step, handshake seen
	Closed         uint64            `json:"closed"`
	FailedConnects uint64            `json:"failed_connects"`
	Drops          map[string]uint64 `json:"drops"`             // by reason
	TimeWait       uint32            `json:"time_wait"`         // at the end of the step
	ConntrackFill  float64           `json:"conntrack_fill"`    // fullest namespace, at the end of the step
	ConntrackCount uint64            `json:"conntrack_entries"` // its entries
	// open connections (TIME_WAIT not included) per process at the end
	// of the step, by the index of Report.Processes; only processes
	// with connections open then.
	open map[int]uint32
}

// steps are the timeline's possible steps, each a multiple of the one
// before, so that a finer timeline merges into a coarser one.
var steps = []time.Duration{time.Second, 5 * time.Second, 15 * time.Second, time.Minute, 5 * time.Minute,
	15 * time.Minute, time.Hour, 6 * time.Hour, 24 * time.Hour}

// maxSteps is the most points a timeline has: the step grows (steps)
// when a recording would give more. A 15 s recording gets 15 points of a
// second, a 3 min incident 180, an hour 240 of 15 s.
const maxSteps = 300

// maxTrackedProcesses bounds the processes whose open connections the
// timeline follows (the first seen with connections open).
const maxTrackedProcesses = 4096

// ProcessKey names a process across the timeline.
type ProcessKey struct {
	PID  uint32 `json:"pid"`
	Comm string `json:"comm"`
}

// FindingSpan is a finding and the time it was first and last seen.
type FindingSpan = aggregate.Finding

// Report is a replayed recording.
type Report struct {
	Files    []File        `json:"files"`
	From     time.Time     `json:"from"`
	To       time.Time     `json:"to"`
	Events   uint64        `json:"events"`
	Step     time.Duration `json:"-"` // of the timeline
	Timeline []Step        `json:"timeline"`
	// Processes are the processes the timeline follows (Step.open).
	Processes []ProcessKey `json:"-"`
	procIndex map[ProcessKey]int
	Findings  []FindingSpan       `json:"findings"` // every finding seen, with first and last seen
	Final     *aggregate.Snapshot `json:"-"`        // the aggregate at the end
}

// Replay reads the recordings in order (each as far as it is intact) and
// applies their events to one aggregator.
func Replay(paths []string, o Options) (*Report, error) {
	agg := aggregate.NewAggregator(o.Thresholds)
	// Drop events carry the names they had live; the port lookup of
	// port_exhaustion needs the live kernel and is left out.
	agg.SetConnectRules(aggregate.DefaultConnectRules(), nil)
	rep := &Report{Step: steps[0], procIndex: map[ProcessKey]int{}}
	spans := map[string]*aggregate.Finding{}
	var cur *Step
	var ev events.Event
	closeStep := func() {
		if cur == nil {
			return
		}
		s := agg.Snapshot()
		cur.TimeWait = s.TimeWait.Total
		for _, c := range s.Conntrack {
			if c.Fill >= cur.ConntrackFill {
				cur.ConntrackFill, cur.ConntrackCount = c.Fill, c.Entries
			}
		}
		cur.open = rep.openByProcess(s)
		mergeFindings(spans, s.Findings)
		rep.Timeline = append(rep.Timeline, *cur)
		cur = nil
		if len(rep.Timeline) > maxSteps {
			rep.coarsen()
		}
	}
	for _, p := range paths {
		r, err := record.Open(p)
		if err != nil {
			return nil, err
		}
		for {
			now, err := r.Next(&ev)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				r.Close()
				return nil, err
			}
			if (!o.Since.IsZero() && now.Before(o.Since)) || (!o.Until.IsZero() && now.After(o.Until)) {
				continue
			}
			if ns := ev.NetNS(); o.NetNS != 0 && ns != 0 && ns != o.NetNS {
				continue
			}
			m := now.Truncate(rep.Step)
			if cur != nil && !m.Equal(cur.Start) {
				closeStep()
				m = now.Truncate(rep.Step) // the step may have grown
			}
			if n := len(rep.Timeline); cur == nil && n > 0 && rep.Timeline[n-1].Start.Equal(m) {
				// The timeline just became coarser: its last step is
				// still open.
				last := rep.Timeline[n-1]
				rep.Timeline, cur = rep.Timeline[:n-1], &last
			}
			if cur == nil {
				cur = &Step{Start: m, Drops: map[string]uint64{}}
			}
			count(cur, &ev)
			agg.Apply(&ev, now)
			if rep.Events == 0 {
				rep.From = now
			}
			rep.To = now
			rep.Events++
		}
		rep.Files = append(rep.Files, File{Path: p, Header: r.Header(), Stats: r.Stats()})
		r.Close()
	}
	closeStep()
	rep.Final = agg.Snapshot()
	mergeFindings(spans, rep.Final.Findings)
	for _, f := range spans {
		rep.Findings = append(rep.Findings, *f)
	}
	slices.SortFunc(rep.Findings, func(a, b aggregate.Finding) int { return a.Since.Compare(b.Since) })
	if rep.Events == 0 {
		return rep, fmt.Errorf("no events in the recording(s) within the time range")
	}
	return rep, nil
}

// openByProcess reads the open connections (TIME_WAIT not included) of
// each process from a snapshot.
func (r *Report) openByProcess(s *aggregate.Snapshot) map[int]uint32 {
	out := map[int]uint32{}
	for i := range s.Processes {
		p := &s.Processes[i]
		n := p.Open() - p.TimeWait
		k := ProcessKey{PID: p.PID, Comm: p.Comm}
		idx, ok := r.procIndex[k]
		if !ok {
			if n == 0 || len(r.Processes) >= maxTrackedProcesses {
				continue
			}
			idx = len(r.Processes)
			r.Processes = append(r.Processes, k)
			r.procIndex[k] = idx
		}
		out[idx] = n
	}
	return out
}

// coarsen moves the timeline to the next step: counts add up, gauges
// (TIME_WAIT, conntrack, open connections) are those at the end.
func (r *Report) coarsen() {
	i := slices.Index(steps, r.Step)
	if i < 0 || i+1 == len(steps) {
		return
	}
	r.Step = steps[i+1]
	var out []Step
	for _, s := range r.Timeline {
		s.Start = s.Start.Truncate(r.Step)
		if n := len(out); n > 0 && out[n-1].Start.Equal(s.Start) {
			m := &out[n-1]
			m.Opened += s.Opened
			m.Closed += s.Closed
			m.FailedConnects += s.FailedConnects
			for k, v := range s.Drops {
				m.Drops[k] += v
			}
			m.TimeWait, m.ConntrackFill, m.ConntrackCount, m.open = s.TimeWait, s.ConntrackFill, s.ConntrackCount, s.open
			continue
		}
		out = append(out, s)
	}
	r.Timeline = out
}

// OpenSeries returns the open connections (TIME_WAIT not included) of
// process k at each step of the timeline.
func (r *Report) OpenSeries(k ProcessKey) []uint32 {
	out := make([]uint32, len(r.Timeline))
	idx, ok := r.procIndex[k]
	if !ok {
		return out
	}
	for i := range r.Timeline {
		out[i] = r.Timeline[i].open[idx]
	}
	return out
}

// count adds an event to its step's counters.
func count(m *Step, ev *events.Event) {
	switch ev.Kind {
	case events.KindConnClosed:
		m.Closed++
		if ev.Conn.SeenOpen {
			m.Opened++
		}
	case events.KindConnect:
		if ev.Connect.Failed() {
			m.FailedConnects += max(ev.Connect.Count, 1)
		}
	case events.KindDrop:
		m.Drops[ev.Drop.ReasonName]++
	}
}

func mergeFindings(spans map[string]*aggregate.Finding, fs []aggregate.Finding) {
	for i := range fs {
		f := fs[i]
		k := fmt.Sprint(f.Kind, f.PID, f.Remote, f.Path, f.NetNS)
		if s, ok := spans[k]; ok {
			if f.Since.Before(s.Since) {
				s.Since = f.Since
			}
			if f.Last.After(s.Last) {
				s.Last, s.Message, s.Evidence = f.Last, f.Message, f.Evidence
			}
			continue
		}
		spans[k] = &f
	}
}
