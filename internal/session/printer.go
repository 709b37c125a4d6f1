package session

import (
	"time"

	"github.com/conntracer/conntracer/internal/bootclock"
	"github.com/conntracer/conntracer/internal/events"
	"github.com/conntracer/conntracer/internal/export"
	"github.com/conntracer/conntracer/internal/probe"
)

// Printer is the stream's stage of the event loop: it attributes
// connections that predate tracing, names drops, applies the user's
// filters and prints finished connections, failed connects and drops
// through an export.Stream, in time order (see held), flushed when the
// ring buffer runs dry. The owners table and drop names are the
// session's (New sets them), shared with the aggregator when both run.
// It runs on the event loop only.
type Printer struct {
	owners   *events.Owners
	drops    *events.DropNames
	filter   events.Filter
	out      *export.Stream
	counts   PrintCounts
	writeErr error // first output error, reported when the loop ends

	// routine: print the failed connects export.RoutineConnectFailure
	// calls routine (--connect-routine); otherwise they are only counted.
	routine bool
	// held are the lines not printed yet, oldest first. Lines reach the
	// event loop late and out of order: ring buffer records up to a poll
	// interval late, Unix connects counted in the kernel when the map is
	// read (every 500 ms, stamped with their last call). A line is
	// printed once it is holdNs old, so that a stream read top to bottom
	// is in time order; the Unix counts of one (process, path, errno)
	// read in that time are merged into one line (the kernel may count
	// one path under several keys: glibc passes different address
	// lengths). Reused: no allocation once grown.
	held  []heldLine
	ev    events.Event  // what a held line is printed from
	now   func() uint64 // CLOCK_BOOTTIME ns (tests set it)
	holdN uint64
}

// heldLine is the part of an event that a line prints.
type heldLine struct {
	ns      uint64
	kind    events.Kind
	conn    events.Conn
	connect events.Connect
	drop    events.Drop
}

const (
	// holdNs: a line waits this long before it is printed: more than the
	// Unix connect counts' read interval (500 ms) plus the ring buffer's
	// poll interval (50 ms by default), the latest lines arrive.
	holdNs = uint64(time.Second)
	// maxHeld bounds the lines held (about 700 bytes each): under a storm
	// the oldest are printed early rather than holding without bound.
	maxHeld = 16384
)

// PrintCounts are what a Printer printed and left out.
type PrintCounts struct {
	Connections uint64 // closed connections printed
	Filtered    uint64 // closed connections the filters left out
	// ConnectFailures counts the failed connect() calls printed (a line
	// may stand for several).
	ConnectFailures uint64
	// RoutineConnectFailures counts the routine failed connect() calls
	// (export.RoutineConnectFailure) left out of the stream.
	RoutineConnectFailures uint64
	Drops                  uint64 // drop lines printed
}

// NewPrinter prints the events that pass filter to out.
func NewPrinter(out *export.Stream, filter events.Filter) *Printer {
	return &Printer{out: out, filter: filter, now: bootclock.Now, holdN: holdNs}
}

// PrintRoutine makes the printer print routine failed connects too
// (--connect-routine); by default they are counted only.
func (p *Printer) PrintRoutine(on bool) { p.routine = on }

// Counts returns what was printed; read it once the session's Run has
// returned.
func (p *Printer) Counts() PrintCounts { return p.counts }

// Close prints the lines held, flushes and returns the first output
// error.
func (p *Printer) Close() error {
	p.release(^uint64(0))
	p.check(p.out.Flush())
	return p.writeErr
}

// HandleEvent implements probe.Handler.
func (p *Printer) HandleEvent(ev *events.Event) {
	p.owners.Apply(ev)
	p.print(ev)
}

func (p *Printer) applyAt(ev *events.Event, _ time.Time) { p.HandleEvent(ev) }

// print prints an event the owners table has seen already.
func (p *Printer) print(ev *events.Event) {
	if ev.Kind == events.KindConnect {
		p.printConnect(ev)
		return
	}
	p.drops.Apply(ev)
	if ev.Kind == events.KindDrop {
		// The kernel applied the namespace filter; drops have no
		// connection to match the other filters against.
		p.counts.Drops++
		p.hold(ev, ev.Drop.TimeNs)
		return
	}
	if ev.Kind != events.KindConnClosed {
		return
	}
	if !p.filter.Match(ev) {
		p.counts.Filtered++
		return
	}
	p.counts.Connections++
	p.hold(ev, ev.Conn.CloseNs)
}

// printConnect prints failed connect() calls that pass the filters.
func (p *Printer) printConnect(ev *events.Event) {
	c := &ev.Connect
	if !c.Failed() {
		return
	}
	if !p.filter.MatchConnect(c) {
		return
	}
	if !p.routine && export.RoutineConnectFailure(c) {
		p.counts.RoutineConnectFailures += c.Count
		return
	}
	p.counts.ConnectFailures += c.Count
	if c.Family == events.FamilyUnix && p.merge(c) {
		return
	}
	p.hold(ev, c.EndNs)
}

// setIdentities names owners' containers in the lines and for the
// filters on them.
func (p *Printer) setIdentities(lookup events.CgroupLookup, netns events.NetNSLookup) {
	p.out.SetIdentities(lookup)
	p.out.SetNetNSNames(netns)
	p.filter.Identities = lookup
}

// hold keeps a line to print at time ns, in order among those held: most
// lines come in order, so the insertion walks back a step or two.
func (p *Printer) hold(ev *events.Event, ns uint64) {
	if len(p.held) >= maxHeld {
		p.release(p.held[len(p.held)/2].ns)
	}
	p.held = append(p.held, heldLine{ns: ns, kind: ev.Kind})
	i := len(p.held) - 1
	for ; i > 0 && p.held[i-1].ns > ns; i-- {
		p.held[i] = p.held[i-1]
	}
	h := &p.held[i]
	*h = heldLine{ns: ns, kind: ev.Kind}
	switch ev.Kind {
	case events.KindConnClosed:
		h.conn = ev.Conn
	case events.KindConnect:
		h.connect = ev.Connect
	default:
		h.drop = ev.Drop
	}
}

// merge adds the counts of a Unix connect to a held line of the same
// process, namespace, path, socket type and errno, and moves it to the
// later time. It reports whether there was one.
func (p *Printer) merge(c *events.Connect) bool {
	for i := range p.held {
		h := &p.held[i]
		o := &h.connect
		if h.kind != events.KindConnect || o.Family != events.FamilyUnix || o.Errno != c.Errno ||
			o.Owner.PID != c.Owner.PID || o.Owner.StartNs != c.Owner.StartNs || o.NetNS != c.NetNS ||
			o.SockType != c.SockType || o.Path != c.Path {
			continue
		}
		o.Count += c.Count
		o.LatencySumNs += c.LatencySumNs
		o.StartNs = min(o.StartNs, c.StartNs)
		if c.EndNs > o.EndNs {
			o.EndNs = c.EndNs
			p.ev.Kind, p.ev.Connect = events.KindConnect, *o
			copy(p.held[i:], p.held[i+1:])
			p.held = p.held[:len(p.held)-1]
			p.hold(&p.ev, c.EndNs)
		}
		return true
	}
	return false
}

// release prints the held lines of time up to ns, in order.
func (p *Printer) release(ns uint64) {
	n := 0
	for ; n < len(p.held) && p.held[n].ns <= ns; n++ {
		h := &p.held[n]
		p.ev.Kind = h.kind
		switch h.kind {
		case events.KindConnClosed:
			p.ev.Conn = h.conn
		case events.KindConnect:
			p.ev.Connect = h.connect
		default:
			p.ev.Drop = h.drop
		}
		p.check(p.out.Print(&p.ev))
	}
	p.held = p.held[:copy(p.held, p.held[n:])]
}

// Drained implements probe.Handler: print the lines old enough, and flush
// while the kernel is quiet.
func (p *Printer) Drained() {
	if now := p.now(); now > p.holdN {
		p.release(now - p.holdN)
	}
	p.check(p.out.Flush())
}

func (p *Printer) check(err error) {
	if err != nil && p.writeErr == nil {
		p.writeErr = err
	}
}

// tee is the handler of the stream with /metrics: every event is
// attributed once (the shared owners table), printed, then aggregated.
type tee struct {
	print *Printer
	agg   *loop
}

// HandleEvent implements probe.Handler.
func (t tee) HandleEvent(ev *events.Event) { t.applyAt(ev, time.Now()) }

func (t tee) applyAt(ev *events.Event, now time.Time) {
	t.print.HandleEvent(ev)
	t.agg.applyAttributed(ev, now)
}

// Drained implements probe.Handler.
func (t tee) Drained() {
	t.print.Drained()
	t.agg.Drained()
}

var (
	_ probe.Handler = (*Printer)(nil)
	_ probe.Handler = tee{}
)
