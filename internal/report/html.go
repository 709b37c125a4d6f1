package report

import (
	"github.com/conntracer/conntracer/internal/aggregate"

	"cmp"
	_ "embed"
	"fmt"
	"html"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/go-echarts/go-echarts/v2/charts"
	"github.com/go-echarts/go-echarts/v2/opts"
)

// echartsJS is inlined in every HTML report: the page must render with no
// network (assets/README.md says where it comes from).
//
//go:embed assets/echarts.min.js
var echartsJS string

// WriteHTML writes the report as one self-contained HTML page: timeline
// charts (go-echarts options, ECharts inlined), the findings and the
// busiest processes.
func (r *Report) WriteHTML(w io.Writer) error {
	xs := make([]string, len(r.Timeline))
	for i, m := range r.Timeline {
		xs[i] = m.Start.Local().Format("01-02 15:04")
	}
	series := func(f func(m *Minute) float64) []opts.LineData {
		out := make([]opts.LineData, len(r.Timeline))
		for i := range r.Timeline {
			out[i] = opts.LineData{Value: f(&r.Timeline[i])}
		}
		return out
	}
	line := func(id, title string) *charts.Line {
		l := charts.NewLine()
		l.SetGlobalOptions(
			charts.WithInitializationOpts(opts.Initialization{ChartID: id, Width: "900px", Height: "280px", Renderer: "canvas"}),
			charts.WithTitleOpts(opts.Title{Title: title}),
			charts.WithTooltipOpts(opts.Tooltip{Trigger: "axis"}),
			charts.WithLegendOpts(opts.Legend{Top: "25px"}),
			charts.WithAnimation(false),
		)
		l.SetXAxis(xs)
		return l
	}
	churn := line("churn", "Connections per minute")
	churn.AddSeries("opened", series(func(m *Minute) float64 { return float64(m.Opened) })).
		AddSeries("closed", series(func(m *Minute) float64 { return float64(m.Closed) }))
	tw := line("timewait", "TIME_WAIT sockets")
	tw.AddSeries("time_wait", series(func(m *Minute) float64 { return float64(m.TimeWait) }))
	ct := line("conntrack", "Conntrack fill, fullest namespace (%)")
	ct.AddSeries("fill", series(func(m *Minute) float64 { return 100 * m.ConntrackFill }))
	fails := line("failures", "Failed connects and drops by reason, per minute")
	fails.AddSeries("failed connects", series(func(m *Minute) float64 { return float64(m.FailedConnects) }))
	reasons := map[string]bool{}
	for _, m := range r.Timeline {
		for k := range m.Drops {
			reasons[k] = true
		}
	}
	for _, k := range slices.Sorted(maps.Keys(reasons)) {
		fails.AddSeries("drop "+k, series(func(m *Minute) float64 { return float64(m.Drops[k]) }))
	}

	var b strings.Builder
	t := r.Totals()
	b.WriteString("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>conntracer report</title>\n")
	b.WriteString("<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}</style>\n")
	b.WriteString("<script>")
	// A literal "</script>" inside the library would end the tag early.
	b.WriteString(strings.ReplaceAll(echartsJS, "</script", "<\\/script"))
	b.WriteString("</script>\n</head><body>\n<h1>Connection post-mortem</h1>\n")
	for _, f := range r.Files {
		fmt.Fprintf(&b, "<p>%s: host %s, kernel %s, tracer %s, %d blocks", html.EscapeString(f.Path), html.EscapeString(f.Header.Host),
			html.EscapeString(f.Header.Kernel), html.EscapeString(f.Header.Tracer), f.Stats.Blocks)
		if f.Stats.LostBytes > 0 || f.Stats.LostBlocks > 0 {
			fmt.Fprintf(&b, " <b>damaged: %d bytes, %d blocks lost</b>", f.Stats.LostBytes, f.Stats.LostBlocks)
		}
		b.WriteString("</p>\n")
	}
	fmt.Fprintf(&b, "<p>From %s to %s, %d events: %d connections opened, %d closed, %d failed connects, %d packet drops, %d processes.</p>\n",
		r.From.Format(time.RFC3339), r.To.Format(time.RFC3339), r.Events, t.Opened, t.Closed, t.FailedConnects, t.Drops, t.Processes)
	for _, l := range []*charts.Line{churn, tw, ct, fails} {
		s := l.RenderSnippet()
		b.WriteString(s.Element)
		b.WriteString(s.Script)
	}
	b.WriteString("<h2>Findings</h2>\n<table><tr><th>kind</th><th>first seen</th><th>last seen</th><th>process</th><th>where</th><th>what</th><th>usual fix</th></tr>\n")
	for _, f := range r.Findings {
		fmt.Fprintf(&b, "<tr><td>%s</td><td>%s</td><td>%s</td><td>%d %s</td><td>%s%s</td><td>%s</td><td>%s</td></tr>\n",
			html.EscapeString(f.Kind), f.Since.Format(time.RFC3339), f.Last.Format(time.RFC3339), f.PID, html.EscapeString(f.Comm),
			html.EscapeString(f.Remote), html.EscapeString(f.Path), html.EscapeString(f.Message), html.EscapeString(f.Remedy))
	}
	b.WriteString("</table>\n<h2>Processes at the end</h2>\n<table><tr><th>pid</th><th>comm</th><th>opened</th><th>closed</th><th>open now</th></tr>\n")
	procs := slices.Clone(r.Final.Processes)
	slices.SortFunc(procs, func(a, c aggregate.ProcessSnapshot) int { return cmp.Compare(c.Opened, a.Opened) })
	for i := range procs[:min(len(procs), 50)] {
		p := &procs[i]
		fmt.Fprintf(&b, "<tr><td>%d</td><td>%s</td><td>%d</td><td>%d</td><td>%d</td></tr>\n", p.PID, html.EscapeString(p.Comm), p.Opened, p.Closed, p.Open())
	}
	b.WriteString("</table>\n")
	writeCountersHTML(&b, r.Final.KernelCounters)
	// Says in the DOM that the charts drew (tests read it headless).
	b.WriteString(`<p id="status"></p><script>document.getElementById("status").textContent = "charts drawn: " + document.querySelectorAll("canvas").length;</script>` + "\n")
	b.WriteString("</body></html>\n")
	_, err := io.WriteString(w, b.String())
	return err
}
