package aggregate

import (
	"testing"
	"time"
)

// BenchmarkFindings10kProcesses is one evaluation of every findings rule
// over an aggregate of 10,000 processes with 3 remotes each: what the event
// loop pays once per socket-table round (every second by default), not per
// event. Reports the cost per tracked process.
func BenchmarkFindings10kProcesses(b *testing.B) {
	const procs = 10_000
	a := aggregatorWithProcesses(procs)
	a.now = time.Unix(1_700_000_000, 0)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		a.evaluate()
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/procs, "ns/process")
}
