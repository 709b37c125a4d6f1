package export

import (
	"github.com/conntracer/conntracer/internal/aggregate"

	"cmp"
	"fmt"
	"slices"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/conntracer/conntracer/internal/events"
)

// MetricsOptions bound what the collector exports.
type MetricsOptions struct {
	// TopProcesses is how many process groups (comm and cgroup), the
	// most active first (opens, closes and open sockets of their live
	// processes), get series of their own; the others are folded into
	// comm="other" (the rule: metrics_fold.go).
	TopProcesses int
	// Destinations is how many of the busiest destinations get port-use
	// series labelled by destination; 0 (the default) exports none: an
	// address label is opt-in.
	Destinations int
	// CgroupName names a cgroup id for the cgroup label; nil or "" leaves
	// the label empty.
	CgroupName func(id uint64) string
	// Identities names a cgroup id's Kubernetes namespace, pod and
	// container for the labels of those names (metrics_identity.go); nil
	// leaves them empty.
	Identities events.CgroupLookup
	// NetNSNames names network namespaces for the netns_name label beside
	// netns on the per-namespace series (the pod, container, `ip netns`
	// name or "host"; "" when nothing names it); nil: no such label.
	NetNSNames events.NetNSLookup
}

// DefaultMetricsOptions are the exporter's defaults.
func DefaultMetricsOptions() MetricsOptions { return MetricsOptions{TopProcesses: 20} }

// Collector turns the latest aggregate snapshot into const metrics at
// scrape time. Describe and Collect read the snapshot the event loop last
// published, which is immutable, so a scrape never blocks the event loop.
// Its one piece of state is the top-K folding's memory (metrics_fold.go),
// advanced once per snapshot, so that no counter goes down when a group
// moves in or out of comm="other"; scrapes of one snapshot get one answer.
type Collector struct {
	snap func() *aggregate.Snapshot
	opts MetricsOptions
	d    metricDescs
	fold folder
}

// NewCollector returns a collector reading snapshots from snap (for
// example the event loop's last published one).
func NewCollector(snap func() *aggregate.Snapshot, opts MetricsOptions) *Collector {
	if opts.TopProcesses < 0 {
		opts.TopProcesses = 0
	}
	return &Collector{snap: snap, opts: opts, d: newMetricDescs(opts.Identities != nil, opts.NetNSNames != nil)}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	c.d.each(func(d *prometheus.Desc) { ch <- d })
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	s, groups := c.fold.fold(c.snap, c.groups, c.opts.TopProcesses)
	if s == nil {
		return
	}
	c.collectProcesses(ch, s, groups)
	c.collectHistograms(ch, s)
	c.collectNode(ch, s)
}

func (c *Collector) collectProcesses(ch chan<- prometheus.Metric, s *aggregate.Snapshot, groups []*procGroup) {
	d := &c.d
	counter := func(desc *prometheus.Desc, v uint64, lv ...string) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.CounterValue, float64(v), lv...)
	}
	for _, g := range groups {
		t := &g.totals
		counter(d.opened, t.OpenedActive, c.labels(g, "active")...)
		counter(d.opened, t.OpenedPassive, c.labels(g, "passive")...)
		counter(d.closed, t.ClosedActive, c.labels(g, "active")...)
		counter(d.closed, t.ClosedPassive, c.labels(g, "passive")...)
		if t.ClosedUnknown > 0 {
			counter(d.closed, t.ClosedUnknown, c.labels(g, "unknown")...) // opened before tracing
		}
		counter(d.sent, t.TxBytes, c.labels(g)...)
		counter(d.received, t.RxBytes, c.labels(g)...)
		for st, n := range g.sockets {
			if n > 0 {
				ch <- prometheus.MustNewConstMetric(d.sockets, prometheus.GaugeValue, float64(n),
					c.labels(g, events.TCPState(st).String())...)
			}
		}
		ch <- prometheus.MustNewConstMetric(d.portUse, prometheus.GaugeValue, g.portUse, c.labels(g)...)
	}
	ch <- prometheus.MustNewConstMetric(d.processes, prometheus.GaugeValue, float64(len(s.Processes)))
}

func (c *Collector) collectNode(ch chan<- prometheus.Metric, s *aggregate.Snapshot) {
	d := &c.d
	gauge := func(desc *prometheus.Desc, v float64, lv ...string) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, v, lv...)
	}
	counter := func(desc *prometheus.Desc, v uint64, lv ...string) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.CounterValue, float64(v), lv...)
	}

	// TIME_WAIT per namespace, from the reconciled census.
	for _, ns := range s.TimeWait.ByNetNS {
		gauge(d.timeWait, float64(ns.Total), c.netns(ns.NetNS)...)
	}

	// Port use: the busiest destination per namespace by default; per
	// destination only when asked, and capped.
	busiest := map[uint32]float64{}
	for i := range s.Ports {
		p := &s.Ports[i]
		busiest[p.NetNS] = max(busiest[p.NetNS], p.Share())
	}
	for _, ns := range sortedKeys(busiest) {
		gauge(d.portUseMax, busiest[ns], c.netns(ns)...)
	}
	type dest struct {
		netns  uint32
		remote string
	}
	perDest := map[dest]*aggregate.PortUse{}
	var dests []dest
	for i := range s.Ports { // most used first
		p := &s.Ports[i]
		k := dest{p.NetNS, p.Remote.String()}
		if q := perDest[k]; q != nil {
			q.Used += p.Used // another local address towards the same destination
			continue
		}
		if len(dests) >= c.opts.Destinations {
			continue
		}
		cp := *p
		perDest[k] = &cp
		dests = append(dests, k)
	}
	for _, k := range dests {
		p := perDest[k]
		gauge(d.destPorts, float64(p.Used), c.netns(k.netns, k.remote)...)
		gauge(d.destRange, float64(p.RangeSize), c.netns(k.netns, k.remote)...)
	}

	// Connect failures by errno.
	byErrno := map[string]uint64{}
	for i := range s.ConnectFailures {
		for name, n := range s.ConnectFailures[i].Counts {
			byErrno[name] += n
		}
	}
	for _, e := range sortedKeys(byErrno) {
		counter(d.connectFailures, byErrno[e], e)
	}

	// Drops by reason.
	byReason := map[string]uint64{}
	for r, n := range s.Drops.Departed { // namespaces gone: totals never go down
		byReason[r] += n
	}
	for _, dc := range s.Drops.ByReason {
		byReason[dc.Reason] += dc.Count
	}
	for _, r := range sortedKeys(byReason) {
		counter(d.drops, byReason[r], r)
	}

	// Listen and Unix backlog overflows per namespace.
	listen := map[uint32]uint64{}
	for _, lo := range s.Drops.ListenOverflows {
		listen[lo.NetNS] += lo.Overflows
	}
	for _, ns := range sortedKeys(listen) {
		counter(d.listenOverflows, listen[ns], c.netns(ns)...)
	}
	// Unix backlog overflows in the callers' namespaces: a path socket
	// belongs to no namespace (UnixPathStats.NetNS is 0 for paths).
	unix := map[uint32]uint64{}
	for i := range s.ConnectFailures {
		if f := &s.ConnectFailures[i]; f.Family == "unix" && f.Counts["EAGAIN"] > 0 {
			unix[f.NetNS] += f.Counts["EAGAIN"] // the backlog is full
		}
	}
	for _, ns := range sortedKeys(unix) {
		counter(d.unixOverflows, unix[ns], c.netns(ns)...)
	}

	// Conntrack per namespace.
	for i := range s.Conntrack {
		ct := &s.Conntrack[i]
		ns := c.netns(ct.NetNS)
		gauge(d.ctEntries, float64(ct.Entries), ns...)
		gauge(d.ctMax, float64(ct.Max), ns...)
		counter(d.ctInserts, ct.Inserts, ns...)
		counter(d.ctInsertFailed, ct.InsertFailed, ns...)
		counter(d.ctDrops, ct.ConntrackDrops, ns...)
		counter(d.ctEarlyDrops, ct.EarlyDrops, ns...)
		for _, st := range sortedKeys(ct.ByState) {
			gauge(d.ctByState, float64(ct.ByState[st]), c.netns(ct.NetNS, st)...)
		}
		if ct.Dumps > 0 {
			counter(d.ctDumps, ct.Dumps, ns...)
		}
	}
	byComm := map[string]uint64{}
	for i := range s.Conntrack {
		for _, p := range s.Conntrack[i].TopProcesses {
			if p.Entries > 0 {
				byComm[p.Comm] += p.Entries
			}
		}
	}
	for _, comm := range sortedKeys(byComm) {
		gauge(d.ctByComm, float64(byComm[comm]), comm)
	}

	// Active findings by kind.
	kinds := map[string]int{}
	for _, f := range s.Findings {
		kinds[f.Kind]++
	}
	for _, k := range sortedKeys(kinds) {
		gauge(d.findings, float64(kinds[k]), k)
	}
}

func netnsLabel(ns uint32) string { return strconv.FormatUint(uint64(ns), 10) }

// netns returns a per-namespace series' label values: netns, then
// netns_name when the collector names namespaces, then extra. The name
// adds no series: a namespace has one name at a time, and its series go
// with it when the snapshot forgets the namespace (KindNetNSGone).
func (c *Collector) netns(ns uint32, extra ...string) []string {
	if c.opts.NetNSNames == nil {
		return append([]string{netnsLabel(ns)}, extra...)
	}
	return append([]string{netnsLabel(ns), c.opts.NetNSNames(ns)}, extra...)
}

func sortedKeys[K cmp.Ordered, V any](m map[K]V) []K {
	keys := make([]K, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// MetricNames lists the name of every metric the collector can export
// (histograms by their base name): the dashboard and alert rules are
// checked against it.
func MetricNames() []string {
	var names []string
	d := newMetricDescs(true, true)
	d.each(func(desc *prometheus.Desc) { names = append(names, descName(desc)) })
	return names
}

// descName digs the fully-qualified name out of a Desc's String form,
// the only place client_golang shows it.
func descName(d *prometheus.Desc) string {
	var name string
	fmt.Sscanf(d.String(), "Desc{fqName: %q", &name)
	return name
}
