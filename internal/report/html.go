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
// charts at the report's step (go-echarts options, ECharts inlined), the
// open connections of the processes behind the findings over time, the
// findings and the busiest processes.
func (r *Report) WriteHTML(w io.Writer) error {
	xs := make([]string, len(r.Timeline))
	for i, m := range r.Timeline {
		xs[i] = m.Start.Local().Format("01-02 15:04:05")
		if r.Step >= time.Minute {
			xs[i] = m.Start.Local().Format("01-02 15:04")
		}
	}
	series := func(f func(m *Step) float64) []opts.LineData {
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
			charts.WithLegendOpts(opts.Legend{Top: "25px", Type: "scroll"}),
			charts.WithGridOpts(opts.Grid{Top: "60px"}),
			charts.WithAnimation(false),
		)
		l.SetXAxis(xs)
		return l
	}
	per := "per " + r.Step.String()
	churn := line("churn", "Connections "+per)
	churn.AddSeries("opened", series(func(m *Step) float64 { return float64(m.Opened) })).
		AddSeries("closed", series(func(m *Step) float64 { return float64(m.Closed) }))
	procs := line("procs", "Open connections per process (TIME_WAIT not included)")
	for _, k := range r.chartedProcesses(8) {
		vals := r.OpenSeries(k)
		data := make([]opts.LineData, len(vals))
		for i, v := range vals {
			data[i] = opts.LineData{Value: v}
		}
		procs.AddSeries(fmt.Sprintf("%d %s", k.PID, k.Comm), data)
	}
	tw := line("timewait", "TIME_WAIT sockets")
	tw.AddSeries("time_wait", series(func(m *Step) float64 { return float64(m.TimeWait) }))
	ct := line("conntrack", "Conntrack fill, fullest namespace (%)")
	ct.AddSeries("fill", series(func(m *Step) float64 { return 100 * m.ConntrackFill }))
	fails := line("failures", "Failed connects and drops by reason, "+per)
	fails.AddSeries("failed connects", series(func(m *Step) float64 { return float64(m.FailedConnects) }))
	reasons := map[string]bool{}
	for _, m := range r.Timeline {
		for k := range m.Drops {
			reasons[k] = true
		}
	}
	for _, k := range slices.Sorted(maps.Keys(reasons)) {
		fails.AddSeries("drop "+k, series(func(m *Step) float64 { return float64(m.Drops[k]) }))
	}

	var b strings.Builder
	t := r.Totals()
	b.WriteString("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>conntracer report</title>\n")
	// Tables fit the page: long messages wrap instead of scrolling sideways.
	b.WriteString("<style>body{font-family:sans-serif;margin:2em;max-width:1200px}" +
		"table{border-collapse:collapse;width:100%;table-layout:fixed}" +
		"td,th{border:1px solid #ccc;padding:2px 6px;text-align:left;vertical-align:top;overflow-wrap:anywhere}" +
		"table.findings col.kind{width:9em}table.findings col.when{width:5.5em}table.findings col.proc{width:9em}table.findings col.where{width:10em}</style>\n")
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
	fmt.Fprintf(&b, "<p>From %s to %s (%s, one point %s), %d events: %d connections opened, %d closed, %d failed connects, %d packet drops, %d processes.</p>\n",
		r.From.Format(time.RFC3339), r.To.Format(time.RFC3339), r.To.Sub(r.From).Round(time.Second), per, r.Events, t.Opened, t.Closed, t.FailedConnects, t.Drops, t.Processes)
	for _, l := range []*charts.Line{churn, procs, tw, ct, fails} {
		s := l.RenderSnippet()
		b.WriteString(s.Element)
		b.WriteString(s.Script)
	}
	b.WriteString("<h2>Findings</h2>\n<table class=\"findings\"><colgroup><col class=\"kind\"><col class=\"when\"><col class=\"when\"><col class=\"proc\"><col class=\"where\"><col><col></colgroup>\n" +
		"<tr><th>kind</th><th>first seen</th><th>last seen</th><th>process</th><th>where</th><th>what</th><th>usual fix</th></tr>\n")
	for _, f := range r.Findings {
		fmt.Fprintf(&b, "<tr><td>%s</td><td title=\"%s\">%s</td><td title=\"%s\">%s</td><td>%d %s</td><td>%s%s</td><td>%s</td><td>%s</td></tr>\n",
			html.EscapeString(f.Kind), rfc3339(f.Since), clock(f.Since), rfc3339(f.Last), clock(f.Last), f.PID, html.EscapeString(f.Comm),
			html.EscapeString(f.Remote), html.EscapeString(f.Path), html.EscapeString(f.Message), html.EscapeString(f.Remedy))
	}
	b.WriteString("</table>\n<h2>Processes at the end</h2>\n<table><tr><th>pid</th><th>comm</th><th>opened</th><th>closed</th><th>open (not TIME_WAIT)</th><th>in TIME_WAIT</th></tr>\n")
	final := slices.Clone(r.Final.Processes)
	slices.SortFunc(final, func(a, c aggregate.ProcessSnapshot) int { return cmp.Compare(c.Opened, a.Opened) })
	for i := range final[:min(len(final), 50)] {
		p := &final[i]
		fmt.Fprintf(&b, "<tr><td>%d</td><td>%s</td><td>%d</td><td>%d</td><td>%d</td><td>%d</td></tr>\n", p.PID, html.EscapeString(p.Comm), p.Opened, p.Closed, p.Open()-p.TimeWait, p.TimeWait)
	}
	b.WriteString("</table>\n")
	writeCountersHTML(&b, r.Final.KernelCounters)
	// Says in the DOM what the charts drew (tests read it headless): the
	// canvases, and the per-process chart's series and their points.
	b.WriteString(`<p id="status"></p><script>(function(){
var s = "charts drawn: " + document.querySelectorAll("canvas").length;
var c = echarts.getInstanceByDom(document.getElementById("procs"));
if (c) { var series = c.getOption().series || []; var pts = 0, nz = 0;
  series.forEach(function(x){ (x.data || []).forEach(function(d){ pts++; var v = (d && d.value !== undefined) ? d.value : d; if (v > 0) nz++; }); });
  s += "; process series: " + series.length + ", points: " + pts + ", non-zero: " + nz; }
s += "; page width: " + document.documentElement.scrollWidth + " of " + document.documentElement.clientWidth;
document.getElementById("status").textContent = s; })();</script>` + "\n")
	b.WriteString("</body></html>\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// rfc3339 prints t, "unknown" when the rule did not set it.
func rfc3339(t time.Time) string {
	if t.IsZero() {
		return "unknown"
	}
	return t.Format(time.RFC3339)
}

// chartedProcesses picks the processes of the per-process chart: those
// named by findings first, then the most connections open at any step,
// n in all.
func (r *Report) chartedProcesses(n int) []ProcessKey {
	var out []ProcessKey
	seen := map[ProcessKey]bool{}
	for _, f := range r.Findings {
		k := ProcessKey{PID: f.PID, Comm: f.Comm}
		if _, ok := r.procIndex[k]; ok && f.PID != 0 && !seen[k] && len(out) < n {
			seen[k] = true
			out = append(out, k)
		}
	}
	peak := make([]uint32, len(r.Processes))
	for i := range r.Timeline {
		for idx, v := range r.Timeline[i].open {
			peak[idx] = max(peak[idx], v)
		}
	}
	order := make([]int, len(r.Processes))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, c int) int { return cmp.Compare(peak[c], peak[a]) })
	for _, i := range order {
		if len(out) >= n || peak[i] == 0 {
			break
		}
		if k := r.Processes[i]; !seen[k] {
			seen[k] = true
			out = append(out, k)
		}
	}
	return out
}
