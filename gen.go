// Package conntracer traces the lifecycle of connections with eBPF: the
// kernel programs in bpf/, the tracer in cmd/tracer, and the pipeline's
// stages under internal/ (see ARCHITECTURE.md). This file holds only the
// go:generate lines that compile bpf/ into the probe package.
package conntracer

// The generated files (internal/probe/*_bpfel.{go,o}) are committed so that
// `go build` needs Go alone. Run `make generate`, not `go generate`: it pins
// the compiler (BPF2GO_CC=clang-14, Debian 12's) so that the output is
// reproduced byte for byte, which CI checks.
//go:generate go tool bpf2go -output-dir internal/probe -go-package probe -target bpfel -type conn_event tcplife bpf/tcplife.bpf.c -- -I./bpf -O2 -g -Wall -Werror
//go:generate go tool bpf2go -output-dir internal/probe -go-package probe -target bpfel -type connect_event connect bpf/connect.bpf.c -- -I./bpf -O2 -g -Wall -Werror
//go:generate go tool bpf2go -output-dir internal/probe -go-package probe -target bpfel -type drop_event -type drop_key drops bpf/drops.bpf.c -- -I./bpf -O2 -g -Wall -Werror
//go:generate go tool bpf2go -output-dir internal/probe -go-package probe -target bpfel -type ct_entry_event conntrack bpf/conntrack.bpf.c -- -I./bpf -O2 -g -Wall -Werror
