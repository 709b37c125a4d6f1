package main

import (
	"fmt"
	"net/http"
	"time"
)

// The health endpoints, named as Prometheus names its own: probes of the
// DaemonSet call them.
const (
	healthyPath = "/-/healthy"
	readyPath   = "/-/ready"
)

// stallAfter is how long the event loop may go without handing over its
// counts before /-/healthy fails. A live loop does at least every poll
// interval (20 ms by default) and at most twice a second; ten seconds
// leaves room for a stop-the-world pause on a loaded node, not for a
// wedged loop.
const stallAfter = 10 * time.Second

// serveHealth adds the health endpoints: /-/healthy answers 503 once the
// event loop has made no progress for stall (a wedged loop; the landing
// page would still answer 200), /-/ready also until the loop first ran.
// progress is export.Health.Progress.
func (m *metricsServer) serveHealth(progress func() (time.Time, bool), stall time.Duration) {
	check := func(needStarted bool) http.HandlerFunc {
		return func(w http.ResponseWriter, _ *http.Request) {
			last, started := progress()
			age := time.Since(last).Round(time.Millisecond)
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			switch {
			case needStarted && !started:
				w.WriteHeader(http.StatusServiceUnavailable)
				fmt.Fprintf(w, "starting: the event loop has not run yet (%s)\n", age)
			case age > stall:
				w.WriteHeader(http.StatusServiceUnavailable)
				fmt.Fprintf(w, "stalled: the event loop has made no progress for %s (limit %s)\n", age, stall)
			default:
				fmt.Fprintf(w, "ok: the event loop made progress %s ago\n", age)
			}
		}
	}
	m.mux.Handle(healthyPath, check(false))
	m.mux.Handle(readyPath, check(true))
}

// onlyRoot serves h at / and 404 elsewhere: the mux sends every path
// nothing else claims to /, and a landing page answering 200 for any
// path hides typos in scrape and probe configurations.
func onlyRoot(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		h.ServeHTTP(w, r)
	})
}
