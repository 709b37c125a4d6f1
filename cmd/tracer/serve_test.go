package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/conntracer/conntracer/internal/testenv"
)

// serveRun is `tracer serve` running in the background.
type serveRun struct {
	addr   string // host:port of /metrics
	cancel context.CancelFunc
	done   chan error
	stderr *lineWaiter
}

var servingOn = regexp.MustCompile(`serving metrics on https?://(\S+)/metrics`)

// startServe runs `tracer serve` with args on a free loopback port and
// returns once it is tracing; it stops with the test.
func startServe(t *testing.T, args ...string) *serveRun {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &serveRun{cancel: cancel, done: make(chan error, 1),
		stderr: &lineWaiter{want: "tracer: serve: tracing", ready: make(chan struct{})}}
	go func() {
		r.done <- run(ctx, append([]string{"serve", "--web.listen-address", "127.0.0.1:0"}, args...), os.Stdout, r.stderr)
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-r.done; err != nil {
			t.Errorf("tracer serve: %v\n%s", err, r.stderr)
		}
	})
	select {
	case <-r.stderr.ready:
	case err := <-r.done:
		r.done <- err
		t.Fatalf("tracer serve stopped: %v\n%s", err, r.stderr)
	case <-time.After(30 * time.Second):
		t.Fatalf("tracer serve did not start: %s", r.stderr)
	}
	m := servingOn.FindStringSubmatch(r.stderr.String())
	if m == nil {
		t.Fatalf("no metrics address in: %s", r.stderr)
	}
	r.addr = m[1]
	return r
}

// freePort returns a loopback port nobody listens on now.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startPrometheus runs Debian's Prometheus server scraping target every
// 500 ms, on a free loopback port with its storage in a temp dir, and
// returns its base URL once it is ready.
func startPrometheus(t *testing.T, target string) string {
	t.Helper()
	testenv.RequireTool(t, "prometheus")
	dir := t.TempDir()
	cfg := fmt.Sprintf(`global:
  scrape_interval: 500ms
  scrape_timeout: 400ms
scrape_configs:
  - job_name: conntracer
    static_configs:
      - targets: [%q]
`, target)
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cmd := exec.Command("prometheus", "--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"), "--web.listen-address="+addr,
		"--log.level=warn")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	base := "http://" + addr
	testenv.WaitFor(t, 20*time.Second, "prometheus ready", func() (bool, string) {
		resp, err := http.Get(base + "/-/ready")
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, resp.Status
	})
	return base
}

// promQuery evaluates expr now through Prometheus's HTTP API and returns
// the single sample's value (ok false when the result is empty).
func promQuery(t *testing.T, base, expr string) (float64, bool, string) {
	t.Helper()
	resp, err := http.Get(base + "/api/v1/query?query=" + url.QueryEscape(expr))
	if err != nil {
		return 0, false, err.Error()
	}
	defer resp.Body.Close()
	var body struct {
		Status string
		Error  string
		Data   struct {
			Result []struct {
				Value [2]any
			}
		}
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return 0, false, err.Error()
	}
	if body.Status != "success" {
		t.Fatalf("query %s: %s", expr, body.Error)
	}
	if len(body.Data.Result) != 1 {
		return 0, false, fmt.Sprintf("%d series", len(body.Data.Result))
	}
	s, _ := body.Data.Result[0].Value[1].(string)
	v, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return 0, false, err.Error()
	}
	return v, true, s
}

// TestServePrometheus: a real Prometheus server scrapes a running `tracer
// serve` while traffic flows in a fresh namespace; through its HTTP API
// the counters equal the connections made, and histogram_quantile over
// the lifetime histogram puts the median among the quick connections
// and the 95th percentile among the held ones.
func TestServePrometheus(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTool(t, "prometheus")
	ns := testenv.NewNetNS(t)
	r := startServe(t, "--netns", ns.Name, "--sample-interval", "200ms", "--reconcile-interval", "0",
		"--unix-interval", "0")
	base := startPrometheus(t, r.addr)

	srv := testenv.StartServer(t, ns, "ctmsrv")
	const quick, held = 30, 4
	var plan []testenv.Conn
	for range held {
		plan = append(plan, testenv.Conn{Addr: srv.Addr4(), Req: 100, Resp: 1000, Mode: testenv.ClientCloses, Hold: true})
	}
	for range quick {
		plan = append(plan, testenv.Conn{Addr: srv.Addr4(), Req: 100, Resp: 1000, Mode: testenv.ClientCloses})
	}
	c := testenv.StartClient(t, ns, "ctmcli", plan)
	// The held connections live at least this long: their lifetimes
	// fall in the classic bucket (0.5 s, 2 s].
	time.Sleep(time.Second)
	c.Release(t)
	for _, res := range c.Results {
		if res.Err != "" {
			t.Fatalf("client: %s", res.Err)
		}
	}

	expect := func(expr string, want float64) {
		t.Helper()
		testenv.WaitFor(t, 15*time.Second, expr, func() (bool, string) {
			v, ok, s := promQuery(t, base, expr)
			return ok && v == want, s
		})
	}
	const total = quick + held
	expect(`sum(conntracer_connections_opened_total{comm="ctmcli",role="active"})`, total)
	expect(`sum(conntracer_connections_closed_total{comm="ctmcli",role="active"})`, total)
	expect(`sum(conntracer_connections_closed_total{comm="ctmsrv",role="passive"})`, total)
	expect(`sum(conntracer_connection_lifetime_seconds_count{role="active"})`, total)
	expect(`sum(conntracer_sent_bytes_total{comm="ctmcli"})`, total*(100+testenv.HeaderBytes))

	// Quantiles from the histogram Prometheus stored.
	q := func(phi float64) float64 {
		v, ok, s := promQuery(t, base, fmt.Sprintf(
			`histogram_quantile(%g, sum by (le) (conntracer_connection_lifetime_seconds_bucket{role="active"}))`, phi))
		if !ok {
			t.Fatalf("quantile %g: %s", phi, s)
		}
		return v
	}
	if med := q(0.5); med > 0.125 {
		t.Errorf("median lifetime %g s: want the quick connections' (<= 0.125 s)", med)
	}
	// 4 of 34 are held: the 95th percentile is among them.
	if p95 := q(0.95); p95 <= 0.5 || p95 > 2 {
		t.Errorf("95th percentile lifetime %g s: want the held connections' bucket (0.5, 2] s", p95)
	}
	expect(`conntracer_program_attached{hook="sock/inet_sock_set_state"}`, 1)
}

// startStream runs plain `tracer` with args and /metrics on a free
// loopback port, writing its lines to stdout; it returns the metrics
// address once the tracer is tracing, and stops with the test.
func startStream(t *testing.T, stdout io.Writer, args ...string) (addr string, stderr *lineWaiter) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stderr = &lineWaiter{want: "serving metrics on", ready: make(chan struct{})}
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, append([]string{"--web.listen-address", "127.0.0.1:0"}, args...), stdout, stderr)
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("tracer: %v\n%s", err, stderr)
		}
	})
	select {
	case <-stderr.ready:
	case err := <-done:
		done <- err
		t.Fatalf("tracer stopped: %v\n%s", err, stderr)
	case <-time.After(30 * time.Second):
		t.Fatalf("tracer did not start: %s", stderr)
	}
	addr = servingOn.FindStringSubmatch(stderr.String())[1]
	testenv.WaitFor(t, 10*time.Second, "tracing", func() (bool, string) {
		return strings.Contains(stderr.String(), "tracer: tracing"), stderr.String()
	})
	return addr, stderr
}

// waitForMetric polls /metrics at addr until the lines of metric name
// contain want.
func waitForMetric(t *testing.T, addr, name, want string) {
	t.Helper()
	testenv.WaitFor(t, 10*time.Second, want, func() (bool, string) {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			return false, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		lines := metricLines(b, name)
		return bytes.Contains(lines, []byte(want)), string(lines)
	})
}

// TestStreamServesMetrics: plain `tracer` with --web.listen-address
// prints its lines and serves /metrics from the same events.
func TestStreamServesMetrics(t *testing.T) {
	testenv.RequireRoot(t)
	ns := testenv.NewNetNS(t)
	var stdout lockedBuffer
	addr, _ := startStream(t, &stdout, "--netns", ns.Name)
	srv := testenv.StartServer(t, ns, "ctssrv")
	const n = 5
	plan := make([]testenv.Conn, n)
	for i := range plan {
		plan[i] = testenv.Conn{Addr: srv.Addr4(), Req: 10, Resp: 10, Mode: testenv.ClientCloses}
	}
	testenv.RunClient(t, ns, "ctscli", plan)
	// in conntracer_connections_closed_total, whatever the cgroup
	waitForMetric(t, addr, "conntracer_connections_closed_total", `comm="ctscli",container="",namespace="",pod="",role="active"} 5`)
	testenv.WaitFor(t, 10*time.Second, "stream lines", func() (bool, string) {
		return strings.Count(stdout.String(), "ctscli") >= n, stdout.String()
	})
}

// TestStreamMetricsSeeConnectionsOpenBeforeStart: the stream with
// /metrics is one pipeline, so the start-up scan reaches the aggregator
// behind /metrics too. A connection opened before the tracer started
// counts as an open socket of its owners (both ends, found through
// /proc/PID/fd), and its close is counted under the client with its role;
// its stream lines name the owners too.
func TestStreamMetricsSeeConnectionsOpenBeforeStart(t *testing.T) {
	testenv.RequireRoot(t)
	ns := testenv.NewNetNS(t)
	srv := testenv.StartServer(t, ns, "ctosrv")
	holder := testenv.StartClient(t, ns, "ctoold", []testenv.Conn{
		{Addr: srv.Addr4(), Req: 10, Resp: 10, Mode: testenv.ClientCloses, Hold: true},
	})
	var stdout lockedBuffer
	addr, _ := startStream(t, &stdout, "--netns", ns.Name)
	// Label pairs are sorted by name: cgroup, comm, container, namespace, pod, state.
	waitForMetric(t, addr, "conntracer_sockets", `comm="ctoold",container="",namespace="",pod="",state="ESTABLISHED"} 1`)
	waitForMetric(t, addr, "conntracer_sockets", `comm="ctosrv",container="",namespace="",pod="",state="ESTABLISHED"} 1`)

	holder.Release(t)
	waitForMetric(t, addr, "conntracer_connections_closed_total", `comm="ctoold",container="",namespace="",pod="",role="active"} 1`)
	testenv.WaitFor(t, 10*time.Second, "stream line of the held connection", func() (bool, string) {
		return strings.Contains(stdout.String(), "ctoold"), stdout.String()
	})
}

func metricLines(b []byte, name string) []byte {
	var out []byte
	for _, l := range bytes.Split(b, []byte("\n")) {
		if bytes.HasPrefix(l, []byte(name)) {
			out = append(append(out, l...), '\n')
		}
	}
	return out
}

// lockedBuffer is a bytes.Buffer written by the event loop and read by
// the test.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
