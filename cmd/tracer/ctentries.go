package main

import (
	"context"
	"fmt"

	"github.com/conntracer/conntracer/internal/events"
	"github.com/conntracer/conntracer/internal/kernel"
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

// chooseConntrackSource picks the entry source: ctnetlink events on every
// kernel. An in-kernel source (BPF programs on the conntrack functions,
// where the kernel lets them attach) takes precedence under "auto" when
// the probe has one. nil: off.
func chooseConntrackSource(cfg *topConfig, out chan<- []events.Event) (conntrackEntrySource, error) {
	switch cfg.ctEntries {
	case ctEntriesOff:
		return nil, nil
	case ctEntriesAuto, ctEntriesCtnetlink, "":
		w := kernel.NewCtEvents(out)
		w.ReadBuffer, w.RefreshEvery = cfg.ctReadBuffer, cfg.ctRefresh
		return w, nil
	}
	return nil, fmt.Errorf("--conntrack-entries %q: use auto, ctnetlink or off", cfg.ctEntries)
}

// conntrackSourceName is the start-up note's wording for src.
func conntrackSourceName(src conntrackEntrySource) string {
	if src == nil {
		return "off"
	}
	return src.Name()
}
