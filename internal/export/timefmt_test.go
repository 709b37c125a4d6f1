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

// TestClockCache checks the cached time of day against AppendFormat in
// several locations, across a daylight saving change, and with runs within
// one second.
func TestClockCache(t *testing.T) {
	ny, err := time.LoadLocation("America/New_York")
	if err != nil {
		t.Fatal(err)
	}
	locs := []*time.Location{time.UTC, time.Local, ny, time.FixedZone("x", -(3*3600 + 30*60))}
	base := time.Date(2026, 3, 8, 6, 59, 58, 0, time.UTC) // 2 s before New York's clocks go forward
	var times []time.Time
	for i := int64(0); i < 5000; i++ {
		times = append(times, base.Add(time.Duration(i*1_234_567)), time.Unix(-i*86_399, i*199_999))
	}
	r := rand.New(rand.NewPCG(3, 4))
	for i := 0; i < 10000; i++ {
		if i%10 == 0 {
			base = time.Unix(r.Int64N(4e9), 0)
		}
		times = append(times, base.Add(time.Duration(r.Int64N(1e9))))
	}
	var c clockCache
	for i, tm := range times {
		tm = tm.In(locs[i/7%len(locs)]) // runs in one location, then another
		want := tm.AppendFormat(nil, "15:04:05.000")
		if got := c.appendClock(nil, tm); string(got) != string(want) {
			t.Fatalf("appendClock(%v) = %q, want %q", tm, got, want)
		}
	}
}

// TestAppendFrac9 compares the fraction with the time package's
// ".999999999" on every digit position and on random values.
func TestAppendFrac9(t *testing.T) {
	vals := []uint32{1, 9, 10, 99, 100, 999_999_999, 500_000_000, 100_000_000, 123_456_789, 120_000}
	r := rand.New(rand.NewPCG(1, 3))
	for i := 0; i < 100000; i++ {
		vals = append(vals, 1+r.Uint32N(999_999_999))
	}
	for _, v := range vals {
		want := time.Unix(0, int64(v)).UTC().AppendFormat(nil, ".999999999")
		if got := appendFrac9(nil, v); string(got) != string(want) {
			t.Fatalf("appendFrac9(%d) = %q, want %q", v, got, want)
		}
	}
}
