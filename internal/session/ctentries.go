package session

import (
	"context"
	"fmt"
	"time"

	"github.com/conntracer/conntracer/internal/events"
	"github.com/conntracer/conntracer/internal/kernel"
	"github.com/conntracer/conntracer/internal/probe"
)

// conntrackEntrySource produces the conntrack entry lifecycle events
// (KindConntrackNew, Update, Destroy, Resync) and hands them to the event
// loop in batches, on the channel it was made with. Which one runs is
// decided once at start-up (chooseConntrackSource) and said in the
// start-up notes. A source that needs to be told which namespaces to
// follow also implements kernel.ConntrackNSWatcher: the namespace sampler
// then tells it.
type conntrackEntrySource interface {
	// Name is the path in use, for the start-up notes ("ctnetlink events").
	Name() string
	// Run produces events until ctx is done.
	Run(ctx context.Context) error
	// Lost counts what the source lost (ctnetlink: receive-buffer
	// overruns, each followed by a resynchronising dump).
	Lost() uint64
}

// ConntrackConfig says where conntrack entry events come from.
type ConntrackConfig struct {
	// Entries is ConntrackAuto, ConntrackCtnetlink or ConntrackOff.
	Entries string
	// EventsBuffer is the receive buffer of each ctnetlink event socket
	// (0: the default, 4 MiB).
	EventsBuffer int
	// Refresh is how often a namespace's table is dumped again: with
	// ctnetlink events, while entries older than the tracer remain; with
	// the in-kernel hooks, always (for the TCP states).
	Refresh time.Duration
}

// The entry sources (the values of --conntrack-entries).
const (
	ConntrackAuto      = "auto"
	ConntrackCtnetlink = "ctnetlink"
	ConntrackOff       = "off"
)

// chooseConntrackSource picks the entry source. Under "auto", where the
// probe's in-kernel conntrack hooks attached (fentry or kprobes on
// nf_conntrack), they report inserts and removals through the ring buffer,
// and a ctnetlink dumper adds what they cannot see: the TCP state of each
// entry (conntrack's state changes have no hook) and the entries older
// than the tracer; otherwise, and with "ctnetlink", ctnetlink's event
// groups report everything. nil: off.
func chooseConntrackSource(cfg ConntrackConfig, probe *probe.Probe, out chan<- []events.Event) (conntrackEntrySource, error) {
	switch cfg.Entries {
	case ConntrackOff:
		return nil, nil
	case ConntrackAuto, "":
		if hooks, ok := probe.ConntrackInKernel(); ok {
			w := kernel.NewCtEvents(out)
			w.DumpEvery, w.Sent = cfg.Refresh, probe.Wake
			return inKernelCtSource{w, hooks + ", TCP states from " + w.Name()}, nil
		}
		fallthrough
	case ConntrackCtnetlink:
		w := kernel.NewCtEvents(out)
		w.ReadBuffer, w.RefreshEvery, w.Sent = cfg.EventsBuffer, cfg.Refresh, probe.Wake
		return w, nil
	}
	return nil, fmt.Errorf("conntrack entries %q: use auto, ctnetlink or off", cfg.Entries)
}

// inKernelCtSource is the ctnetlink dumper that completes the in-kernel
// hooks, named after both.
type inKernelCtSource struct {
	*kernel.CtEvents
	name string
}

// Name says "in-kernel (fentry), TCP states from ctnetlink dumps every 10s".
func (s inKernelCtSource) Name() string { return s.name }

// conntrackSourceName is the start-up note's wording for src.
func conntrackSourceName(src conntrackEntrySource) string {
	if src == nil {
		return "off"
	}
	return src.Name()
}
