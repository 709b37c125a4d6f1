// Command tracer traces the life of every TCP connection on the box and
// names the process behind each one.
//
//	sudo tracer                 # one line per finished connection
//	sudo tracer --output json   # the same as JSON lines
//
// See `tracer --help` and the README for the filters and options.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/cilium/ebpf"
	"github.com/conntracer/conntracer/internal/privdrop"
)

func main() {
	// File capabilities without the effective bit (the container image's)
	// are only permitted until the tracer raises them.
	if err := privdrop.RaiseEffective(); err != nil {
		os.Exit(exitCode(err, os.Stderr))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// The process is the tracer's own: it gives up its privileges once
	// attached (live.go). Tests that call run in-process do not.
	err := run(withPrivilegeDrop(ctx), os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(exitCode(err, os.Stderr))
}

// exitCode prints err the way a user should see it and picks the exit code:
// 2 for bad usage, 1 for any other failure.
func exitCode(err error, stderr io.Writer) int {
	if err == nil {
		return 0
	}
	var ve *ebpf.VerifierError
	if errors.As(err, &ve) {
		// The verifier's log in full: a truncated one is useless.
		fmt.Fprintf(stderr, "tracer: %v\n%+v\n", err, ve)
		return 1
	}
	fmt.Fprintf(stderr, "tracer: %v\n", err)
	var ue usageError
	if errors.As(err, &ue) {
		fmt.Fprintln(stderr, "Run 'tracer --help' for usage.")
		return 2
	}
	return 1
}
