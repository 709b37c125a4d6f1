package main

import (
	"context"
	"fmt"
	"io"
)

// runRecord is `tracer record FILE [--duration D] [flags]`: the session
// of `tracer top` without the view, writing what the aggregator applies
// to FILE.
//
// Everywhere else -o is --output, a format; here it used to be the file.
// The file is now the argument (as in `tracer report FILE`), or --record
// FILE as in top and serve; -o FILE still works, with a note, so that
// command lines written for earlier versions keep recording.
func runRecord(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("tracer record")
	cfg := &topConfig{liveConfig: *newLiveConfig()}
	fs.BoolVarP(&cfg.help, "help", "h", false, "show this help")
	var oldOut string
	fs.StringVarP(&oldOut, "out", "o", "", "the recording file: give it as the argument instead")
	_ = fs.MarkHidden("out")
	duration := fs.Duration("duration", 0, "stop after this long (e.g. 1h); 0 runs until Ctrl-C or SIGTERM")
	addRecordFlags(fs, &cfg.liveConfig)
	_ = fs.MarkHidden("no-view") // there is no view to turn off
	finish := addSessionFlags(fs, &cfg.liveConfig)
	addWebFlags(fs, &cfg.web, false)
	if err := fs.Parse(args); err != nil {
		return usageError{err}
	}
	if cfg.help {
		fmt.Fprintf(stdout, "Usage: tracer record FILE [--duration D] [flags]\n\n"+
			"Records every event the aggregator of `tracer top` applies (connections, connect\n"+
			"failures, drops, conntrack statistics, socket-table rounds as changes) to FILE,\n"+
			"mode 0600, in zstd blocks sealed every second, until --duration, Ctrl-C or\n"+
			"SIGTERM; then says how many events and bytes it wrote. A write failure (full\n"+
			"disk) is reported at once; tracing goes on and the exit status is 1. Read it\n"+
			"with `tracer report FILE` or `tracer export FILE`. Rotation: --record-rotate-size,\n"+
			"--record-rotate-age, --record-keep. (-o FILE, the form of earlier versions,\n"+
			"still works.)\n\nFlags:\n%s", fs.FlagUsages())
		return nil
	}
	files := fs.Args()
	if oldOut != "" {
		fmt.Fprintf(stderr, "tracer: note: -o is the output format in the other commands: write `tracer record %s`\n", oldOut)
		files = append(files, oldOut)
	}
	if cfg.session.Record.Path != "" {
		files = append(files, cfg.session.Record.Path)
	}
	switch {
	case len(files) > 1:
		return usagef("tracer record writes one file, got %q", files)
	case len(files) == 1:
		cfg.session.Record.Path = files[0]
	case cfg.session.Record.Flight <= 0:
		return usagef("tracer record needs FILE (where to write the recording), e.g. tracer record incident.ctrec")
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
