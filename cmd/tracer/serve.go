package main

import (
	"context"
	"fmt"
	"io"
)

// runServe is `tracer serve`: the daemon. The same probe, event loop and
// samplers as `tracer top`, with /metrics instead of a terminal view.
// Metrics are computed at scrape time from the snapshot the event loop
// last published (internal/export.Collector).
func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := parseServeFlags(args, stdout)
	if err != nil || cfg.help {
		return err
	}
	l, err := openLive(cfg.session, cfg.probe, cfg.web, stderr)
	if err != nil {
		return err
	}
	defer l.close()
	fmt.Fprintf(stderr, "tracer: serve: tracing TCP connections [%s]; %d already open; Ctrl-C or SIGTERM to stop\n",
		l.attachSummary(), l.sess.Existing())
	return l.run(ctx)
}

func parseServeFlags(args []string, stdout io.Writer) (*liveConfig, error) {
	fs := newFlagSet("tracer serve")
	cfg := newLiveConfig()
	fs.BoolVarP(&cfg.help, "help", "h", false, "show this help")
	addWebFlags(fs, &cfg.web, true)
	finish := addSessionFlags(fs, cfg)
	// --record and --flight-recorder: the black box beside the exporter.
	addRecordFlags(fs, cfg)
	if err := fs.Parse(args); err != nil {
		return nil, usageError{err}
	}
	if cfg.help {
		fmt.Fprintf(stdout, "Usage: tracer serve [flags]\n\nRun as a daemon: trace continuously and serve Prometheus metrics at /metrics\n(default %s), with a landing page at /. TLS and basic auth through\n--web.config.file (exporter-toolkit's format). Metric reference: README.md.\n\nFlags:\n%s", defaultListenAddress, fs.FlagUsages())
		return cfg, nil
	}
	if fs.NArg() > 0 {
		return nil, usagef("unexpected argument %q", fs.Arg(0))
	}
	if cfg.web.listen == "" {
		return nil, usagef("--web.listen-address must not be empty: serve exists to serve /metrics")
	}
	if err := finish(); err != nil {
		return nil, err
	}
	return cfg, cfg.web.validate()
}
