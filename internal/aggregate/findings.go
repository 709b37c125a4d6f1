package aggregate

import (
	"github.com/conntracer/conntracer/internal/events"

	"fmt"
	"time"
)

// Finding kinds of the churn and leak rules.
const (
	FindingPoolLeak       = "pool_leak"
	FindingCloseWaitLeak  = "close_wait_leak"
	FindingNoReuse        = "no_reuse"
	FindingTimeWaitPileup = "time_wait_pileup"
	FindingPortExhaustion = "port_exhaustion"
	FindingFinWait2Stuck  = "fin_wait2_stuck"
)

// Thresholds tune the aggregator and its rules. Start from
// DefaultThresholds; `tracer top` exposes each as a --finding.* flag.
type Thresholds struct {
	// ShortLived: a connection that lived less is short-lived (1 s).
	ShortLived time.Duration
	// IdleExpiry: a process or remote with nothing open is forgotten
	// after this long without events (2 min).
	IdleExpiry time.Duration

	// pool_leak: ESTABLISHED connections from one process to one remote
	// grew by at least PoolLeakGrowth over PoolLeakWindow (10 over 60 s;
	// a shorter history is used while the tracer has run less), while at
	// most PoolLeakCloseRatio times that growth closed in the window (0.5).
	PoolLeakWindow     time.Duration
	PoolLeakGrowth     uint32
	PoolLeakCloseRatio float64

	// close_wait_leak: at least CloseWaitCount sockets in CLOSE_WAIT to one
	// remote (10), or any one sitting there longer than CloseWaitAge (60 s).
	CloseWaitCount uint32
	CloseWaitAge   time.Duration

	// no_reuse: at least NoReuseRate new connections per second to one
	// remote over 10 s (10/s) with a median lifetime under NoReuseMedian
	// (1 s).
	NoReuseRate   float64
	NoReuseMedian time.Duration

	// time_wait_pileup: at least TimeWaitCount TIME_WAIT sockets left by one
	// process towards one remote (1000).
	TimeWaitCount uint32

	// port_exhaustion: the ports held towards one destination reach
	// PortUseShare of the namespace's ephemeral range (0.8).
	PortUseShare float64

	// fin_wait2_stuck: at least FinWait2Count sockets (1) in FIN_WAIT2
	// for longer than FinWait2Age (60 s, the kernel's default
	// tcp_fin_timeout for orphans; a socket still held by its process
	// can stay there forever).
	FinWait2Count uint32
	FinWait2Age   time.Duration
}

// DefaultThresholds returns the documented defaults.
func DefaultThresholds() Thresholds {
	return Thresholds{
		ShortLived:         time.Second,
		IdleExpiry:         2 * time.Minute,
		PoolLeakWindow:     time.Minute,
		PoolLeakGrowth:     10,
		PoolLeakCloseRatio: 0.5,
		CloseWaitCount:     10,
		CloseWaitAge:       time.Minute,
		NoReuseRate:        10,
		NoReuseMedian:      time.Second,
		TimeWaitCount:      1000,
		PortUseShare:       0.8,
		FinWait2Count:      1,
		FinWait2Age:        time.Minute,
	}
}

// findingKey identifies a finding across evaluations, for its first-seen
// time.
type findingKey struct {
	kind   string
	proc   ProcKey
	remote RemoteKey
	local  string
}

// evaluate runs every rule over the aggregate after a sample round.
func (a *Aggregator) evaluate() {
	th := &a.th
	sec := a.now.Unix()
	now := a.now
	found := a.findings[:0:0]
	seen := make(map[findingKey]struct{})
	add := func(k findingKey, p *procStats, netns uint32, msg, remedy string, ev map[string]float64) {
		since, ok := a.firstSeen[k]
		if !ok {
			since = now
			a.firstSeen[k] = since
		}
		seen[k] = struct{}{}
		remote := k.remote.String()
		if !k.remote.Addr.IsValid() {
			remote = ""
		}
		found = append(found, Finding{
			Kind: k.kind, PID: p.key.PID, Comm: string(commBytes(&p.comm)), Remote: remote, NetNS: netns,
			Since: since, Last: now, Message: msg, Remedy: remedy, Evidence: ev,
		})
	}
	windowNs := uint64(th.PoolLeakWindow)
	for _, p := range a.procs {
		if p.key.PID == 0 {
			continue // nobody to name
		}
		for _, r := range p.remotes {
			k := findingKey{proc: p.key, remote: r.key}
			rs := r.key.String()
			if !r.key.Passive {
				est := r.states[events.TCPEstablished].n
				var from uint64
				if a.lastNs > windowNs {
					from = a.lastNs - windowNs
				}
				if old, oldNs, ok := r.estAt(from); ok && est >= old+th.PoolLeakGrowth {
					growth := est - old
					win := max(1, int((a.lastNs-oldNs+999_999_999)/1_000_000_000))
					closed := r.closes.sum(sec+1, win)
					if float64(closed) <= th.PoolLeakCloseRatio*float64(growth) {
						k.kind = FindingPoolLeak
						add(k, p, r.key.NetNS,
							fmt.Sprintf("%d ESTABLISHED connections to %s, %d more than %ds ago, %d closed meanwhile: the pool keeps opening and never closes", est, rs, growth, win, closed),
							"cap the pool size and return connections to it; look for code paths that open a connection and never close it (a pool shared unsafely between threads)",
							map[string]float64{"established": float64(est), "growth": float64(growth), "window_seconds": float64(win), "closed_in_window": float64(closed)})
					}
				}
			}
			if cw := r.states[events.TCPCloseWait]; cw.n > 0 {
				age := time.Duration(a.lastNs - min(cw.oldest, a.lastNs))
				if cw.n >= th.CloseWaitCount || age >= th.CloseWaitAge {
					k.kind = FindingCloseWaitLeak
					add(k, p, r.key.NetNS,
						fmt.Sprintf("%d sockets in CLOSE_WAIT with %s, oldest for %s: the peer closed, the application never did", cw.n, rs, age.Round(time.Second)),
						"close the socket when a read returns end-of-file; check error paths that drop a connection without closing it",
						map[string]float64{"close_wait": float64(cw.n), "oldest_seconds": age.Seconds()})
				}
			}
			if !r.key.Passive && r.lifeKnown > 0 {
				rate := r.opens.rate(sec, 10)
				med := r.life.median()
				if rate >= th.NoReuseRate && med < th.NoReuseMedian {
					k.kind = FindingNoReuse
					add(k, p, r.key.NetNS,
						fmt.Sprintf("%.0f new connections/s to %s living %s (median): a connection per request, no pooling or keep-alive", rate, rs, med.Round(time.Microsecond)),
						"reuse connections: a pool, HTTP keep-alive, or a multiplexing proxy",
						map[string]float64{"opens_per_second": rate, "median_lifetime_seconds": med.Seconds(), "short_lived_share": shortShare(&r.connStats)})
				}
			}
			if r.timeWait >= th.TimeWaitCount {
				k.kind = FindingTimeWaitPileup
				add(k, p, r.key.NetNS,
					fmt.Sprintf("%d sockets in TIME_WAIT towards %s left by this process, which closes first", r.timeWait, rs),
					"reuse connections (pool, keep-alive); let the peer close first; net.ipv4.tcp_tw_reuse=1 for outgoing connections",
					map[string]float64{"time_wait": float64(r.timeWait), "close_rate_per_second": r.closes.rate(sec, 10)})
			}
			if fw := r.states[events.TCPFinWait2]; fw.n >= th.FinWait2Count && fw.n > 0 {
				age := time.Duration(a.lastNs - min(fw.oldest, a.lastNs))
				if age >= th.FinWait2Age {
					k.kind = FindingFinWait2Stuck
					add(k, p, r.key.NetNS,
						fmt.Sprintf("%d sockets in FIN_WAIT2 with %s, oldest for %s: the peer never finishes the close", fw.n, rs, age.Round(time.Second)),
						"fix the peer that does not close; lower net.ipv4.tcp_fin_timeout for orphaned sockets",
						map[string]float64{"fin_wait2": float64(fw.n), "oldest_seconds": age.Seconds()})
				}
			}
		}
	}
	for pk, u := range a.ports.use {
		size := a.rangeSize(pk.netns)
		share := float64(u.used) / float64(size)
		if share < th.PortUseShare {
			continue
		}
		p, r := a.portHolder(pk)
		if p == nil {
			continue
		}
		k := findingKey{kind: FindingPortExhaustion, proc: p.key, remote: r.key, local: pk.local.String()}
		add(k, p, pk.netns,
			fmt.Sprintf("%d of %d ephemeral ports (%.0f%%) from %s to %s in use, %d in TIME_WAIT: new connections will fail with EADDRNOTAVAIL", u.used, size, 100*share, pk.local, pk.remote, u.timeWait),
			"reuse connections (pool, keep-alive); widen net.ipv4.ip_local_port_range; net.ipv4.tcp_tw_reuse=1; spread over more local or remote addresses",
			map[string]float64{"ports_used": float64(u.used), "range_size": float64(size), "share": share, "time_wait": float64(u.timeWait)})
	}
	for k := range a.firstSeen {
		if _, ok := seen[k]; !ok {
			delete(a.firstSeen, k)
		}
	}
	found = append(found, a.partFindings()...)
	sortFindings(found)
	a.findings = found
	a.lastEval = now
}

func shortShare(s *connStats) float64 {
	if s.lifeKnown == 0 {
		return 0
	}
	return float64(s.shortLived) / float64(s.lifeKnown)
}

// portHolder returns the process holding most sockets (open or TIME_WAIT)
// towards a destination.
func (a *Aggregator) portHolder(pk portKey) (*procStats, *remoteStats) {
	var bp *procStats
	var br *remoteStats
	var best uint32
	k := RemoteKey{NetNS: pk.netns, Addr: pk.remote}
	for _, p := range a.procs {
		if p.key.PID == 0 {
			continue
		}
		r, ok := p.remotes[k]
		if !ok {
			continue
		}
		var n uint32
		for _, s := range r.states {
			n += s.n
		}
		n += r.timeWait
		if n > best {
			bp, br, best = p, r, n
		}
	}
	return bp, br
}

// Findings returns the findings of the last evaluation.
func (a *Aggregator) Findings() []Finding { return a.findings }
