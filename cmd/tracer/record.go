package main

import (
	"context"
	"fmt"
	"io"
)

// runRecord is `tracer record -o FILE [--duration D] [flags]`: the
// session of `tracer top` without the view, writing what the aggregator
// applies to FILE.
func runRecord(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("tracer record")
	cfg := &topConfig{liveConfig: *newLiveConfig()}
	fs.BoolVarP(&cfg.help, "help", "h", false, "show this help")
	fs.StringVarP(&cfg.session.Record.Path, "out", "o", "", "the recording file (mode 0600)")
	duration := fs.Duration("duration", 0, "stop after this long (e.g. 1h); 0 runs until Ctrl-C or SIGTERM")
	addRecordFlags(fs, &cfg.liveConfig)
	// -o is the file here: --record is the same flag under top's name,
	// and there is no view to turn off.
	for _, name := range []string{"record", "no-view"} {
		_ = fs.MarkHidden(name)
	}
	finish := addSessionFlags(fs, &cfg.liveConfig)
	addWebFlags(fs, &cfg.web, false)
	if err := fs.Parse(args); err != nil {
		return usageError{err}
	}
	if cfg.help {
		fmt.Fprintf(stdout, "Usage: tracer record -o FILE [--duration D] [flags]\n\n"+
			"Records every event the aggregator of `tracer top` applies (connections, connect\n"+
			"failures, drops, conntrack statistics, socket-table rounds as changes) to FILE,\n"+
			"mode 0600, in zstd blocks sealed every second. Read it with `tracer report FILE`\n"+
			"or `tracer export FILE`. Rotation: --record-rotate-size, --record-rotate-age,\n"+
			"--record-keep.\n\nFlags:\n%s", fs.FlagUsages())
		return nil
	}
	if fs.NArg() > 0 {
		return usagef("unexpected argument %q", fs.Arg(0))
	}
	if cfg.session.Record.Path == "" && cfg.session.Record.Flight <= 0 {
		return usagef("tracer record needs -o FILE (where to write the recording)")
	}
	if err := finish(); err != nil {
		return err
	}
	if err := cfg.web.validate(); err != nil {
		return err
	}
	cfg.noView = true
	if *duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *duration)
		defer cancel()
	}
	return runLive(ctx, cfg, stdout, stderr)
}
