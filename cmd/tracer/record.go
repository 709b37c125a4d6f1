package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/conntracer/conntracer/internal/bootclock"
	"github.com/conntracer/conntracer/internal/record"
)

// runRecord is `tracer record -o FILE [--duration D] [top flags]`: the
// event and sampler loops of `tracer top` without the view, writing what
// the aggregator applies to FILE.
func runRecord(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var out string
	var duration time.Duration
	rest := []string{"--no-view"}
	for i := 0; i < len(args); i++ {
		a := args[i]
		val := func() (string, error) {
			if k := strings.IndexByte(a, '='); k >= 0 {
				return a[k+1:], nil
			}
			if i+1 >= len(args) {
				return "", usagef("%s needs a value", a)
			}
			i++
			return args[i], nil
		}
		var err error
		switch {
		case a == "-o" || a == "--out" || strings.HasPrefix(a, "--out="):
			out, err = val()
		case a == "--duration" || strings.HasPrefix(a, "--duration="):
			var v string
			if v, err = val(); err == nil {
				duration, err = time.ParseDuration(v)
			}
		case a == "-h" || a == "--help":
			fmt.Fprint(stdout, "Usage: tracer record -o FILE [--duration D] [flags of tracer top]\n\n"+
				"Records every event the aggregator of `tracer top` applies (connections, connect\n"+
				"failures, drops, conntrack statistics, socket-table rounds as changes) to FILE,\n"+
				"mode 0600, in zstd blocks sealed every second. Read it with `tracer report FILE`\n"+
				"or `tracer export FILE`. Rotation: --record-rotate-size, --record-rotate-age,\n"+
				"--record-keep. See `tracer top --help` for the other flags.\n")
			return nil
		default:
			rest = append(rest, a)
		}
		if err != nil {
			return usagef("%v", err)
		}
	}
	if out == "" && !hasFlag(rest, "--flight-recorder") {
		return usagef("tracer record needs -o FILE (where to write the recording)")
	}
	if out != "" {
		rest = append(rest, "--record", out)
	}
	if duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, duration)
		defer cancel()
	}
	return runTop(ctx, rest, stdout, stderr)
}

func hasFlag(args []string, name string) bool {
	for _, a := range args {
		if a == name || strings.HasPrefix(a, name+"=") {
			return true
		}
	}
	return false
}

// recordHeader describes this host for a recording's header.
func recordHeader() record.Header {
	h := record.Header{Tracer: tracerVersion(), Command: strings.Join(os.Args, " ")}
	h.Host, _ = os.Hostname()
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		h.Kernel = strings.TrimSpace(string(b))
	}
	h.BootTimeNs = bootclock.WallOffsetNs()
	return h
}
