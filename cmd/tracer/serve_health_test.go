package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/conntracer/conntracer/internal/export"
	"github.com/conntracer/conntracer/internal/testenv"
)

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// A wedged event loop fails /-/healthy: the Health the loop stopped
// updating reports progress older than the limit, and the endpoint
// answers 503 (the landing page the probes used would answer 200).
func TestHealthyFailsWhenTheEventLoopStops(t *testing.T) {
	h, err := export.NewHealth(prometheus.NewRegistry(), nil)
	if err != nil {
		t.Fatal(err)
	}
	m := &metricsServer{mux: http.NewServeMux()}
	const stall = 300 * time.Millisecond
	m.serveHealth(h.Progress, stall)
	srv := httptest.NewServer(m.mux)
	defer srv.Close()

	if code, body := httpGet(t, srv.URL+readyPath); code != http.StatusServiceUnavailable {
		t.Errorf("ready before the loop ran: %d %q, want 503", code, body)
	}
	h.Set(export.HealthCounts{}) // the loop runs once, then wedges
	if code, body := httpGet(t, srv.URL+healthyPath); code != http.StatusOK {
		t.Errorf("healthy right after progress: %d %q, want 200", code, body)
	}
	if code, body := httpGet(t, srv.URL+readyPath); code != http.StatusOK {
		t.Errorf("ready right after progress: %d %q, want 200", code, body)
	}
	time.Sleep(stall + 100*time.Millisecond)
	code, body := httpGet(t, srv.URL+healthyPath)
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "no progress") {
		t.Errorf("healthy after the loop stopped: %d %q, want 503 naming the stall", code, body)
	}
}

// `tracer serve` as an operator meets it: --version, the build info
// metric, a landing page without links to handlers that do not exist,
// 404 for unknown paths, health endpoints fed by the running event loop,
// hook label values that are names (no braces, spaces or remarks), and
// the conntrack entries hook reported as served by ctnetlink where the
// in-kernel hooks cannot load (not "off": its alert would fire for ever).
func TestServeVersionHealthLanding(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), []string{"--version"}, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^tracer \S+, built with go`).MatchString(out.String()) {
		t.Errorf("tracer --version: %q", out.String())
	}
	testenv.RequireRoot(t)
	r := startServe(t, "--sample-interval", "200ms")
	base := "http://" + r.addr

	testenv.WaitFor(t, 10*time.Second, "ready", func() (bool, string) {
		code, body := httpGet(t, base+readyPath)
		return code == http.StatusOK, body
	})
	if code, body := httpGet(t, base+healthyPath); code != http.StatusOK || !strings.HasPrefix(body, "ok") {
		t.Errorf("%s: %d %q", healthyPath, code, body)
	}
	code, landing := httpGet(t, base+"/")
	if code != http.StatusOK || strings.Contains(landing, "debug/pprof") || !strings.Contains(landing, healthyPath) {
		t.Errorf("landing page: %d, want 200 linking %s and nothing under /debug/pprof:\n%s", code, healthyPath, landing)
	}
	for _, p := range []string{"/debug/pprof/heap", "/metrcs"} {
		if code, _ := httpGet(t, base+p); code != http.StatusNotFound {
			t.Errorf("%s: %d, want 404", p, code)
		}
	}
	_, metrics := httpGet(t, base+"/metrics")
	want := regexp.QuoteMeta(strings.TrimSuffix(strings.Fields(out.String())[1], ","))
	if !regexp.MustCompile(`(?m)^conntracer_build_info\{.*version="` + want + `".*\} 1$`).MatchString(metrics) {
		t.Errorf("no conntracer_build_info with version %s in:\n%s", want, metricLines([]byte(metrics), "conntracer_build_info"))
	}
	attached := string(metricLines([]byte(metrics), "conntracer_program_attached{"))
	for _, m := range regexp.MustCompile(`hook="([^"]*)"`).FindAllStringSubmatch(attached, -1) {
		if !regexp.MustCompile(`^[a-z0-9_]+(/[a-z0-9_]+)?$`).MatchString(m[1]) {
			t.Errorf("hook label %q is not a clean name", m[1])
		}
	}
	if !strings.Contains(attached, `hook="sock/inet_sock_set_state"`) || !strings.Contains(attached, `hook="syscalls/sys_exit_sendto"`) {
		t.Errorf("hooks missing:\n%s", attached)
	}
	if strings.Contains(attached, `hook="conntrack_entries",mode="off"`) {
		t.Errorf("the conntrack entries hook is reported off although ctnetlink serves them:\n%s", attached)
	}
	t.Logf("attachments:\n%s", attached)
}
