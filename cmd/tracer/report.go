package main

import (
	"github.com/conntracer/conntracer/internal/aggregate"

	"fmt"
	"io"
	"time"

	"github.com/conntracer/conntracer/internal/report"
)

// runReport is `tracer report FILE...`: replay recordings through the
// aggregator and findings of the live view and print a post-mortem.
func runReport(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("tracer report")
	var (
		help   = fs.BoolP("help", "h", false, "show this help")
		output = fs.StringP("output", "o", "text", "text, json or html (one self-contained page, charts drawn offline)")
		since  = fs.String("since", "", "only events at or after this time (RFC 3339, e.g. 2026-11-22T01:00:00Z, or 15:04 today)")
		until  = fs.String("until", "", "only events at or before this time")
		netns  = fs.String("netns", "", "only this network namespace: its inode number or a name in /run/netns")
	)
	th := aggregate.DefaultThresholds()
	if err := fs.Parse(args); err != nil {
		return usageError{err}
	}
	if *help {
		fmt.Fprintf(stdout, "Usage: tracer report FILE... [flags]\n\nReplays recordings (tracer record, --record, --flight-recorder) through the\nsame aggregation and findings as tracer top: time range, totals, a per-minute\ntimeline (churn, TIME_WAIT, conntrack fill, drops by reason, failed connects),\ntop processes and destinations, findings with first and last seen. Damaged\nfiles are read as far as they are intact and the damage is reported.\n\nFlags:\n%s", fs.FlagUsages())
		return nil
	}
	if fs.NArg() == 0 {
		return usagef("tracer report needs at least one recording file")
	}
	o := report.Options{Thresholds: th}
	var err error
	if o.Since, err = parseWhen(*since); err != nil {
		return usagef("--since: %v", err)
	}
	if o.Until, err = parseWhen(*until); err != nil {
		return usagef("--until: %v", err)
	}
	if *netns != "" {
		if o.NetNS, err = parseNetNS(*netns); err != nil {
			return usageError{err}
		}
	}
	switch *output {
	case "text", "json", "html":
	default:
		return usagef("unknown output format %q: use text, json or html", *output)
	}
	rep, err := report.Replay(fs.Args(), o)
	if err != nil {
		return err
	}
	for _, f := range rep.Files {
		if f.Stats.LostBytes > 0 || f.Stats.LostBlocks > 0 {
			fmt.Fprintf(stderr, "tracer: warning: %s is damaged: %d bytes (%d blocks) could not be read; the report covers the rest\n", f.Path, f.Stats.LostBytes, f.Stats.LostBlocks)
		}
	}
	switch *output {
	case "json":
		return rep.WriteJSON(stdout)
	case "html":
		return rep.WriteHTML(stdout)
	}
	return rep.WriteText(stdout)
}

// parseWhen reads an RFC 3339 time, or HH:MM[:SS] today (local time).
func parseWhen(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	for _, layout := range []string{"15:04:05", "15:04"} {
		if t, err := time.ParseInLocation(layout, s, time.Local); err == nil {
			y, m, d := time.Now().Date()
			return time.Date(y, m, d, t.Hour(), t.Minute(), t.Second(), 0, time.Local), nil
		}
	}
	return time.Time{}, fmt.Errorf("%q: use RFC 3339 (2026-11-22T01:00:00Z) or HH:MM", s)
}
