package aggregate

import (
	"github.com/conntracer/conntracer/internal/events"

	"cmp"
	"slices"
	"strings"
	"time"
)

// ConnTotals are the monotonic connection counters of a process or of a
// group of processes: what /metrics exports as counters.
type ConnTotals struct {
	OpenedActive, OpenedPassive uint64
	// ClosedActive and ClosedPassive by role; ClosedUnknown closed
	// connections open before tracing started (role unknown).
	ClosedActive, ClosedPassive, ClosedUnknown uint64
	TxBytes, RxBytes                           uint64
}

// Add adds o to t.
func (t *ConnTotals) Add(o *ConnTotals) {
	t.OpenedActive += o.OpenedActive
	t.OpenedPassive += o.OpenedPassive
	t.ClosedActive += o.ClosedActive
	t.ClosedPassive += o.ClosedPassive
	t.ClosedUnknown += o.ClosedUnknown
	t.TxBytes += o.TxBytes
	t.RxBytes += o.RxBytes
}

// Sub subtracts o from t; o must be at most t field by field (an earlier
// value of the same monotonic totals).
func (t *ConnTotals) Sub(o *ConnTotals) {
	t.OpenedActive -= o.OpenedActive
	t.OpenedPassive -= o.OpenedPassive
	t.ClosedActive -= o.ClosedActive
	t.ClosedPassive -= o.ClosedPassive
	t.ClosedUnknown -= o.ClosedUnknown
	t.TxBytes -= o.TxBytes
	t.RxBytes -= o.RxBytes
}

// Totals returns the counters of c.
func (c *ConnSnapshot) Totals() ConnTotals {
	return ConnTotals{
		OpenedActive: c.OpenedActive, OpenedPassive: c.OpenedPassive,
		ClosedActive: c.ClosedActive, ClosedPassive: c.ClosedPassive,
		ClosedUnknown: c.Closed - c.ClosedActive - c.ClosedPassive,
		TxBytes:       c.TxBytes, RxBytes: c.RxBytes,
	}
}

func (s *connStats) totals() ConnTotals {
	return ConnTotals{
		OpenedActive: s.opened[events.RoleActive], OpenedPassive: s.opened[events.RolePassive],
		ClosedActive: s.closed[events.RoleActive], ClosedPassive: s.closed[events.RolePassive],
		ClosedUnknown: s.closed[events.RoleUnknown],
		TxBytes:       s.tx, RxBytes: s.rx,
	}
}

// DepartedGroup is the running total of the processes of one group
// (comm and cgroup, the grouping of /metrics) that the aggregate expired:
// added to the group's live processes it keeps the group's counters
// monotonic for the life of the tracer, although processes come and go.
type DepartedGroup struct {
	Comm     string
	CgroupID uint64
	ConnTotals
}

// DepartedSnapshot are the totals of expired processes.
type DepartedSnapshot struct {
	// Groups, by comm then cgroup id, at most MaxDepartedGroups.
	Groups []DepartedGroup
	// Evicted sums the groups forgotten to keep within the bound (the
	// longest departed first, and never one with a live process).
	Evicted ConnTotals
}

// MaxDepartedGroups bounds the groups whose departed totals are kept.
// Groups with live processes are bounded by the processes; this bounds
// the groups of processes that are all gone (short-lived jobs with ever
// new cgroups).
const MaxDepartedGroups = 1000

type groupKey struct {
	comm     [16]byte
	cgroupID uint64
}

type departedGroup struct {
	totals ConnTotals
	last   time.Time // the last departure
}

// departedTable holds the departed totals. The aggregate writes it when a
// process expires (sampleDone), a few times per sample round at most.
type departedTable struct {
	groups  map[groupKey]*departedGroup
	evicted ConnTotals
}

// add folds the counters of p, which the aggregate is forgetting, into
// its group's departed totals.
func (d *departedTable) add(p *procStats, now time.Time) {
	t := p.groupTotals()
	d.addTotals(groupKey{comm: p.comm, cgroupID: p.cgroupID}, &t, now)
}

// leaveGroup banks the counters of p, which is about to change group (an
// exec renamed it, or it moved to another cgroup), into its old group's
// departed totals in d: the old group's counters must not lose them, and
// the new group's must not gain them (it would count them twice).
func (p *procStats) leaveGroup(d *departedTable, now time.Time) {
	t := p.groupTotals()
	if t == (ConnTotals{}) {
		return
	}
	d.addTotals(groupKey{comm: p.comm, cgroupID: p.cgroupID}, &t, now)
	p.moved.Add(&t)
}

func (d *departedTable) addTotals(k groupKey, t *ConnTotals, now time.Time) {
	if d.groups == nil {
		d.groups = make(map[groupKey]*departedGroup)
	}
	g := d.groups[k]
	if g == nil {
		g = &departedGroup{}
		d.groups[k] = g
	}
	g.totals.Add(t)
	g.last = now
}

// groupTotals are the counters p adds to its current group: those since
// it joined it.
func (p *procStats) groupTotals() ConnTotals {
	t := p.connStats.totals()
	t.Sub(&p.moved)
	return t
}

// bound evicts groups beyond MaxDepartedGroups into the evicted sum, the
// longest departed first. A group with a live process is never evicted:
// its series is exported now, and losing its departed totals would make
// it go down. A group evicted comes back, if a process of it ever shows
// up again, as a new group counting from zero: a counter reset of that
// series, long after it disappeared.
func (d *departedTable) bound(procs map[ProcKey]*procStats) {
	if len(d.groups) <= MaxDepartedGroups {
		return
	}
	live := make(map[groupKey]bool, len(procs))
	for _, p := range procs {
		live[groupKey{comm: p.comm, cgroupID: p.cgroupID}] = true
	}
	type cand struct {
		k groupKey
		g *departedGroup
	}
	var cands []cand
	for k, g := range d.groups {
		if !live[k] {
			cands = append(cands, cand{k, g})
		}
	}
	slices.SortFunc(cands, func(x, y cand) int { return x.g.last.Compare(y.g.last) })
	for _, c := range cands {
		if len(d.groups) <= MaxDepartedGroups {
			break
		}
		d.evicted.Add(&c.g.totals)
		delete(d.groups, c.k)
	}
}

func (d *departedTable) snapshot() DepartedSnapshot {
	s := DepartedSnapshot{Evicted: d.evicted, Groups: make([]DepartedGroup, 0, len(d.groups))}
	for k, g := range d.groups {
		s.Groups = append(s.Groups, DepartedGroup{Comm: string(commBytes(&k.comm)), CgroupID: k.cgroupID, ConnTotals: g.totals})
	}
	slices.SortFunc(s.Groups, func(x, y DepartedGroup) int {
		return cmp.Or(strings.Compare(x.Comm, y.Comm), cmp.Compare(x.CgroupID, y.CgroupID))
	})
	return s
}

// AtLeast tells whether every counter of t is at least that of o: t is a
// later value of the same monotonic totals.
func (t *ConnTotals) AtLeast(o *ConnTotals) bool {
	return t.OpenedActive >= o.OpenedActive && t.OpenedPassive >= o.OpenedPassive &&
		t.ClosedActive >= o.ClosedActive && t.ClosedPassive >= o.ClosedPassive &&
		t.ClosedUnknown >= o.ClosedUnknown && t.TxBytes >= o.TxBytes && t.RxBytes >= o.RxBytes
}
