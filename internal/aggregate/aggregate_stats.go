package aggregate

import (
	"github.com/conntracer/conntracer/internal/events"

	"math/bits"
	"time"
)

// windowSeconds is how far back rates reach: enough for the 60 s window.
const windowSeconds = 64

// rateWindow counts occurrences per second of the aggregator's clock over
// the last windowSeconds seconds, in a fixed ring: no allocation, and the
// memory of one process or remote stays constant however busy it is.
type rateWindow struct {
	sec int64 // the second buckets[sec%windowSeconds] counts
	n   [windowSeconds]uint32
}

func (w *rateWindow) add(sec int64) {
	if sec < w.sec {
		sec = w.sec // an event a little out of order counts as now
	}
	w.advance(sec)
	w.n[sec%windowSeconds]++
}

// advance clears the buckets of the seconds between the last event and sec.
func (w *rateWindow) advance(sec int64) {
	if sec <= w.sec {
		return
	}
	if sec-w.sec >= windowSeconds {
		w.n = [windowSeconds]uint32{}
	} else {
		for s := w.sec + 1; s <= sec; s++ {
			w.n[s%windowSeconds] = 0
		}
	}
	w.sec = sec
}

// sum returns the count over the n complete seconds before second sec.
func (w *rateWindow) sum(sec int64, n int) uint64 {
	var total uint64
	for s := sec - int64(n); s < sec; s++ {
		if s > w.sec || w.sec-s >= windowSeconds {
			continue
		}
		total += uint64(w.n[s%windowSeconds])
	}
	return total
}

// rates returns events per second over the 1, 10 and 60 complete seconds
// before sec (RateWindows), in one pass.
func (w *rateWindow) rates(sec int64) (r [3]float64) {
	if sec-w.sec > 60 || w.sec-sec >= windowSeconds-60 {
		return r // idle for a minute (most remotes), or a clock far behind
	}
	var total uint64
	from := 1
	for i, n := range RateWindows {
		for ; from <= n; from++ {
			if s := sec - int64(from); s <= w.sec {
				total += uint64(w.n[s%windowSeconds])
			}
		}
		r[i] = float64(total) / float64(n)
	}
	return r
}

// rate returns events per second over the n complete seconds before sec.
func (w *rateWindow) rate(sec int64, n int) float64 {
	return float64(w.sum(sec, n)) / float64(n)
}

// lifeBuckets is the number of log2 buckets of the lifetime histogram:
// bucket i holds lifetimes in [2^(i-1), 2^i) microseconds (bucket 0: under
// 1 us), so the last one starts at about 9 days.
const lifeBuckets = 40

// lifeHist is a log2 histogram of connection lifetimes.
type lifeHist [lifeBuckets]uint32

func lifeBucket(ns uint64) int {
	us := ns / 1000
	b := bits.Len64(us)
	if b >= lifeBuckets {
		b = lifeBuckets - 1
	}
	return b
}

// LifeBucketUpper returns the upper bound of histogram bucket i.
func LifeBucketUpper(i int) time.Duration {
	if i >= lifeBuckets-1 {
		return time.Duration(1<<62 - 1)
	}
	return time.Duration(uint64(1)<<uint(i)) * time.Microsecond
}

func (h *lifeHist) add(ns uint64) { h[lifeBucket(ns)]++ }

// median estimates the median lifetime: the geometric middle of the bucket
// holding it (the bucket is a factor of two wide). 0 if empty.
func (h *lifeHist) median() time.Duration {
	var total uint64
	for _, n := range h {
		total += uint64(n)
	}
	if total == 0 {
		return 0
	}
	var cum uint64
	for i, n := range h {
		cum += uint64(n)
		if cum*2 >= total {
			if i == 0 {
				return 500 * time.Nanosecond
			}
			lo := time.Duration(uint64(1)<<uint(i-1)) * time.Microsecond
			return lo * 1414 / 1000
		}
	}
	return 0
}

// numStates covers every kernel TCP state number (TCPState).
const numStates = 13

// stateCount is one TCP state's share of the sockets open now.
type stateCount struct {
	n      uint32
	oldest uint64 // earliest time a member was first seen in this state, boot ns
}

// connStats are the counters kept both per process and per process x
// remote endpoint.
//
// The fields a close record updates come first, together (a few cache
// lines), the per-round state last: a process or remote is 2.3 KiB, and
// in the original order (rate windows and histogram between the counters,
// lastSeen at the far end) a close touched about ten of its cache lines,
// most of them misses with a thousand busy processes.
type connStats struct {
	opened     [3]uint64                   // by Role
	closed     [3]uint64                   // by Role
	ends       [events.NumEndStates]uint64 // closes by EndState
	lifeKnown  uint64                      // closes whose lifetime is known (handshake seen)
	shortLived uint64                      // of those, lifetimes under Thresholds.ShortLived
	tx, rx     uint64
	timeWait   uint32    // TIME_WAIT sockets this owner left behind, now
	lastSeen   time.Time // last event that touched these stats
	opens      rateWindow
	closes     rateWindow
	life       lifeHist

	// Sockets open now, by state: the last complete sample round, and
	// the round being read.
	states    [numStates]stateCount
	next      [numStates]stateCount
	nextRound uint32 // round that next belongs to

	// established history for pool_leak, one point per sample round.
	estHist [windowSeconds]estPoint
	estNext int
}

type estPoint struct {
	ns  uint64 // sample time, boot ns
	est uint32
}

// count adds one sampled socket to the round being read.
func (s *connStats) count(round uint32, st events.TCPState, since uint64) {
	if s.nextRound != round {
		s.next = [numStates]stateCount{}
		s.nextRound = round
	}
	if int(st) >= numStates {
		return
	}
	c := &s.next[st]
	c.n++
	if c.oldest == 0 || since < c.oldest {
		c.oldest = since
	}
}

// publish makes round the current view of open sockets, and records the
// ESTABLISHED count at time ns.
func (s *connStats) publish(round uint32, ns uint64) {
	if s.nextRound == round {
		s.states = s.next
	} else {
		s.states = [numStates]stateCount{}
	}
	s.estHist[s.estNext%windowSeconds] = estPoint{ns: ns, est: s.states[events.TCPEstablished].n}
	s.estNext++
}

// estAt returns the ESTABLISHED count of the oldest point not older than
// ns (the start of a window), and its time.
func (s *connStats) estAt(ns uint64) (uint32, uint64, bool) {
	n := s.estNext
	if n > windowSeconds {
		n = windowSeconds
	}
	for i := n; i >= 1; i-- {
		p := s.estHist[(s.estNext-i)%windowSeconds]
		if p.ns >= ns {
			return p.est, p.ns, true
		}
	}
	return 0, 0, false
}

// open reports whether any socket is counted as open now.
func (s *connStats) open() bool {
	for _, c := range s.states {
		if c.n > 0 {
			return true
		}
	}
	return s.timeWait > 0
}
