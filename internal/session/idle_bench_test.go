package session

import (
	"context"
	"io"
	"os"
	"runtime"
	"runtime/pprof"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/conntracer/conntracer/internal/probe"
)

// BenchmarkIdleSession measures what `tracer serve` costs a machine with
// nothing to trace: a session with the default configuration (samplers,
// event loop, identity refresh; no recording) runs for a second per
// iteration, and cpu-%/core is the process's own user+system time over
// that second. The box is not idle while colleagues work, so every
// namespace and process they create is in the figure, as it would be for
// a real tracer. Profile it with -cpuprofile.
func BenchmarkIdleSession(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root: loads the BPF programs")
	}
	prb, err := probe.Open(probe.DefaultOptions())
	if err != nil {
		b.Fatal(err)
	}
	defer prb.Close()
	cfg := DefaultConfig()
	cfg.Record = RecordConfig{}
	s, err := New(cfg, prb, io.Discard)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	// Let start-up settle (the first rounds, the released memory).
	time.Sleep(2 * time.Second)
	var before, after unix.Rusage
	b.ResetTimer()
	start := time.Now()
	unix.Getrusage(unix.RUSAGE_SELF, &before)
	for i := 0; i < b.N; i++ {
		time.Sleep(time.Second)
	}
	unix.Getrusage(unix.RUSAGE_SELF, &after)
	wall := time.Since(start)
	b.StopTimer()
	// What the idle session keeps on its heap, for `go tool pprof`.
	if path := os.Getenv("CONNTRACER_IDLE_HEAP_PROFILE"); path != "" {
		f, err := os.Create(path)
		if err != nil {
			b.Fatal(err)
		}
		runtime.GC()
		if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
			b.Fatal(err)
		}
		f.Close()
	}
	cancel()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	cpu := time.Duration(after.Utime.Nano()-before.Utime.Nano()) + time.Duration(after.Stime.Nano()-before.Stime.Nano())
	b.ReportMetric(100*cpu.Seconds()/wall.Seconds(), "cpu-%/core")
	b.ReportMetric(0, "ns/op")
}
