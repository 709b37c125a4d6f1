package aggregate

import (
	"github.com/conntracer/conntracer/internal/events"

	"fmt"
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
// before sec (RateWindows), in one pass, each count divided by the
// seconds of its window that were watched (spans, from rateSpans).
func (w *rateWindow) rates(sec int64, spans *[3]float64) (r [3]float64) {
	if sec-w.sec > 60 || w.sec-sec >= windowSeconds-60 {
		return r // idle for a minute (most remotes), or a clock far behind
	}
	// The seconds after w.sec have counted nothing yet: start at the
	// first that has. The loop has no branch: a snapshot of 10,000
	// processes with 3 remotes each calls this 80,000 times, and the
	// test per second was most of the snapshot's time.
	from := max(sec-w.sec, 1)
	var total uint64
	for i, n := range RateWindows {
		for ; from <= int64(n); from++ {
			total += uint64(w.n[uint64(sec-from)%windowSeconds])
		}
		r[i] = float64(total) / spans[i]
	}
	return r
}

// rateSpans returns how many seconds of each window of RateWindows ending
// at second sec the aggregator watched: the whole window, or the part
// since its first event when it has run less (`tracer top --once
// --interval 5s` watched 5 s of the 10 s window: dividing by 10 read 2.4x
// under).
func rateSpans(sec int64, since time.Time) (spans [3]float64) {
	watched := float64(sec) - float64(since.UnixNano())/1e9
	for i, n := range RateWindows {
		spans[i] = float64(n)
		if !since.IsZero() && watched < spans[i] {
			// Under a millisecond watched, the window's count is 0 anyway.
			spans[i] = max(watched, 1e-3)
		}
	}
	return spans
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

// oldestAge is how long the oldest member had been in the state at ns.
func (c stateCount) oldestAge(ns uint64) time.Duration {
	return time.Duration(ns - min(c.oldest, ns))
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
	timeWait   uint32 // TIME_WAIT sockets this owner left behind, now
	// finWait2 counts the orphans this owner left in FIN_WAIT2: timewait
	// sockets in substate FIN_WAIT2, which the socket table no longer
	// holds (the kernel turns an orphan reaching FIN_WAIT2 into one,
	// tcp_rcv_state_process -> tcp_time_wait), while ss lists them.
	finWait2 uint32
	lastSeen time.Time // last event that touched these stats
	opens    rateWindow
	closes   rateWindow
	life     lifeHist

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
	return s.timeWait > 0 || s.finWait2 > 0
}

// The findings rules about one process and one remote: each reads the
// remote's counters and the sockets the last complete round saw (at
// lastNs), and adds what it finds to f (findings.go).

// poolLeak: ESTABLISHED connections to one remote grew by at least
// PoolLeakGrowth over PoolLeakWindow while few of them closed. Only
// closes of connections that lived at least ShortLived count against the
// growth: a process leaking its pool while also making a few short
// connections a second to the same server (4/s beside 60 -> 120 held)
// closes hundreds of those in a minute, which cancelled the growth; a
// pool that recycles or shrinks closes long-lived ones.
func (r *remoteStats) poolLeak(f *findingSet, th *Thresholds, lastNs uint64) {
	if r.key.Passive {
		return
	}
	windowNs := uint64(th.PoolLeakWindow)
	est := r.states[events.TCPEstablished].n
	var from uint64
	if lastNs > windowNs {
		from = lastNs - windowNs
	}
	old, oldNs, ok := r.estAt(from)
	if !ok || est < old+th.PoolLeakGrowth {
		return
	}
	growth := est - old
	win := max(1, int((lastNs-oldNs+999_999_999)/1_000_000_000))
	closed := r.longCloses.sum(f.now.Unix()+1, win)
	if float64(closed) > th.PoolLeakCloseRatio*float64(growth) {
		return
	}
	f.addRemote(FindingPoolLeak, r,
		fmt.Sprintf("%d ESTABLISHED connections to %s, %d more than %ds ago, %d long-lived ones closed meanwhile: the pool keeps opening and never closes", est, r.key, growth, win, closed),
		"cap the pool size and return connections to it; look for code paths that open a connection and never close it (a pool shared unsafely between threads)",
		map[string]float64{"established": float64(est), "growth": float64(growth), "window_seconds": float64(win), "closed_in_window": float64(closed)})
}

// closeWaitLeak: at least CloseWaitCount sockets in CLOSE_WAIT with one
// remote, or one there for CloseWaitAge.
func (r *remoteStats) closeWaitLeak(f *findingSet, th *Thresholds, lastNs uint64) {
	cw := r.states[events.TCPCloseWait]
	if cw.n == 0 {
		return
	}
	age := cw.oldestAge(lastNs)
	if cw.n < th.CloseWaitCount && age < th.CloseWaitAge {
		return
	}
	f.addRemote(FindingCloseWaitLeak, r,
		fmt.Sprintf("%d sockets in CLOSE_WAIT with %s, oldest for %s: the peer closed, the application never did", cw.n, r.key, age.Round(time.Second)),
		"close the socket when a read returns end-of-file; check error paths that drop a connection without closing it",
		map[string]float64{"close_wait": float64(cw.n), "oldest_seconds": age.Seconds()})
}

// noReuse: at least NoReuseRate new connections per second to one remote
// over 10 s, with a median lifetime under NoReuseMedian. Connects that
// failed (refused, timed out) are not connections that could have been
// reused: they are left out of the rate (connect_refused and
// connect_timeouts report them).
func (r *remoteStats) noReuse(f *findingSet, th *Thresholds) {
	if r.key.Passive || r.lifeKnown == 0 {
		return
	}
	rate := r.opens.rate(f.now.Unix(), 10) - r.failedOpens.rate(f.now.Unix(), 10)
	med := r.life.median()
	if rate < th.NoReuseRate || med >= th.NoReuseMedian {
		return
	}
	f.addRemote(FindingNoReuse, r,
		fmt.Sprintf("%.0f new connections/s to %s living %s (median): a connection per request, no pooling or keep-alive", rate, r.key, med.Round(time.Microsecond)),
		"reuse connections: a pool, HTTP keep-alive, or a multiplexing proxy",
		map[string]float64{"opens_per_second": rate, "median_lifetime_seconds": med.Seconds(), "short_lived_share": shortShare(&r.connStats)})
}

func shortShare(s *connStats) float64 {
	if s.lifeKnown == 0 {
		return 0
	}
	return float64(s.shortLived) / float64(s.lifeKnown)
}

// finWait2Stuck: at least FinWait2Count sockets in FIN_WAIT2 with one
// remote, the oldest there for FinWait2Age.
func (r *remoteStats) finWait2Stuck(f *findingSet, th *Thresholds, lastNs uint64) {
	fw := r.states[events.TCPFinWait2]
	if fw.n == 0 || fw.n < th.FinWait2Count {
		return
	}
	age := fw.oldestAge(lastNs)
	if age < th.FinWait2Age {
		return
	}
	f.addRemote(FindingFinWait2Stuck, r,
		fmt.Sprintf("%d sockets in FIN_WAIT2 with %s, oldest for %s: the peer never finishes the close", fw.n, r.key, age.Round(time.Second)),
		"fix the peer that does not close; lower net.ipv4.tcp_fin_timeout for orphaned sockets",
		map[string]float64{"fin_wait2": float64(fw.n), "oldest_seconds": age.Seconds()})
}
