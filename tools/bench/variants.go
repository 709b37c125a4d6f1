package main

import (
	"context"
	_ "embed"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// peerScript is the bpftrace peer (peer.bt).
//
//go:embed peer.bt
var peerScript string

// serveReady is the line `tracer serve` prints once the probe is attached
// and the start-up snapshot taken: the event loop starts right after.
const serveReady = "tracer: serve: tracing"

// tracer is a running `tracer serve`.
type tracer struct {
	*proc
	addr string // metrics address
}

// startServe starts `tracer serve` on a free loopback port with extra
// flags after the defaults, and waits until it traces.
func (b *bench) startServe(ctx context.Context, extra ...string) (*tracer, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	args := append([]string{"serve", "--web.listen-address", addr}, extra...)
	shown := []string{"tracer serve --web.listen-address 127.0.0.1:PORT"}
	for _, a := range extra {
		switch {
		case strings.HasPrefix(a, b.dir):
			a = "FILE"
		case strings.HasPrefix(a, nsPrefix):
			a = "NETNS"
		}
		shown = append(shown, a)
	}
	b.command(strings.Join(shown, " "))
	cmd := exec.Command(b.tracer, args...)
	p, err := b.startProc(ctx, "tracer serve", cmd, func(l string) bool { return strings.HasPrefix(l, serveReady) }, 60*time.Second)
	if err != nil {
		return nil, err
	}
	return &tracer{proc: p, addr: addr}, nil
}

// lost is the tracer's count of records the kernel could not reserve.
func (t *tracer) lost() (uint64, error) {
	m, err := scrape(t.addr)
	if err != nil {
		return 0, err
	}
	return uint64(m.get(`conntracer_events_lost_total{stage="kernel"}`)), nil
}

// startBpftrace starts the peer script and waits until its probes are
// attached.
func (b *bench) startBpftrace(ctx context.Context) (*proc, error) {
	script := filepath.Join(b.dir, "peer.bt")
	if err := os.WriteFile(script, []byte(peerScript), 0o644); err != nil {
		return nil, fmt.Errorf("write the bpftrace script: %w", err)
	}
	// -B none: the "Attaching" line must not wait in a buffer.
	b.command("bpftrace -B none tools/bench/peer.bt")
	cmd := exec.Command("bpftrace", "-B", "none", script)
	return b.startProc(ctx, "bpftrace", cmd, func(l string) bool { return strings.HasPrefix(l, "Attaching ") }, 60*time.Second)
}

// startVariant starts what a churn variant runs beside the workload:
// nothing for the baseline (nil, nil).
func (b *bench) startVariant(ctx context.Context, variant string) (*proc, *tracer, error) {
	switch variant {
	case VariantBaseline:
		return nil, nil, nil
	case VariantServe:
		t, err := b.startServe(ctx)
		if err != nil {
			return nil, nil, err
		}
		return t.proc, t, nil
	case VariantRecord:
		file := filepath.Join(b.dir, fmt.Sprintf("churn-%d.rec", time.Now().UnixNano()))
		t, err := b.startServe(ctx, "--record", file)
		if err != nil {
			return nil, nil, err
		}
		b.onCleanup(func() { os.Remove(file) })
		return t.proc, t, nil
	case VariantStream:
		// exec: the process measured is the tracer, not a shell.
		file := filepath.Join(b.dir, fmt.Sprintf("stream-%d.json", time.Now().UnixNano()))
		b.onCleanup(func() { os.Remove(file) })
		b.command("tracer --output json > FILE")
		cmd := exec.Command("sh", "-c", `exec "$0" --output json >"$1"`, b.tracer, file)
		p, err := b.startProc(ctx, "tracer --output json", cmd, func(l string) bool { return strings.HasPrefix(l, "tracer: tracing") }, 60*time.Second)
		return p, nil, err
	case VariantBpftrace:
		p, err := b.startBpftrace(ctx)
		return p, nil, err
	case VariantTcplife:
		// It prints its header once its programs are attached.
		b.command("stdbuf -oL tcplife")
		// Line-buffered, as on a terminal: into a pipe its stdio would
		// hold the header (and every line) until it exits.
		p, err := b.startProc(ctx, "tcplife", exec.Command("stdbuf", "-oL", "tcplife"), func(l string) bool { return strings.HasPrefix(l, "PID") }, 60*time.Second)
		return p, nil, err
	}
	return nil, nil, fmt.Errorf("unknown variant %q", variant)
}
