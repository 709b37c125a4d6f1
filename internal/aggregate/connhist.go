package aggregate

import (
	"math"

	"github.com/conntracer/conntracer/internal/events"
)

// ConnHistograms are the node's distributions of closed connections, the
// ones /metrics exposes as histograms: lifetime by role and end state,
// connect latency, and bytes per connection sent and received.
//
// Buckets are powers of two of the base unit (seconds, bytes): exactly the
// buckets of a Prometheus native histogram of schema 0, and any subset of
// them gives exact classic buckets (le = 2^k), so one aggregate serves
// servers with and without native histograms.
type ConnHistograms struct {
	// Lifetime of connections whose open the tracer saw, by Role and
	// EndState.
	Lifetime [3][events.NumEndStates]Log2Hist
	// ConnectLatency is SYN_SENT -> ESTABLISHED of active opens.
	ConnectLatency Log2Hist
	// TxBytes and RxBytes are payload bytes per connection, by Role.
	TxBytes [3]Log2Hist
	RxBytes [3]Log2Hist
}

// log2Buckets is the number of power-of-two buckets a Log2Hist keeps:
// enough for 1 us .. 2^24 s (194 days) and 1 B .. 2^47 B.
const log2Buckets = 48

// Log2Hist is a histogram with buckets (2^(k-1), 2^k] of its unit, k from
// MinExp to MinExp+47; values at or below ZeroThreshold are counted in
// Zero (Prometheus's zero bucket), larger ones in the top bucket.
type Log2Hist struct {
	Count         uint64
	Sum           float64
	Zero          uint64
	ZeroThreshold float64 // 2^(MinExp-1), or 0 for MinExp 0 (only 0 is "zero")
	MinExp        int
	Buckets       [log2Buckets]uint64 // Buckets[i] is k = MinExp+i
}

func newLog2Hist(minExp int) Log2Hist {
	h := Log2Hist{MinExp: minExp}
	if minExp != 0 {
		h.ZeroThreshold = math.Ldexp(1, minExp-1)
	}
	return h
}

// Observe adds one value.
func (h *Log2Hist) Observe(v float64) {
	h.Count++
	h.Sum += v
	if v <= h.ZeroThreshold {
		h.Zero++
		return
	}
	h.Buckets[h.index(Log2Exp(v))]++
}

func (h *Log2Hist) index(k int) int {
	i := k - h.MinExp
	return max(0, min(i, log2Buckets-1))
}

// Log2Exp returns k such that v lies in (2^(k-1), 2^k], for v > 0.
//
// A positive normal v is 1.m * 2^e: k is e, or e+1 when m is not 0, read
// from v's bits. Why: three histograms take every close, and math.Frexp
// (a call, with cases for zero, subnormals, infinities and NaN) cost a
// quarter of connHists.apply (BenchmarkConnHists: 32.6 -> 24.1 ns); those
// cases, and negative values, keep the Frexp form.
func Log2Exp(v float64) int {
	b := math.Float64bits(v)
	if e := int(b >> 52); e > 0 && e < 0x7ff { // positive and normal
		if b&(1<<52-1) == 0 {
			return e - 1023 // a power of two: the top of its bucket
		}
		return e - 1022
	}
	frac, exp := math.Frexp(v) // v = frac * 2^exp, frac in [0.5, 1)
	if frac == 0.5 {
		return exp - 1
	}
	return exp
}

// Cumulative returns how many values are at most 2^k.
func (h *Log2Hist) Cumulative(k int) uint64 {
	n := h.Zero
	for i := 0; i < log2Buckets && h.MinExp+i <= k; i++ {
		n += h.Buckets[i]
	}
	return n
}

// connHists is the Aggregator's ConnHistograms, fed KindConnClosed.
type connHists struct{ h ConnHistograms }

func newConnHists() *connHists {
	c := &connHists{}
	for r := range c.h.Lifetime {
		for e := range c.h.Lifetime[r] {
			c.h.Lifetime[r][e] = newLog2Hist(-19) // 2^-20 s, about 1 us, is "zero"
		}
		c.h.TxBytes[r] = newLog2Hist(0)
		c.h.RxBytes[r] = newLog2Hist(0)
	}
	c.h.ConnectLatency = newLog2Hist(-19)
	return c
}

// apply folds a closed connection in. Connections open before tracing
// started have no known lifetime or exact byte counts: they are left out.
func (c *connHists) apply(ev *events.Event) {
	if ev.Kind != events.KindConnClosed || !ev.Conn.SeenOpen {
		return
	}
	cn := &ev.Conn
	r, e := int(cn.Role), int(cn.EndState)
	if r >= len(c.h.Lifetime) || e >= len(c.h.Lifetime[0]) {
		return
	}
	if lt := cn.LifetimeNs(); lt > 0 {
		c.h.Lifetime[r][e].Observe(float64(lt) / 1e9)
	}
	c.h.TxBytes[r].Observe(float64(cn.TxBytes))
	c.h.RxBytes[r].Observe(float64(cn.RxBytes))
	if cn.Role == events.RoleActive && cn.EstablishedNs > cn.OpenNs && cn.OpenNs != 0 {
		c.h.ConnectLatency.Observe(float64(cn.EstablishedNs-cn.OpenNs) / 1e9)
	}
}
