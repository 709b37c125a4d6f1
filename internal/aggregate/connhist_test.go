package aggregate

import (
	"math"
	"math/rand/v2"
	"testing"
)

// TestLog2ExpMatchesFrexp: the bit-reading form of Log2Exp gives what the
// math.Frexp form gave, for every kind of float64.
func TestLog2ExpMatchesFrexp(t *testing.T) {
	ref := func(v float64) int {
		frac, exp := math.Frexp(v)
		if frac == 0.5 {
			return exp - 1
		}
		return exp
	}
	vals := []float64{0, math.Copysign(0, -1), 1, -1, 2, -2, 0.5, 1.5, 3, 4, 1e-300, 5e-324, -5e-324,
		math.Inf(1), math.Inf(-1), math.NaN(), math.MaxFloat64, math.SmallestNonzeroFloat64,
		2.2250738585072014e-308, 1e9, 1e-9, 1e-6, 123456789, float64(1 << 53), float64(1<<53 + 1)}
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 100_000; i++ {
		vals = append(vals, math.Float64frombits(r.Uint64()),
			float64(r.Uint64()>>uint(r.IntN(64))),     // byte counts
			float64(r.Uint64()>>uint(r.IntN(64)))/1e9) // lifetimes in s
	}
	for _, v := range vals {
		if got, want := Log2Exp(v), ref(v); got != want {
			t.Fatalf("Log2Exp(%v) = %d, want %d", v, got, want)
		}
	}
}

// BenchmarkConnHists is the histograms' share of a close record.
func BenchmarkConnHists(b *testing.B) {
	evs := closeEvents(1 << 10)
	for i := range evs {
		evs[i].Conn.TxBytes = uint64(i * 37)
		evs[i].Conn.RxBytes = uint64(i * 1001)
		evs[i].Conn.CloseNs += uint64(i * 7919)
	}
	h := newConnHists()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		h.apply(&evs[i&(len(evs)-1)])
	}
}
