package aggregate

import (
	"github.com/conntracer/conntracer/internal/events"

	"math/rand/v2"
	"testing"
)

// TestRecentClosesModel checks recentCloses against two plain sets (the
// current and the previous generation) through random adds, lookups,
// sorts and rotations, across chunk boundaries.
func TestRecentClosesModel(t *testing.T) {
	rnd := rand.New(rand.NewPCG(3, 4))
	key := func() liveKey {
		return liveKey{openNs: rnd.Uint64N(20_000), netns: uint32(rnd.IntN(2)), rport: uint16(rnd.IntN(3)), role: events.Role(rnd.IntN(3))}
	}
	var r recentCloses
	cur, prev := map[liveKey]bool{}, map[liveKey]bool{}
	for step := 0; step < 200_000; step++ {
		switch n := rnd.IntN(1000); {
		case n < 600:
			k := key()
			r.add(k)
			cur[k] = true
		case n < 998:
			k := key()
			if got, want := r.has(k), cur[k] || prev[k]; got != want {
				t.Fatalf("step %d: has(%+v) = %v, want %v", step, k, got, want)
			}
		case n < 999:
			r.sortCur()
		default:
			r.rotate()
			cur, prev = map[liveKey]bool{}, cur
		}
	}
}
