package export

import (
	"math/rand/v2"
	"testing"
	"time"
)

// TestRFC3339Cache checks the cached formatter against time.RFC3339Nano on
// edge cases and random times, including runs within one second.
func TestRFC3339Cache(t *testing.T) {
	var c rfc3339Cache
	base := time.Date(2026, 11, 22, 2, 43, 1, 0, time.UTC)
	times := []time.Time{
		base,
		base.Add(1),
		base.Add(10),
		base.Add(100 * time.Millisecond),
		base.Add(999999999),
		base.Add(time.Second),
		base.Add(time.Second + 120000),
		time.Date(1970, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(2000, 2, 29, 23, 59, 59, 500000000, time.FixedZone("x", 3600)),
		time.Unix(0, 1763779381123456789).In(time.Local),
	}
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 10000; i++ {
		// Clusters within a second, then jumps: exercises the cache.
		if i%10 == 0 {
			base = time.Unix(r.Int64N(4e9), 0)
		}
		times = append(times, base.Add(time.Duration(r.Int64N(1e9))))
	}
	for _, tm := range times {
		want := tm.UTC().AppendFormat(nil, time.RFC3339Nano)
		if got := c.appendTime(nil, tm); string(got) != string(want) {
			t.Fatalf("appendTime(%v) = %q, want %q", tm, got, want)
		}
	}
}
