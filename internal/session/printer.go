package session

import (
	"time"

	"github.com/conntracer/conntracer/internal/events"
	"github.com/conntracer/conntracer/internal/export"
	"github.com/conntracer/conntracer/internal/probe"
)

// Printer is the stream's stage of the event loop: it attributes
// connections that predate tracing, names drops, applies the user's
// filters and prints finished connections, failed connects and drops
// through an export.Stream, flushed when the ring buffer runs dry. The
// owners table and drop names are the session's (New sets them), shared
// with the aggregator when both run. It runs on the event loop only.
type Printer struct {
	owners   *events.Owners
	drops    *events.DropNames
	filter   events.Filter
	out      *export.Stream
	counts   PrintCounts
	writeErr error // first output error, reported when the loop ends
}

// PrintCounts are what a Printer printed and left out.
type PrintCounts struct {
	Connections uint64 // closed connections printed
	Filtered    uint64 // closed connections the filters left out
	// ConnectFailures counts the failed connect() calls printed (a line
	// may stand for several).
	ConnectFailures uint64
	Drops           uint64 // drop lines printed
}

// NewPrinter prints the events that pass filter to out.
func NewPrinter(out *export.Stream, filter events.Filter) *Printer {
	return &Printer{out: out, filter: filter}
}

// Counts returns what was printed; read it once the session's Run has
// returned.
func (p *Printer) Counts() PrintCounts { return p.counts }

// Close flushes what is buffered and returns the first output error.
func (p *Printer) Close() error {
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
		p.check(p.out.Print(ev))
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
	p.check(p.out.Print(ev))
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
	p.counts.ConnectFailures += c.Count
	p.check(p.out.Print(ev))
}

// setIdentities names owners' containers in the lines and for the
// filters on them.
func (p *Printer) setIdentities(lookup events.CgroupLookup, netns events.NetNSLookup) {
	p.out.SetIdentities(lookup)
	p.out.SetNetNSNames(netns)
	p.filter.Identities = lookup
}

// Drained implements probe.Handler: flush lines while the kernel is quiet.
func (p *Printer) Drained() { p.check(p.out.Flush()) }

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
