package report

import (
	"github.com/conntracer/conntracer/internal/aggregate"

	"fmt"
	"html"
	"strings"

	"github.com/conntracer/conntracer/internal/events"
)

// counterRow is one counter of one source: its last value and its change
// over the recording (gauges change both ways).
type counterRow struct {
	source, name string
	value        uint64
	delta        int64
}

// counterRows lists the counters that are not zero or changed (and the
// tracer's losses, even when none), in the
// order of their names, source by source. The kernel counters are what
// `nstat` and /proc/net/sockstat showed inside each namespace; the
// tracer's say what it lost.
func counterRows(cs []aggregate.CounterSnapshot) []counterRow {
	var out []counterRow
	for _, c := range cs {
		src := fmt.Sprintf("netns %d", c.NetNS)
		names := events.KernelCounterNames[:]
		if c.Kind == events.KindTracerCounters.String() {
			src, names = "tracer "+c.Object, events.TracerCounterNames[:]
			if c.Object == "" {
				src = "tracer reader"
			}
		}
		tracer := c.Kind == events.KindTracerCounters.String()
		for _, n := range names {
			// Losses are shown even when none: "0 lost" is an answer.
			shown := tracer && (n == "Lost" && c.Object != "" || n == "Undecodable" && c.Object == "")
			if shown || c.Values[n] != 0 || c.Deltas[n] != 0 {
				out = append(out, counterRow{src, n, c.Values[n], c.Deltas[n]})
			}
		}
	}
	return out
}

func writeCountersText(b *strings.Builder, cs []aggregate.CounterSnapshot) {
	b.WriteString("\nkernel and tracer counters (last value, change over the recording)\n")
	rows := counterRows(cs)
	if len(rows) == 0 {
		b.WriteString("  none recorded\n")
	}
	for _, r := range rows {
		fmt.Fprintf(b, "  %-20s %-28s %14d %+12d\n", r.source, r.name, r.value, r.delta)
	}
}

func writeCountersHTML(b *strings.Builder, cs []aggregate.CounterSnapshot) {
	b.WriteString("<h2>Kernel and tracer counters</h2>\n<table id=\"counters\"><tr><th>source</th><th>counter</th><th>last value</th><th>change over the recording</th></tr>\n")
	for _, r := range counterRows(cs) {
		fmt.Fprintf(b, "<tr><td>%s</td><td>%s</td><td>%d</td><td>%+d</td></tr>\n", html.EscapeString(r.source), html.EscapeString(r.name), r.value, r.delta)
	}
	b.WriteString("</table>\n")
}
