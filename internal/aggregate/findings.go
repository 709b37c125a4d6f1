package aggregate

import "time"

// Finding kinds of the churn and leak rules.
const (
	FindingPoolLeak       = "pool_leak"
	FindingCloseWaitLeak  = "close_wait_leak"
	FindingNoReuse        = "no_reuse"
	FindingTimeWaitPileup = "time_wait_pileup"
	FindingPortExhaustion = "port_exhaustion"
	FindingFinWait2Stuck  = "fin_wait2_stuck"
)

// findingSeverity ranks a finding kind, most urgent first: 0 for
// connections or packets refused now (the table, the ports, a backlog are
// full), 1 for leaks and pile-ups heading there, 2 for habits that cost
// but fail nothing yet, 3 for the rest (drops by reason, unknown kinds).
func findingSeverity(kind string) int {
	switch kind {
	case "conntrack_table_full", FindingPortExhaustion, "listen_overflow", "unix_backlog_overflow":
		return 0
	case FindingPoolLeak, FindingCloseWaitLeak, FindingTimeWaitPileup, "conntrack_near_full",
		"unix_dgram_queue_full", "connect_timeouts":
		return 1
	case FindingFinWait2Stuck, FindingNoReuse, "connect_refused", "conntrack_long_timeouts":
		return 2
	}
	return 3
}

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
	// most PoolLeakCloseRatio times that growth closed in the window (0.5),
	// counting closes of connections that lived at least ShortLived.
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

// findingSet gathers the findings of one evaluation. Each rule adds its
// findings with add, which gives a finding the time it was first seen,
// kept from one evaluation to the next while the finding stays true.
type findingSet struct {
	now       time.Time
	firstSeen map[findingKey]time.Time // shared with the aggregator
	seen      map[findingKey]struct{}
	found     []Finding
}

func (f *findingSet) add(k findingKey, p *procStats, netns uint32, msg, remedy string, ev map[string]float64) {
	since, ok := f.firstSeen[k]
	if !ok {
		since = f.now
		f.firstSeen[k] = since
	}
	f.seen[k] = struct{}{}
	remote := k.remote.String()
	if !k.remote.Addr.IsValid() {
		remote = ""
	}
	f.found = append(f.found, Finding{
		Kind: k.kind, PID: p.key.PID, Comm: string(commBytes(&p.comm)), Remote: remote, NetNS: netns,
		Since: since, Last: f.now, Message: msg, Remedy: remedy, Evidence: ev,
	})
}

// addRemote adds a finding of kind about remote r of r's process.
func (f *findingSet) addRemote(kind string, r *remoteStats, msg, remedy string, ev map[string]float64) {
	f.add(findingKey{kind: kind, proc: r.proc.key, remote: r.key}, r.proc, r.key.NetNS, msg, remedy, ev)
}

// forget drops the first-seen times of the findings this evaluation did
// not find again.
func (f *findingSet) forget() {
	for k := range f.firstSeen {
		if _, ok := f.seen[k]; !ok {
			delete(f.firstSeen, k)
		}
	}
}

// evaluate runs every rule over the aggregate after a sample round: the
// rules about one process and remote (aggregate_stats.go, and
// time_wait_pileup in aggregate_timewait.go), port_exhaustion
// (aggregate_ports.go), then the sub-aggregates' rules.
func (a *Aggregator) evaluate() {
	th := &a.th
	f := &findingSet{now: a.now, firstSeen: a.firstSeen, seen: make(map[findingKey]struct{}),
		found: a.findings[:0:0]} // a new array: callers of Findings keep the last
	for _, p := range a.procs {
		if p.key.PID == 0 {
			continue // nobody to name
		}
		for _, r := range p.remotes {
			r.poolLeak(f, th, a.lastNs)
			r.closeWaitLeak(f, th, a.lastNs)
			r.noReuse(f, th)
			r.timeWaitPileup(f, th)
			r.finWait2Stuck(f, th, a.lastNs)
		}
	}
	a.ports.exhaustion(f, th, a.procs)
	f.forget()
	found := append(f.found, a.partFindings()...)
	sortFindings(found)
	a.findings = found
	a.lastEval = a.now
}

// Findings returns the findings of the last evaluation.
func (a *Aggregator) Findings() []Finding { return a.findings }
