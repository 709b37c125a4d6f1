package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/exporter-toolkit/web"
	"github.com/spf13/pflag"

	"github.com/conntracer/conntracer/internal/export"
	"github.com/conntracer/conntracer/internal/version"
)

// defaultListenAddress is the exporter's port: 9477, unclaimed in the
// Prometheus default port allocations wiki when chosen.
const defaultListenAddress = ":9477"

// webConfig is what the --web.* and --metrics.* flags decide.
type webConfig struct {
	listen     string // "" : no /metrics
	configFile string // exporter-toolkit web config: TLS and basic auth
	metrics    export.MetricsOptions
}

// addWebFlags defines the exporter's flags, named by Prometheus exporter
// convention. serve: the listen address defaults to :9477 (`tracer
// serve`); elsewhere metrics are served only when it is given.
func addWebFlags(fs *pflag.FlagSet, w *webConfig, serve bool) {
	def := ""
	help := "serve /metrics on this address (e.g. " + defaultListenAddress + "); empty: do not serve"
	if serve {
		def, help = defaultListenAddress, "address to serve /metrics and the landing page on"
	}
	w.metrics = export.DefaultMetricsOptions()
	fs.StringVar(&w.listen, "web.listen-address", def, help)
	fs.StringVar(&w.configFile, "web.config.file", "", "exporter-toolkit web configuration file enabling TLS and/or basic auth (https://github.com/prometheus/exporter-toolkit/blob/master/docs/web-configuration.md)")
	fs.IntVar(&w.metrics.TopProcesses, "metrics.top-processes", w.metrics.TopProcesses, "processes with series of their own (by comm and cgroup), the most active; the rest are folded into comm=\"other\"")
	fs.IntVar(&w.metrics.Destinations, "metrics.destinations", 0, "export port use of this many busiest destinations, labelled by address (0: none; opt-in because of cardinality)")
}

func (w *webConfig) validate() error {
	if m := w.metrics; m.TopProcesses < 0 || m.Destinations < 0 || m.TopProcesses > maxMetricsSeries || m.Destinations > maxMetricsSeries {
		return usagef("--metrics.top-processes and --metrics.destinations must be from 0 to %d (each is several series in every scrape)", maxMetricsSeries)
	}
	if w.configFile != "" {
		if w.listen == "" {
			return usagef("--web.config.file needs --web.listen-address")
		}
		if err := checkWebConfigFile(w.configFile); err != nil {
			return usagef("--web.config.file %s: %v", w.configFile, err)
		}
		if err := web.Validate(w.configFile); err != nil {
			return usagef("--web.config.file %s: %v (see the exporter-toolkit web configuration docs)", w.configFile, err)
		}
	}
	return nil
}

// metricsServer serves /metrics from a non-global registry, plus a
// landing page at /.
type metricsServer struct {
	tls    bool // a web config file is given: TLS may be on
	reg    *prometheus.Registry
	mux    *http.ServeMux
	ln     net.Listener
	srv    *http.Server
	flags  *web.FlagConfig
	logger *slog.Logger
}

// listenMetrics binds the address now, so that a busy port is reported at
// start-up, and returns the server ready to Run.
func listenMetrics(w webConfig, reg *prometheus.Registry, stderr io.Writer) (*metricsServer, error) {
	ln, err := net.Listen("tcp", w.listen)
	if err != nil {
		return nil, fmt.Errorf("--web.listen-address %s: %w (pick a free port)", w.listen, err)
	}
	build := version.Get()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		export.NewBuildInfo(build.Version, build.Revision, build.GoVersion))
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		EnableOpenMetrics: true,
		ErrorHandling:     promhttp.ContinueOnError,
	}))
	landing, err := web.NewLandingPage(web.LandingConfig{
		Name:        "conntracer",
		Description: "eBPF tracer of the TCP connection lifecycle",
		Version:     build.Version,
		Profiling:   "false", // no /debug/pprof handlers: links would answer 404
		Links: []web.LandingLinks{{Address: "/metrics", Text: "Metrics"},
			{Address: healthyPath, Text: "Health (is the event loop moving)"}, {Address: readyPath, Text: "Readiness"}},
	})
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("landing page: %w", err)
	}
	mux.Handle("/", onlyRoot(landing))
	addrs := []string{ln.Addr().String()}
	systemd := false
	handler := slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn})
	srv := &http.Server{Handler: mux, ErrorLog: slog.NewLogLogger(handler, slog.LevelWarn)}
	ln = limitServer(srv, ln, maxMetricsConns) // serve_limits.go
	return &metricsServer{
		tls: w.configFile != "",
		reg: reg,
		mux: mux,
		ln:  ln,
		srv: srv,
		flags: &web.FlagConfig{
			WebListenAddresses: &addrs,
			WebSystemdSocket:   &systemd,
			WebConfigFile:      &w.configFile,
		},
		logger: slog.New(handler),
	}, nil
}

// Addr is the address the server listens on.
func (m *metricsServer) Addr() net.Addr { return m.ln.Addr() }

// URL is the server's base URL, for the start-up line.
func (m *metricsServer) URL() string {
	scheme := "http"
	if m.tls {
		scheme = "http(s)"
	}
	return scheme + "://" + m.ln.Addr().String()
}

// Run serves until ctx is done.
func (m *metricsServer) Run(ctx context.Context) error {
	done := make(chan error, 1)
	go func() { done <- web.ServeMultiple([]net.Listener{m.ln}, m.srv, m.flags, m.logger) }()
	select {
	case err := <-done:
		return fmt.Errorf("serve metrics: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := m.srv.Shutdown(sctx)
	if serr := <-done; serr != nil && !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = serr
	}
	return err
}
