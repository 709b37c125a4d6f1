package export

import (
	"github.com/conntracer/conntracer/internal/aggregate"

	"cmp"
	"math"
	"slices"
	"strings"
	"sync"
)

// Counters per process group, and the rule that keeps them monotonic.
//
// A group is the processes sharing one (comm, cgroup) label set, live or
// expired: its counters are the sums over its live processes plus the
// totals of its expired ones, which the aggregate keeps (Snapshot.Departed),
// so a process going away never takes its counts out of its group.
//
// Top-K folding ranks groups, not processes, by the activity of their live
// processes (opens + closes + open sockets; a group whose processes are
// all gone has none). The K most active have series of their own, the
// rest are summed into comm="other". Prometheus lets a series disappear
// and come back, never go down; a group moving between its own series and
// "other" must therefore neither take its past out of "other" nor bring a
// lower value back to its own series. The rule:
//   - a group's own series shows the group's totals since the tracer
//     started, whenever it is exported: it disappears while the group is
//     folded, and comes back no lower;
//   - comm="other" counts what groups did while they were folded into
//     it: a group folded in adds what it does from its last exported
//     value on; a group leaving it (into the top K, or forgotten by the
//     aggregate) leaves behind what it added.
//
// So no series goes down and sum(rate(...)) over comm is the node's rate;
// a sum of raw values over comm is not the node's total (a group promoted
// from "other" brings its whole history into its own series).
//
// This needs memory of what was exported, which is the folder: it is
// advanced once per published snapshot, in publishing order (not per
// scrape: scrapes of one snapshot get one answer, whoever asks), under a
// lock as scrapes may run concurrently, and holds one entry per group of
// the last snapshot.
//
// Not covered: a group the aggregate forgot (events.MaxDepartedGroups,
// long after its last process went away) that comes back starts from
// zero, as may a group whose cgroup was renamed onto another's labels: a
// reset of that group's series. "other" stays monotonic even then.

// groupLabels is the label set of a process group.
type groupLabels struct {
	comm, cgroup string
	// namespace, pod, container: the owner's names (metrics_identity.go).
	namespace, pod, container string
}

// procGroup is one label set's series: counters, and gauges of now.
type procGroup struct {
	groupLabels
	totals  aggregate.ConnTotals
	sockets [len(aggregate.ConnSnapshot{}.States)]uint32
	portUse float64
	// activity ranks groups; minPID breaks ties (the oldest pid first).
	activity uint64
	minPID   uint32
}

func commLabel(comm string) string {
	if comm == "" {
		return "unknown" // the owner is not known
	}
	return comm
}

// groups sums the snapshot's processes, live and departed, per label set,
// the most active first.
func (c *Collector) groups(s *aggregate.Snapshot) []*procGroup {
	n := len(s.Processes) + len(s.Departed.Groups)
	byLabels := make(map[groupLabels]*procGroup, n)
	slab := make([]procGroup, 0, n) // one allocation; never regrown
	group := func(comm string, cgroupID uint64) *procGroup {
		l := groupLabels{comm: commLabel(comm)}
		if c.opts.CgroupName != nil && cgroupID != 0 {
			l.cgroup = c.opts.CgroupName(cgroupID)
		}
		c.identityLabels(&l, cgroupID)
		g := byLabels[l]
		if g == nil {
			slab = append(slab, procGroup{groupLabels: l, minPID: math.MaxUint32})
			g = &slab[len(slab)-1]
			byLabels[l] = g
		}
		return g
	}
	for i := range s.Processes {
		p := &s.Processes[i]
		if c.retired(p.CgroupID) {
			continue
		}
		g := group(p.Comm, p.CgroupID)
		t := p.Totals()
		t.Sub(&p.Moved) // counted in its former group
		g.totals.Add(&t)
		for st := range p.States {
			g.sockets[st] += p.States[st].Count
		}
		g.portUse = max(g.portUse, p.PortUse)
		g.activity += p.Opened + p.Closed + uint64(p.Open())
		g.minPID = min(g.minPID, p.PID)
	}
	for i := range s.Departed.Groups {
		d := &s.Departed.Groups[i]
		if c.retired(d.CgroupID) {
			continue
		}
		g := group(d.Comm, d.CgroupID)
		g.totals.Add(&d.ConnTotals)
	}
	out := make([]*procGroup, 0, len(byLabels))
	for _, g := range byLabels {
		out = append(out, g)
	}
	slices.SortFunc(out, func(x, y *procGroup) int {
		return cmp.Or(cmp.Compare(y.activity, x.activity), cmp.Compare(x.minPID, y.minPID),
			strings.Compare(x.comm, y.comm), strings.Compare(x.cgroup, y.cgroup),
			strings.Compare(x.namespace, y.namespace), strings.Compare(x.pod, y.pod), strings.Compare(x.container, y.container))
	})
	return out
}

// folder is the memory of the top-K folding; see the comment above.
type folder struct {
	mu   sync.Mutex
	snap *aggregate.Snapshot // the snapshot out was made of
	out  []*procGroup

	members map[groupLabels]*member
	gen     uint64 // folds done
	// otherAcc is what groups no longer in "other" added to it.
	otherAcc aggregate.ConnTotals
}

// member is a group's place in the exposition at the last fold.
type member struct {
	gen   uint64 // the last fold that saw it
	other bool
	// last are the group's totals at the last fold; base, for a group in
	// "other", its totals when it was folded in: it added last - base.
	base, last aggregate.ConnTotals
}

func (m *member) added() *aggregate.ConnTotals { return sub(m.last, m.base) }

// fold loads the latest snapshot and returns it with its groups' series,
// the top k folded, advancing the folder if the snapshot is new. The load
// is under the lock: concurrent scrapes advance the folder in the order
// snapshots were published, never back to an older one.
func (f *folder) fold(load func() *aggregate.Snapshot, groups func(*aggregate.Snapshot) []*procGroup, k int) (*aggregate.Snapshot, []*procGroup) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := load()
	if s == nil || s == f.snap {
		return s, f.out
	}
	if f.members == nil {
		f.members = map[groupLabels]*member{}
	}
	f.gen++
	other := &procGroup{groupLabels: groupLabels{comm: "other"}}
	var out []*procGroup
	for rank, g := range groups(s) {
		own := rank < k
		m := f.members[g.groupLabels]
		if m == nil { // new: all it did since the tracer started is news
			m = &member{other: !own}
			f.members[g.groupLabels] = m
		}
		m.gen = f.gen
		if !g.totals.AtLeast(&m.last) {
			// Its totals went down (forgotten and back, or labels
			// traded): keep what it added, count it anew.
			if m.other {
				f.otherAcc.Add(m.added())
			}
			m.base, m.last = aggregate.ConnTotals{}, aggregate.ConnTotals{}
		}
		switch {
		case m.other && own: // promoted: what it did until now stays in "other"
			m.last = g.totals
			f.otherAcc.Add(m.added())
			m.other = false
		case !m.other && !own: // demoted: counted from its last exported value
			m.base, m.other = m.last, true
		}
		m.last = g.totals
		if own {
			out = append(out, g)
			continue
		}
		for st, n := range g.sockets {
			other.sockets[st] += n
		}
		other.portUse = max(other.portUse, g.portUse)
	}
	inOther := false
	for l, m := range f.members {
		if m.gen != f.gen { // forgotten: what it added to "other" stays
			if m.other {
				f.otherAcc.Add(m.added())
			}
			delete(f.members, l)
			continue
		}
		inOther = inOther || m.other
	}
	other.totals = f.otherAcc
	for _, m := range f.members {
		if m.other {
			other.totals.Add(m.added())
		}
	}
	if inOther || other.totals != (aggregate.ConnTotals{}) {
		out = append(out, other)
	}
	f.snap, f.out = s, out
	return s, out
}

func sub(a, b aggregate.ConnTotals) *aggregate.ConnTotals {
	a.Sub(&b)
	return &a
}
