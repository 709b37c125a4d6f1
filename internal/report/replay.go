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

// Minute is one row of the timeline.
type Minute struct {
	Start          time.Time         `json:"start"`
	Opened         uint64            `json:"opened"` // connections whose close was recorded in this minute, handshake seen
	Closed         uint64            `json:"closed"`
	FailedConnects uint64            `json:"failed_connects"`
	Drops          map[string]uint64 `json:"drops"`             // by reason
	TimeWait       uint32            `json:"time_wait"`         // at the end of the minute
	ConntrackFill  float64           `json:"conntrack_fill"`    // fullest namespace, at the end of the minute
	ConntrackCount uint64            `json:"conntrack_entries"` // its entries
}

// FindingSpan is a finding and the time it was first and last seen.
type FindingSpan = aggregate.Finding

// Report is a replayed recording.
type Report struct {
	Files    []File              `json:"files"`
	From     time.Time           `json:"from"`
	To       time.Time           `json:"to"`
	Events   uint64              `json:"events"`
	Timeline []Minute            `json:"timeline"`
	Findings []FindingSpan       `json:"findings"` // every finding seen, with first and last seen
	Final    *aggregate.Snapshot `json:"-"`        // the aggregate at the end
}

// Replay reads the recordings in order (each as far as it is intact) and
// applies their events to one aggregator.
func Replay(paths []string, o Options) (*Report, error) {
	agg := aggregate.NewAggregator(o.Thresholds)
	// Drop events carry the names they had live; the port lookup of
	// port_exhaustion needs the live kernel and is left out.
	agg.SetConnectRules(aggregate.DefaultConnectRules(), nil)
	rep := &Report{}
	spans := map[string]*aggregate.Finding{}
	var cur *Minute
	var ev events.Event
	closeMinute := func() {
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
		mergeFindings(spans, s.Findings)
		rep.Timeline = append(rep.Timeline, *cur)
		cur = nil
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
			m := now.Truncate(time.Minute)
			if cur != nil && !m.Equal(cur.Start) {
				closeMinute()
			}
			if cur == nil {
				cur = &Minute{Start: m, Drops: map[string]uint64{}}
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
	closeMinute()
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

// count adds an event to its minute's counters.
func count(m *Minute, ev *events.Event) {
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
