package aggregate

import (
	"github.com/conntracer/conntracer/internal/events"

	"cmp"
	"net/netip"
	"slices"
	"time"
)

// Snapshot is the aggregate at one moment. It is immutable once returned:
// readers on other goroutines (the terminal view, JSON output, /metrics)
// may keep it as long as they like.
//
// Sections are fields, each owned by one concern; later concerns (connect
// failures, Unix sockets, drops) add their own fields without reshaping
// these.
type Snapshot struct {
	Time     time.Time // the aggregator's clock at the snapshot
	KernelNs uint64    // the latest kernel time seen, CLOCK_BOOTTIME ns
	// Rounds counts complete samples of the kernel's socket table: 0 means
	// the open-socket counts are not known yet.
	Rounds     uint32
	Processes  []ProcessSnapshot // by pid
	TimeWait   TimeWaitSnapshot
	Ports      []PortUse // destinations with ephemeral ports in use, most used first, at most MaxPorts
	Findings   []Finding // of every concern, sorted by kind
	Thresholds Thresholds
	// Departed are the counters of the processes expired from Processes,
	// per comm and cgroup: /metrics adds them to the group's counters.
	Departed DepartedSnapshot

	// Sections of the other concerns (aggregate_parts.go).
	ConnectFailures []ConnectFailures
	Unix            []UnixPathStats
	ConnectLatency  []ConnectLatency
	Conntrack       []ConntrackNSSnapshot // one per namespace, fullest first
	Drops           DropSnapshot
	Histograms      ConnHistograms `json:"-"` // for /metrics
	// KernelCounters: the kernel's and the tracer's own counters, last
	// values and deltas (counterstats.go).
	KernelCounters []CounterSnapshot
}

// MaxPorts bounds Snapshot.Ports: the most used destinations are the
// ones that matter; every remote also carries its own PortsUsed.
const MaxPorts = 1000

// ConnSnapshot are the connection statistics of a process, or of a
// process x remote endpoint.
type ConnSnapshot struct {
	Opened        uint64 // connections opened since tracing started (handshake seen)
	OpenedActive  uint64
	OpenedPassive uint64
	Closed        uint64 // connections closed (any role, including ones open before tracing)
	ClosedActive  uint64
	ClosedPassive uint64
	// OpenRate and CloseRate are per second over the last 1, 10 and 60
	// complete seconds.
	OpenRate  [3]float64
	CloseRate [3]float64
	// States counts the sockets open now by TCP state, indexed by
	// TCPState; TIME_WAIT is the count of TimeWait.
	States         [numStates]StateCount
	TimeWait       uint32
	LifetimeKnown  uint64 // closed connections whose lifetime is known
	ShortLived     uint64 // of those, shorter than Thresholds.ShortLived
	MedianLifetime time.Duration
	// Lifetime is a log2 histogram: bucket i counts lifetimes below
	// LifeBucketUpper(i) and at least LifeBucketUpper(i-1).
	Lifetime [lifeBuckets]uint32
	TxBytes  uint64
	RxBytes  uint64
	// Ends counts closes by EndState.
	Ends [events.NumEndStates]uint64
}

// RateWindows are the windows of OpenRate and CloseRate, in seconds.
var RateWindows = [3]int{1, 10, 60}

// StateCount is how many sockets are in one state now, and how long the
// oldest has been in it (at least: a socket's time in a state is counted
// from the first sample that saw it there, or its open for the first
// state).
type StateCount struct {
	Count     uint32
	OldestAge time.Duration
}

// ShortLivedShare is the share of closed connections with a known
// lifetime that lived less than Thresholds.ShortLived, 0 if none.
func (c *ConnSnapshot) ShortLivedShare() float64 {
	if c.LifetimeKnown == 0 {
		return 0
	}
	return float64(c.ShortLived) / float64(c.LifetimeKnown)
}

// Open returns the sockets open now, TIME_WAIT included.
func (c *ConnSnapshot) Open() uint32 {
	var n uint32
	for _, s := range c.States {
		n += s.Count
	}
	return n
}

// ProcessSnapshot is one process's statistics. PID 0 gathers connections
// whose owner is unknown.
type ProcessSnapshot struct {
	PID      uint32
	StartNs  uint64
	Comm     string
	CgroupID uint64
	ConnSnapshot
	// PortUse is the highest share of an ephemeral port range that the
	// process's connections to one destination hold, 0..1.
	PortUse float64
	Remotes []RemoteSnapshot // by remote
	// Moved are the counters the process had when it last changed group
	// (comm or cgroup): they count in its former groups' departed
	// totals, and its own group's counters take Totals() - Moved.
	Moved ConnTotals
}

// RemoteSnapshot is a process's statistics towards one remote endpoint.
type RemoteSnapshot struct {
	Key    RemoteKey
	Remote string // Key rendered: "10.0.0.2:6379", or "10.0.0.2:*" for accepted connections
	ConnSnapshot
	// PortsUsed and PortRange: local ports held towards this destination
	// by every process, against the size of the namespace's range (0 for
	// accepted connections).
	PortsUsed uint32
	PortRange uint32
}

// TimeWaitSnapshot is the TIME_WAIT census.
type TimeWaitSnapshot struct {
	Total        uint32
	Unattributed uint32 // TIME_WAIT sockets whose close the tracer did not see
	// Reconciliations counts complete sock_diag dumps applied: after
	// one, Total equals the kernel's count at the dump.
	Reconciliations uint64
	ByNetNS         []NetNSTimeWait
	// Sockets is, per namespace, every timewait socket the tracer holds:
	// Total and those still in substate FIN_WAIT2 (Pending), which the
	// kernel's sockstat counts as tw too. The TIME_WAIT sampler compares
	// it with sockstat and dumps only the namespaces where they differ or
	// where a socket is pending: only a dump shows it turned TIME_WAIT.
	Sockets map[uint32]uint32 `json:"-"`
	Pending map[uint32]uint32 `json:"-"`
}

// NetNSTimeWait is the TIME_WAIT census of one network namespace.
type NetNSTimeWait struct {
	NetNS        uint32
	Total        uint32
	Unattributed uint32
}

// PortUse is the ephemeral port use towards one destination.
type PortUse struct {
	NetNS     uint32
	Local     netip.Addr
	Remote    netip.AddrPort
	Used      uint32 // local ports held, any state, TIME_WAIT included
	TimeWait  uint32 // of which in TIME_WAIT
	RangeSize uint32 // size of the namespace's ip_local_port_range
}

// Share returns Used / RangeSize.
func (p *PortUse) Share() float64 {
	if p.RangeSize == 0 {
		return 0
	}
	return float64(p.Used) / float64(p.RangeSize)
}

func (s *connStats) snapshot(c *ConnSnapshot, now time.Time, roundNs uint64, spans *[3]float64) {
	c.OpenedActive, c.OpenedPassive = s.opened[events.RoleActive], s.opened[events.RolePassive]
	c.Opened = s.opened[0] + s.opened[1] + s.opened[2]
	c.ClosedActive, c.ClosedPassive = s.closed[events.RoleActive], s.closed[events.RolePassive]
	c.Closed = s.closed[0] + s.closed[1] + s.closed[2]
	sec := now.Unix()
	c.OpenRate = s.opens.rates(sec, spans)
	c.CloseRate = s.closes.rates(sec, spans)
	for st, sc := range s.states {
		c.States[st].Count = sc.n
		if sc.n > 0 && sc.oldest <= roundNs {
			c.States[st].OldestAge = time.Duration(roundNs - sc.oldest)
		}
	}
	c.States[events.TCPFinWait2].Count += s.finWait2
	c.TimeWait = s.timeWait
	c.States[events.TCPTimeWait].Count = s.timeWait
	c.LifetimeKnown, c.ShortLived = s.lifeKnown, s.shortLived
	c.MedianLifetime = s.life.median()
	c.Lifetime = s.life
	c.TxBytes, c.RxBytes = s.tx, s.rx
	c.Ends = s.ends
}

// Snapshot returns the aggregate as of the last event applied. It
// allocates a fresh Snapshot: call it at display rate, not per event.
func (a *Aggregator) Snapshot() *Snapshot {
	s := &Snapshot{
		Time:       a.now,
		KernelNs:   a.kernelNs,
		Rounds:     a.round - 1,
		Thresholds: a.th,
		Findings:   slices.Clone(a.findings),
	}
	s.Ports = a.ports.top(MaxPorts)

	// Sorted as pointers, then written in place: the snapshot structs
	// are large, and 10,000 processes must cost little (see the
	// benchmarks).
	procs := make([]*procStats, 0, len(a.procs))
	for _, p := range a.procs {
		procs = append(procs, p)
	}
	slices.SortFunc(procs, func(x, y *procStats) int {
		return cmp.Or(cmp.Compare(x.key.PID, y.key.PID), cmp.Compare(x.key.StartNs, y.key.StartNs))
	})
	s.Processes = make([]ProcessSnapshot, len(procs))
	spans := rateSpans(a.now.Unix(), a.since)
	nRemotes, nActive := 0, 0
	for _, p := range procs {
		nRemotes += len(p.remotes)
		for k := range p.remotes {
			if !k.Passive {
				nActive++
			}
		}
	}
	// Ports held towards each destination, whatever the local address,
	// for the remotes this host connects to.
	ports := a.ports.byDest(nActive, func(add func(dest)) {
		for _, p := range procs {
			for _, r := range p.remotes {
				if !r.key.Passive {
					add(dest{r.key.NetNS, r.key.Addr})
				}
			}
		}
	})
	// One allocation for every process's remotes, sliced per process.
	allRemotes := make([]RemoteSnapshot, nRemotes)
	var remotes []*remoteStats
	for i, p := range procs {
		ps := &s.Processes[i]
		if p.commStr != string(commBytes(&p.comm)) { // compared without allocating
			p.commStr = string(commBytes(&p.comm))
		}
		ps.PID, ps.StartNs, ps.Comm, ps.CgroupID = p.key.PID, p.key.StartNs, p.commStr, p.cgroupID
		p.connStats.snapshot(&ps.ConnSnapshot, a.now, a.lastNs, &spans)
		ps.Moved = p.moved
		remotes = remotes[:0]
		for _, r := range p.remotes {
			remotes = append(remotes, r)
		}
		slices.SortFunc(remotes, func(x, y *remoteStats) int {
			return cmp.Or(cmp.Compare(x.key.NetNS, y.key.NetNS), x.key.Addr.Compare(y.key.Addr), cmp.Compare(boolInt(x.key.Passive), boolInt(y.key.Passive)))
		})
		ps.Remotes, allRemotes = allRemotes[:len(remotes):len(remotes)], allRemotes[len(remotes):]
		for j, r := range remotes {
			rs := &ps.Remotes[j]
			if r.name == "" {
				r.name = r.key.String()
			}
			rs.Key, rs.Remote = r.key, r.name
			r.connStats.snapshot(&rs.ConnSnapshot, a.now, a.lastNs, &spans)
			if !r.key.Passive {
				rs.PortRange = a.ports.rangeSize(r.key.NetNS)
				rs.PortsUsed = ports[dest{r.key.NetNS, r.key.Addr}]
				if share := float64(rs.PortsUsed) / float64(rs.PortRange); share > ps.PortUse {
					ps.PortUse = share
				}
			}
		}
	}

	s.TimeWait.Reconciliations = a.tw.dumps
	for netns, c := range a.tw.byNetNS {
		s.TimeWait.Total += c.total
		s.TimeWait.Unattributed += c.unattributed
		s.TimeWait.ByNetNS = append(s.TimeWait.ByNetNS, NetNSTimeWait{NetNS: netns, Total: c.total, Unattributed: c.unattributed})
	}
	slices.SortFunc(s.TimeWait.ByNetNS, func(x, y NetNSTimeWait) int { return cmp.Compare(x.NetNS, y.NetNS) })
	s.TimeWait.Sockets = make(map[uint32]uint32, len(a.tw.byNetNS)+len(a.tw.pending))
	for netns, c := range a.tw.byNetNS {
		s.TimeWait.Sockets[netns] += c.total
	}
	s.TimeWait.Pending = make(map[uint32]uint32, len(a.tw.pending))
	for netns, n := range a.tw.pending {
		s.TimeWait.Sockets[netns] += n
		s.TimeWait.Pending[netns] = n
	}
	s.Departed = a.departed.snapshot()
	a.partSnapshots(s)
	return s
}

func commBytes(c *[16]byte) []byte {
	for i, b := range c {
		if b == 0 {
			return c[:i]
		}
	}
	return c[:]
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
