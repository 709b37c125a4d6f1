package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/conntracer/conntracer/internal/testenv"
)

// dashboardPanel is what the test reads of a Grafana panel.
type dashboardPanel struct {
	Type, Title string
	Targets     []struct{ Expr, LegendFormat string }
	Options     struct {
		Legend *struct{ ShowLegend bool }
	}
}

func readDashboard(t *testing.T) []dashboardPanel {
	t.Helper()
	b, err := os.ReadFile("../../deploy/grafana/conntracer-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct{ Panels []dashboardPanel }
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	return d.Panels
}

// promSeries evaluates expr now and returns the label sets of its result.
func promSeries(t *testing.T, base, expr string) []map[string]string {
	t.Helper()
	resp, err := http.Get(base + "/api/v1/query?query=" + url.QueryEscape(expr))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		Status, Error string
		Data          struct {
			Result []struct{ Metric map[string]string }
		}
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatal(err)
	}
	if body.Status != "success" {
		t.Fatalf("query %s: %s", expr, body.Error)
	}
	out := make([]map[string]string, len(body.Data.Result))
	for i, r := range body.Data.Result {
		out[i] = r.Metric
	}
	return out
}

// orOperands splits expr at its top-level `or`s.
func orOperands(expr string) []string {
	var out []string
	depth, start := 0, 0
	for i := 0; i < len(expr); i++ {
		switch expr[i] {
		case '(', '{', '[':
			depth++
		case ')', '}', ']':
			depth--
		}
		if depth == 0 && strings.HasPrefix(expr[i:], " or ") {
			out = append(out, strings.TrimSpace(expr[start:i]))
			start = i + 4
		}
	}
	return append(out, strings.TrimSpace(expr[start:]))
}

var legendLabel = regexp.MustCompile(`\{\{\s*(\w+)\s*\}\}`)

// legend renders a Grafana legend format; without one Grafana shows the
// whole label set.
func legend(format string, labels map[string]string) string {
	if format == "" {
		return fmt.Sprint(labels)
	}
	return legendLabel.ReplaceAllStringFunc(format, func(m string) string {
		return labels[legendLabel.FindStringSubmatch(m)[1]]
	})
}

// mayBeEmpty are the dashboard's queries whose series exist only during
// an incident this test does not stage, each with the reason.
var mayBeEmpty = map[string]string{
	"Conntrack drops /s (table full)":         "the table never fills here",
	"Ephemeral port use, busiest destination": "only with a destination's ports in use at the sample",
	"CLOSE_WAIT by process":                   "no server here leaves a connection half-closed",
	"Connect latency p99":                     "needs --connect-latency",
	"Listen overflows /s":                     "no accept queue overflows here",
	"Unix backlog overflows (EAGAIN) /s":      "no Unix backlog overflows here",
	"Active findings":                         "no finding fires here",
}

// TestDashboardQueriesAgainstPrometheus: Debian's Prometheus scrapes a
// running `tracer serve` while connections come and go in a namespace
// whose conntrack table is in use; every query of the Grafana dashboard
// is evaluated there as the panel would. Each query returns every series
// it promises (no operand of an `or` hidden by another's identical label
// set), each panel's legends tell its series apart and name only labels
// the series have, every panel sets a legend, and only the queries of
// incidents not staged here may come back empty.
func TestDashboardQueriesAgainstPrometheus(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTool(t, "prometheus")
	testenv.RequireTool(t, "nft")
	ns := testenv.NewNetNS(t)
	testenv.TrackConntrack(t, ns, "dashtest")
	r := startServe(t, "--netns", ns.Name, "--sample-interval", "200ms", "--netns-interval", "300ms",
		"--reconcile-interval", "1s", "--unix-interval", "0")
	base := startPrometheus(t, r.addr)

	srv := testenv.StartServer(t, ns, "dashsrv")
	plan := []testenv.Conn{{Addr: srv.Addr4(), Req: 100, Resp: 1000, Mode: testenv.ClientCloses, Hold: true}}
	for range 20 {
		plan = append(plan, testenv.Conn{Addr: srv.Addr4(), Req: 100, Resp: 1000, Mode: testenv.ClientCloses})
	}
	plan = append(plan, testenv.Conn{Addr: "127.0.0.1:1", Req: 1, Resp: 1, Mode: testenv.ClientCloses}) // refused
	c := testenv.StartClient(t, ns, "dashcli", plan)
	defer c.Release(t)
	// Enough scrapes after the traffic for every rate over the window.
	testenv.WaitFor(t, 20*time.Second, "conntrack entries in Prometheus", func() (bool, string) {
		v, ok, s := promQuery(t, base, fmt.Sprintf(`sum(conntracer_conntrack_entries{netns="%d"})`, ns.Inode))
		return ok && v > 0, s
	})
	time.Sleep(3 * time.Second)

	const window = "10s"
	panels, queries := 0, 0
	for _, p := range readDashboard(t) {
		if p.Type == "row" {
			if strings.Contains(strings.ToLower(p.Title), "field note") {
				t.Errorf("row %q: name the incident, not a section of a document operators do not have", p.Title)
			}
			continue
		}
		panels++
		if p.Options.Legend == nil || !p.Options.Legend.ShowLegend {
			t.Errorf("panel %q sets no legend", p.Title)
		}
		legends := map[string]string{}
		empty := true
		for _, tg := range p.Targets {
			queries++
			expr := strings.NewReplacer(`$instance`, `.+`, `$__rate_interval`, window).Replace(tg.Expr)
			got := promSeries(t, base, expr)
			if len(got) > 0 {
				empty = false
			}
			if ops := orOperands(expr); len(ops) > 1 {
				// `or` keeps a right-hand series only if no left-hand one
				// has the same labels: operands over identical label sets
				// show the first alone.
				promised := 0
				for _, op := range ops {
					promised += len(promSeries(t, base, op))
				}
				if len(got) < promised {
					t.Errorf("panel %q: the `or` of %d queries returns %d of their %d series: the others have the same labels and are never shown",
						p.Title, len(ops), len(got), promised)
				}
			}
			for _, m := range got {
				for _, l := range legendLabel.FindAllStringSubmatch(tg.LegendFormat, -1) {
					if _, ok := m[l[1]]; !ok {
						t.Errorf("panel %q: legend %q names label %s, which series %v lacks", p.Title, tg.LegendFormat, l[1], m)
					}
				}
				name := legend(tg.LegendFormat, m)
				if prev, dup := legends[name]; dup {
					t.Errorf("panel %q: two series both read %q in the legend (%s and %v)", p.Title, name, prev, m)
				}
				legends[name] = fmt.Sprint(m)
			}
		}
		if _, ok := mayBeEmpty[p.Title]; empty && !ok {
			t.Errorf("panel %q: no series (queries %q)", p.Title, p.Targets)
		}
		if !empty {
			names := slices.Sorted(func(yield func(string) bool) {
				for n := range legends {
					if !yield(n) {
						return
					}
				}
			})
			t.Logf("%s: %s", p.Title, strings.Join(names, "; "))
		}
	}
	if panels < 20 || queries < 20 {
		t.Errorf("%d panels, %d queries read: the dashboard's file was not read as meant", panels, queries)
	}
}
