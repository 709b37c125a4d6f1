package export

// The snapshot's JSON rendering: the document of
// `tracer top --once --output json`, also the `final` section of
// `tracer report --output json`. It reads aggregate.Snapshot values only,
// never the aggregator, so a live tracer and a replay render alike.

import (
	"github.com/conntracer/conntracer/internal/aggregate"

	"encoding/json"
	"io"
	"math"
	"strconv"
	"time"

	"github.com/conntracer/conntracer/internal/events"
)

// Document is the JSON object `tracer top --once --output json` prints.
// Field names are stable; fields may be added, none renamed.
type Document struct {
	Time            time.Time      `json:"time"`
	IntervalSeconds float64        `json:"interval_seconds"`
	Samples         uint32         `json:"samples"` // rounds of the kernel's socket table read
	Processes       []Process      `json:"processes"`
	TimeWait        TimeWait       `json:"time_wait"`
	Ports           []Port         `json:"ports"`
	Findings        []Finding      `json:"findings"` // of every kind, most urgent first
	Thresholds      map[string]any `json:"thresholds"`

	// ConnectFailures: failed connect() calls per process and destination,
	// counted by errno name.
	ConnectFailures []aggregate.ConnectFailures `json:"connect_failures"`
	// Unix: per Unix socket path, its callers' connects by errno name
	// ("OK" for successes) and its listener as last sampled.
	Unix []aggregate.UnixPathStats `json:"unix"`
	// ConnectLatency: SYN_SENT -> ESTABLISHED per process and destination.
	ConnectLatency []aggregate.ConnectLatency `json:"connect_latency"`
	// Conntrack: one object per network namespace whose conntrack table
	// is in use, fullest first; counts are since the tracer started.
	Conntrack []aggregate.ConntrackNSSnapshot `json:"conntrack"`
	// KernelCounters: nstat TCP counters and sockstat per namespace, the
	// tracer's loss counters; last values and deltas since the start.
	KernelCounters []aggregate.CounterSnapshot `json:"kernel_counters"`
	// Drops: packet drops by reason, namespace and owner, and listen-queue
	// overflows per listener.
	Drops aggregate.DropSnapshot `json:"drops"`
	// NetNSNames names the network namespaces the document mentions, by
	// inode (decimal): the pod or container owning each, its `ip netns`
	// name, "host" (Document.NameNetNS). Namespaces nothing names are
	// left out.
	NetNSNames map[string]string `json:"netns_names,omitempty"`
}

// Stats are the connection statistics shared by processes and remotes.
type Stats struct {
	Opened        uint64 `json:"opened"`
	OpenedActive  uint64 `json:"opened_active"`
	OpenedPassive uint64 `json:"opened_passive"`
	Closed        uint64 `json:"closed"`
	// OpensPerSecond and ClosesPerSecond over the last 1, 10 and 60 s,
	// keyed "1s", "10s", "60s".
	OpensPerSecond  map[string]float64 `json:"opens_per_second"`
	ClosesPerSecond map[string]float64 `json:"closes_per_second"`
	// States: sockets open now by TCP state name (TIME_WAIT included);
	// OldestSeconds: how long the oldest of each state has been in it.
	States        map[string]uint32  `json:"states"`
	OldestSeconds map[string]float64 `json:"oldest_seconds"`
	TimeWait      uint32             `json:"time_wait"`
	// ShortLivedShare: share of closed connections (lifetime known) that
	// lived less than thresholds.short_lived_seconds.
	ShortLivedShare       float64 `json:"short_lived_share"`
	MedianLifetimeSeconds float64 `json:"median_lifetime_seconds"`
	// Lifetime histogram: upper bound (seconds) -> connections, log2 buckets.
	Lifetime []Bucket          `json:"lifetime_histogram"`
	Ends     map[string]uint64 `json:"ends"`
	TxBytes  uint64            `json:"tx_bytes"`
	RxBytes  uint64            `json:"rx_bytes"`
}

// Bucket is one histogram bucket.
type Bucket struct {
	LeSeconds float64 `json:"le_seconds"`
	Count     uint32  `json:"count"`
}

// Process is one process in the document.
type Process struct {
	PID      uint32 `json:"pid"`
	Comm     string `json:"comm"`
	Cgroup   string `json:"cgroup"` // path as in /proc/PID/cgroup, "" if unknown
	CgroupID uint64 `json:"cgroup_id"`
	// Identity (its fields inline, each only when known) and Workload:
	// what the process runs in (Document.Name).
	*events.Identity
	Workload string `json:"workload,omitempty"`
	Stats
	PortUse float64  `json:"port_use"` // highest share of a port range held towards one destination
	Remotes []Remote `json:"remotes"`
}

// Remote is a process's connections to one remote endpoint.
type Remote struct {
	Remote string `json:"remote"` // "10.0.0.2:6379"; "10.0.0.2:*" for accepted connections
	NetNS  uint32 `json:"netns"`
	// NetNSName: the namespace's name, when known (Document.NameNetNS).
	NetNSName string `json:"netns_name,omitempty"`
	Passive   bool   `json:"passive"`
	Stats
	PortsUsed uint32 `json:"ports_used"`
	PortRange uint32 `json:"port_range"`
}

// TimeWait is the TIME_WAIT census.
type TimeWait struct {
	Total           uint32       `json:"total"`
	Unattributed    uint32       `json:"unattributed"`
	Reconciliations uint64       `json:"reconciliations"`
	ByNetNS         []NetNSCount `json:"by_netns"`
}

// NetNSCount is the TIME_WAIT census of one namespace.
type NetNSCount struct {
	NetNS        uint32 `json:"netns"`
	Total        uint32 `json:"total"`
	Unattributed uint32 `json:"unattributed"`
}

// Port is the ephemeral port use towards one destination.
type Port struct {
	NetNS     uint32  `json:"netns"`
	Local     string  `json:"local"`
	Remote    string  `json:"remote"`
	Used      uint32  `json:"used"`
	TimeWait  uint32  `json:"time_wait"`
	RangeSize uint32  `json:"range_size"`
	Share     float64 `json:"share"`
}

// Finding is one rule's verdict.
type Finding struct {
	Kind     string `json:"kind"`
	PID      uint32 `json:"pid"`
	Comm     string `json:"comm"`
	Remote   string `json:"remote"`
	Path     string `json:"path,omitempty"`     // Unix socket path, for findings about one
	Workload string `json:"workload,omitempty"` // the process's container or pod (Document.Name)
	NetNS    uint32 `json:"netns"`
	// NetNSName: the namespace's name, when known (Document.NameNetNS).
	NetNSName string             `json:"netns_name,omitempty"`
	Evidence  map[string]float64 `json:"evidence"`
	Since     time.Time          `json:"since"`
	Last      time.Time          `json:"last"`
	Message   string             `json:"message"`
	Remedy    string             `json:"remedy"`
}

// NewDocument converts a snapshot. cgroups names cgroup ids (may be nil).
func NewDocument(s *aggregate.Snapshot, interval time.Duration, cgroups map[uint64]string) *Document {
	d := &Document{
		Time: s.Time.UTC(), IntervalSeconds: interval.Seconds(), Samples: s.Rounds,
		Processes: make([]Process, 0, len(s.Processes)),
		Ports:     make([]Port, 0, len(s.Ports)),
		Findings:  make([]Finding, 0, len(s.Findings)),
		TimeWait: TimeWait{Total: s.TimeWait.Total, Unattributed: s.TimeWait.Unattributed,
			Reconciliations: s.TimeWait.Reconciliations, ByNetNS: make([]NetNSCount, 0, len(s.TimeWait.ByNetNS))},
		Thresholds: thresholds(&s.Thresholds),

		ConnectFailures: nonNil(s.ConnectFailures), Unix: nonNil(s.Unix), ConnectLatency: nonNil(s.ConnectLatency),
		Conntrack: nonNil(s.Conntrack), KernelCounters: nonNil(s.KernelCounters),
		Drops: aggregate.DropSnapshot{ByReason: nonNil(s.Drops.ByReason), ListenOverflows: nonNil(s.Drops.ListenOverflows)},
	}
	for i := range s.Processes {
		p := &s.Processes[i]
		jp := Process{PID: p.PID, Comm: p.Comm, Cgroup: cgroups[p.CgroupID], CgroupID: p.CgroupID,
			Stats: stats(&p.ConnSnapshot), PortUse: round3(p.PortUse), Remotes: make([]Remote, 0, len(p.Remotes))}
		for j := range p.Remotes {
			r := &p.Remotes[j]
			jp.Remotes = append(jp.Remotes, Remote{Remote: r.Remote, NetNS: r.Key.NetNS, Passive: r.Key.Passive,
				Stats: stats(&r.ConnSnapshot), PortsUsed: r.PortsUsed, PortRange: r.PortRange})
		}
		d.Processes = append(d.Processes, jp)
	}
	for _, n := range s.TimeWait.ByNetNS {
		d.TimeWait.ByNetNS = append(d.TimeWait.ByNetNS, NetNSCount(n))
	}
	for _, p := range s.Ports {
		d.Ports = append(d.Ports, Port{NetNS: p.NetNS, Local: p.Local.String(), Remote: p.Remote.String(),
			Used: p.Used, TimeWait: p.TimeWait, RangeSize: p.RangeSize, Share: round3(p.Share())})
	}
	for _, f := range s.Findings {
		d.Findings = append(d.Findings, Finding{Kind: f.Kind, PID: f.PID, Comm: f.Comm, Remote: f.Remote, Path: f.Path, NetNS: f.NetNS,
			Evidence: f.Evidence, Since: f.Since.UTC(), Last: f.Last.UTC(), Message: f.Message, Remedy: f.Remedy})
	}
	return d
}

// WriteJSON writes the document, indented, followed by a newline.
func (d *Document) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(d)
}

func stats(c *aggregate.ConnSnapshot) Stats {
	s := Stats{
		Opened: c.Opened, OpenedActive: c.OpenedActive, OpenedPassive: c.OpenedPassive, Closed: c.Closed,
		OpensPerSecond: map[string]float64{}, ClosesPerSecond: map[string]float64{},
		States: map[string]uint32{}, OldestSeconds: map[string]float64{},
		TimeWait: c.TimeWait, ShortLivedShare: round3(c.ShortLivedShare()),
		MedianLifetimeSeconds: c.MedianLifetime.Seconds(),
		Lifetime:              []Bucket{}, Ends: map[string]uint64{},
		TxBytes: c.TxBytes, RxBytes: c.RxBytes,
	}
	for i, w := range aggregate.RateWindows {
		k := strconv.Itoa(w) + "s"
		s.OpensPerSecond[k] = round3(c.OpenRate[i])
		s.ClosesPerSecond[k] = round3(c.CloseRate[i])
	}
	for st, sc := range c.States {
		if sc.Count == 0 {
			continue
		}
		name := events.TCPState(st).String()
		s.States[name] = sc.Count
		if sc.OldestAge > 0 {
			s.OldestSeconds[name] = round3(sc.OldestAge.Seconds())
		}
	}
	for i, n := range c.Lifetime {
		if n > 0 {
			s.Lifetime = append(s.Lifetime, Bucket{LeSeconds: aggregate.LifeBucketUpper(i).Seconds(), Count: n})
		}
	}
	for e, n := range c.Ends {
		if n > 0 {
			s.Ends[events.EndState(e).String()] = n
		}
	}
	return s
}

func thresholds(t *aggregate.Thresholds) map[string]any {
	return map[string]any{
		"short_lived_seconds":      t.ShortLived.Seconds(),
		"pool_leak_window_seconds": t.PoolLeakWindow.Seconds(),
		"pool_leak_growth":         t.PoolLeakGrowth,
		"pool_leak_close_ratio":    t.PoolLeakCloseRatio,
		"close_wait_count":         t.CloseWaitCount,
		"close_wait_age_seconds":   t.CloseWaitAge.Seconds(),
		"no_reuse_rate":            t.NoReuseRate,
		"no_reuse_median_seconds":  t.NoReuseMedian.Seconds(),
		"time_wait_count":          t.TimeWaitCount,
		"port_use_share":           t.PortUseShare,
		"fin_wait2_count":          t.FinWait2Count,
		"fin_wait2_age_seconds":    t.FinWait2Age.Seconds(),
		"idle_expiry_seconds":      t.IdleExpiry.Seconds(),
	}
}

func round3(f float64) float64 { return math.Round(f*1000) / 1000 }

// nonNil makes empty sections print as [] rather than null.
func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
