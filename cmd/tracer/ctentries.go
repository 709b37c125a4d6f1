package main

import (
	"context"
	"fmt"

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

// Values of --conntrack-entries.
const (
	ctEntriesAuto      = "auto"
	ctEntriesCtnetlink = "ctnetlink"
	ctEntriesOff       = "off"
)

// chooseConntrackSource picks the entry source. Under "auto", where the
// probe's in-kernel conntrack hooks attached (fentry or kprobes on
// nf_conntrack), they report inserts and removals through the ring buffer,
// and a ctnetlink dumper adds what they cannot see: the TCP state of each
// entry (conntrack's state changes have no hook) and the entries older
// than the tracer; otherwise, and with "ctnetlink", ctnetlink's event
// groups report everything. nil: off.
func chooseConntrackSource(cfg *topConfig, probe *probe.Probe, out chan<- []events.Event) (conntrackEntrySource, error) {
	switch cfg.ctEntries {
	case ctEntriesOff:
		return nil, nil
	case ctEntriesAuto, "":
		if hooks, ok := probe.ConntrackInKernel(); ok {
			w := kernel.NewCtEvents(out)
			w.DumpEvery = cfg.ctRefresh
			return inKernelCtSource{w, hooks + ", TCP states from " + w.Name()}, nil
		}
		fallthrough
	case ctEntriesCtnetlink:
		w := kernel.NewCtEvents(out)
		w.ReadBuffer, w.RefreshEvery = cfg.ctReadBuffer, cfg.ctRefresh
		return w, nil
	}
	return nil, fmt.Errorf("--conntrack-entries %q: use auto, ctnetlink or off", cfg.ctEntries)
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
