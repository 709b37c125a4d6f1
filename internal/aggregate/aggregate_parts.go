package aggregate

import (
	"github.com/conntracer/conntracer/internal/events"

	"cmp"
	"slices"
)

// The Aggregator owns the sub-aggregates of the other concerns, so that one
// Apply (the event loop live, a reader of recordings on replay) drives them
// all and one Snapshot carries every section:
//   - connect: failed connects, Unix socket paths and connect latency
//     (ConnectStats: KindConnect, KindUnixListener, KindUnixDgramSend,
//     KindConnClosed);
//   - drops: drop counts by reason and listen-queue overflows (DropStats:
//     KindDrop, KindDropCount, KindListenOverflow);
//   - conntrack: per-namespace table statistics and table-full drops
//     (ConntrackStats: KindConntrackStats, the entry lifecycle kinds, KindDrop),
//     and the entry table (the entry lifecycle kinds, joined with the
//     sockets of KindSockOpen, KindConnExisting and KindConnClosed).
//
// Drop events are named (reason, kernel location) before the sub-aggregates
// see them, by the DropNames given to SetDropNames: names come from the
// running kernel (BTF, kallsyms), which this package cannot read.

// SetDropNames makes Apply name drop events with n (in place) before
// aggregating them. Without it drops keep the names they carry (a replay
// of named events), or none.
func (a *Aggregator) SetDropNames(n *events.DropNames) { a.dropNames = n }

// SetConnectRules sets the thresholds of the connect path's findings and
// the lookup of a namespace's ephemeral ports that port_exhaustion cites
// (nil: the finding goes without them). ports may block for a few
// milliseconds; it is called from Apply, at most once per sample round and
// namespace with failing connects.
func (a *Aggregator) SetConnectRules(r ConnectRules, ports PortInfoFunc) {
	a.connectRules, a.portInfo = r, ports
}

// applyParts hands ev to the sub-aggregates that take its kind. The order
// matters for KindDrop: names first, then drops, then conntrack.
func (a *Aggregator) applyParts(ev *events.Event) {
	switch ev.Kind {
	case events.KindConnect, events.KindUnixListener, events.KindUnixDgramSend:
		a.connect.Apply(ev, a.now)
		a.hists.apply(ev)
	case events.KindConnClosed:
		a.connect.Apply(ev, a.now)
		a.hists.apply(ev)
		a.conntrack.Apply(ev, a.now) // the entry table's socket index
	case events.KindSockOpen, events.KindSockSampleDone, events.KindConnExisting:
		a.conntrack.Apply(ev, a.now)
	case events.KindDrop, events.KindDropCount, events.KindListenOverflow:
		if a.dropNames != nil {
			a.dropNames.Apply(ev)
		}
		a.drops.Apply(ev, a.now)
		a.conntrack.Apply(ev, a.now)
	case events.KindConntrackStats, events.KindConntrackNew, events.KindConntrackUpdate,
		events.KindConntrackDestroy, events.KindConntrackResync:
		a.conntrack.Apply(ev, a.now)
	case events.KindKernelCounters, events.KindTracerCounters:
		a.counters.Apply(ev, a.now)
	case events.KindNetNSNew, events.KindNetNSGone:
		// Per-namespace state is forgotten when its namespace goes (else
		// its series stay for ever, and a namespace reusing its inode
		// inherits them); a new namespace's counters start from zero.
		a.conntrack.Apply(ev, a.now)
		a.drops.Apply(ev, a.now)
		a.counters.Apply(ev, a.now)
	}
}

// partFindings evaluates the sub-aggregates' rules; they keep their own
// first-seen times.
func (a *Aggregator) partFindings() []Finding {
	out := a.connect.ConnectFindings(a.now, a.connectRules, a.portInfo)
	out = append(out, ConntrackFindings(a.conntrack.Snapshot())...)
	out = append(out, DropFindings(a.drops.Snapshot(), a.now)...)
	return out
}

// sortFindings orders findings by severity (findingSeverity), then
// stably by kind and subject, so that a view cut to a few rows keeps
// what is failing now.
func sortFindings(f []Finding) {
	slices.SortFunc(f, func(x, y Finding) int {
		return cmp.Or(cmp.Compare(findingSeverity(x.Kind), findingSeverity(y.Kind)), cmp.Compare(x.Kind, y.Kind), cmp.Compare(x.PID, y.PID), cmp.Compare(x.Remote, y.Remote),
			cmp.Compare(x.Path, y.Path), cmp.Compare(x.NetNS, y.NetNS))
	})
}

// partSnapshots fills the sections of the other concerns.
func (a *Aggregator) partSnapshots(s *Snapshot) {
	c := a.connect.Snapshot()
	s.ConnectFailures, s.Unix, s.ConnectLatency = c.ConnectFailures, c.Unix, c.ConnectLatency
	s.Conntrack = a.conntrack.Snapshot()
	s.Drops = a.drops.Snapshot()
	s.Histograms = a.hists.h // an array: copied
	s.KernelCounters = a.counters.Snapshot()
}
