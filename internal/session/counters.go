package session

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/conntracer/conntracer/internal/events"
	"github.com/conntracer/conntracer/internal/probe"
)

// tracerCounters applies the tracer's own loss counters as
// KindTracerCounters events, at most once per --counters-interval: one
// event per BPF object (records the kernel could not write to the ring
// buffer, runs of its programs the kernel skipped: recursion.go in
// internal/probe) and one with the reader's totals (records read, undecodable,
// sampler batches waiting). It runs on the event loop (Drained), or on
// the goroutine that owns the loop before and after it runs, because the
// probe's reader counts are the event loop's.
func (l *loop) tracerCounters(now time.Time, force bool) {
	if l.probe == nil || l.countersEvery <= 0 || (!force && now.Sub(l.countersAt) < l.countersEvery) {
		return
	}
	l.countersAt = now
	objs, err := l.probe.LostByObject()
	if err != nil {
		return // the maps are gone: the probe is closing
	}
	misses, err := l.probe.RecursionMissesByObject()
	if err != nil || len(misses) != len(objs) {
		misses = nil // the programs are gone: the probe is closing
	}
	unseenObj, unseen, err := l.probe.UnseenClosesByObject()
	if err != nil {
		unseenObj = "" // not loaded, or the probe is closing
	}
	ev := events.Event{Kind: events.KindTracerCounters}
	for i, o := range objs {
		ev.Counters = events.Counters{Object: o.Object}
		ev.Counters.Values[tcLost] = o.Lost
		if misses != nil {
			ev.Counters.Values[tcRecursionMisses] = misses[i].Unhandled
			ev.Counters.Values[tcRescued] = misses[i].Rescued
			ev.Counters.Values[tcRescuerMisses] = misses[i].RescuerMisses
		}
		if o.Object == unseenObj {
			ev.Counters.Values[tcUnseenCloses] = unseen
		}
		l.apply(&ev, now)
	}
	if l.ct != nil {
		// The entry source's losses, as one more object.
		ev.Counters = events.Counters{Object: l.ct.Name()}
		ev.Counters.Values[tcLost] = l.ct.Lost()
		l.apply(&ev, now)
	}
	st := l.probe.Stats()
	ev.Counters = events.Counters{}
	ev.Counters.Values[tcRecords] = st.Records
	ev.Counters.Values[tcUndecodable] = st.BadRecords
	ev.Counters.Values[tcBatches] = uint64(len(l.batches))
	l.apply(&ev, now)
}

// Indices into events.TracerCounterNames.
const (
	tcLost = iota
	tcRecords
	tcUndecodable
	tcBatches
	tcRecursionMisses
	tcRescued
	tcRescuerMisses
	tcUnseenCloses
)

// missesCollector serves each program's recursion misses in /metrics,
// read from the kernel at scrape time (one BPF_OBJ_GET_INFO_BY_FD per
// program, and the rescuer's per-CPU count): they are a stage where
// records are lost, beside conntracer_events_lost_total, under names of
// their own because they count skipped program runs, per program, not
// records. Three series: every skipped run as the kernel counts it
// (missed, rescuers included, so that it equals the kernel's
// recursion_misses), those a rescuer handled instead (rescued), and those
// nobody handled (unhandled: the loss).
type missesCollector struct {
	probe interface {
		RecursionMisses() ([]probe.ProgramMisses, error)
		UnseenClosesByObject() (object string, connections uint64, err error)
	}
	missed, rescued, unhandled, unseen *prometheus.Desc
}

func newMissesCollector(p *probe.Probe) *missesCollector {
	labels := []string{"object", "program"}
	return &missesCollector{
		probe: p,
		missed: prometheus.NewDesc("conntracer_program_runs_missed_total",
			"Runs of a BPF program the kernel skipped because that program was already running on that CPU "+
				"(its recursion_misses, e.g. a softirq state change interrupting a process-context one). "+
				"Some are handled by a rescuer program (conntracer_program_runs_rescued_total); the rest are lost (conntracer_program_runs_unhandled_total).",
			labels, nil),
		rescued: prometheus.NewDesc("conntracer_program_runs_rescued_total",
			"Runs of a BPF program the kernel skipped that its rescuer program handled instead: nothing lost.",
			labels, nil),
		unhandled: prometheus.NewDesc("conntracer_program_runs_unhandled_total",
			"Runs of a BPF program the kernel skipped that no rescuer handled: events lost before any record was written "+
				"(a rescuer's own skipped runs lose nothing and are not counted here).",
			labels, nil),
		unseen: prometheus.NewDesc("conntracer_closes_unseen_total",
			"Connections whose close reached no BPF program, with no skipped run counted by the kernel (seen on sandboxed hosts: "+
				"state changes in a softirq over some tasks), found when a new socket opened at the same address: each a record lost.",
			[]string{"object"}, nil),
	}
}

func (c *missesCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.missed
	ch <- c.rescued
	ch <- c.unhandled
	ch <- c.unseen
}

func (c *missesCollector) Collect(ch chan<- prometheus.Metric) {
	progs, err := c.probe.RecursionMisses()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.missed, err)
		return
	}
	for _, p := range progs {
		ch <- prometheus.MustNewConstMetric(c.missed, prometheus.CounterValue, float64(p.Misses), p.Object, p.Program)
		if p.Rescuer {
			continue
		}
		ch <- prometheus.MustNewConstMetric(c.rescued, prometheus.CounterValue, float64(p.Rescued), p.Object, p.Program)
		ch <- prometheus.MustNewConstMetric(c.unhandled, prometheus.CounterValue, float64(p.Unhandled()), p.Object, p.Program)
	}
	if obj, n, err := c.probe.UnseenClosesByObject(); err == nil {
		ch <- prometheus.MustNewConstMetric(c.unseen, prometheus.CounterValue, float64(n), obj)
	}
}
