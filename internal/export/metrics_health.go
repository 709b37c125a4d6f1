package export

import (
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// HealthCounts are the tracer's own numbers, as the event loop last saw
// them: absolute values, since the probe keeps running totals.
type HealthCounts struct {
	Records        uint64 // records read from the ring buffer
	BadRecords     uint64 // records the decoder rejected
	Lost           uint64 // records the kernel could not reserve (ring buffer full)
	SampledEvents  uint64 // events the samplers handed to the event loop
	RingUsedBytes  int    // bytes waiting in the ring buffer
	RingSizeBytes  int
	SockEntries    int // entries of the socks map at the last socket-table round
	SockMaxEntries int
	// ConntrackLost: ctnetlink event overruns (ENOBUFS), each resynchronised
	// with a dump of the namespace's table.
	ConntrackLost uint64
}

// Health is the tracer's self-instrumentation on the exporter's registry:
// events read and lost by stage, ring buffer use, attachments by hook and
// mode, map fill. The event loop stores counts with Set; scrapes read
// them through atomics, so neither waits for the other.
type Health struct {
	c [9]atomic.Int64
	// progress: when the event loop last handed over its counts (it does
	// whenever the ring buffer runs dry, at most twice a second), in Unix
	// ns; 0 until it first does. created: when the Health was made.
	progress atomic.Int64
	created  time.Time
}

// NewHealth registers the tracer's own metrics on reg; attached lists the
// hooks with their attach mode ("" when the hook is off).
func NewHealth(reg prometheus.Registerer, attached map[string]string) (*Health, error) {
	h := &Health{created: time.Now()}
	read := func(i int) func() float64 { return func() float64 { return float64(h.c[i].Load()) } }
	counter := func(name, help string, labels prometheus.Labels, i int) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "conntracer_" + name, Help: help, ConstLabels: labels}, read(i))
	}
	gauge := func(name, help string, labels prometheus.Labels, i int) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "conntracer_" + name, Help: help, ConstLabels: labels}, read(i))
	}
	const readHelp = "Events read by the tracer, by stage (ring_buffer: records from the kernel; sampler: events from the kernel's tables)."
	const lostHelp = "Events lost, by stage (kernel: ring buffer full at reserve; decoder: records that failed to decode; ctnetlink: conntrack event socket overruns, each at least one event, each followed by a table dump)."
	cs := []prometheus.Collector{
		counter("events_read_total", readHelp, prometheus.Labels{"stage": "ring_buffer"}, 0),
		counter("events_read_total", readHelp, prometheus.Labels{"stage": "sampler"}, 3),
		counter("events_lost_total", lostHelp, prometheus.Labels{"stage": "kernel"}, 2),
		counter("events_lost_total", lostHelp, prometheus.Labels{"stage": "decoder"}, 1),
		counter("events_lost_total", lostHelp, prometheus.Labels{"stage": "ctnetlink"}, 8),
		gauge("ring_buffer_used_bytes", "Bytes waiting in the kernel-to-user ring buffer at the last drain.", nil, 4),
		gauge("ring_buffer_size_bytes", "Size of the kernel-to-user ring buffer.", nil, 5),
		gauge("map_entries", "Entries of a BPF map (socks: connections tracked in the kernel).", prometheus.Labels{"map": "socks"}, 6),
		gauge("map_max_entries", "Capacity of a BPF map.", prometheus.Labels{"map": "socks"}, 7),
	}
	att := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "conntracer_program_attached",
		Help: "1 when the hook's programs are attached in this mode (tp_btf, raw_tp, tracepoint); 0 with mode=\"off\".",
	}, []string{"hook", "mode"})
	for hook, mode := range attached {
		v := 1.0
		if mode == "" {
			mode, v = "off", 0
		}
		for _, h := range hookLabels(hook) {
			att.WithLabelValues(h, mode).Set(v)
		}
	}
	cs = append(cs, att)
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return h, nil
}

// hookLabels turns an attachment's name into clean label values, one per
// kernel hook: the probe's names are written for people, e.g.
// "syscalls/sys_exit_{sendto,sendmsg,sendmmsg} (unix dgram, write off)"
// becomes syscalls/sys_exit_sendto, syscalls/sys_exit_sendmsg and
// syscalls/sys_exit_sendmmsg; "conntrack entries" becomes
// conntrack_entries.
func hookLabels(name string) []string {
	if i := strings.Index(name, " ("); i >= 0 {
		name = name[:i] // the remark is for the start-up line
	}
	name = strings.ReplaceAll(strings.TrimSpace(name), " ", "_")
	open, end := strings.IndexByte(name, '{'), strings.IndexByte(name, '}')
	if open < 0 || end < open {
		return []string{name}
	}
	var out []string
	for _, alt := range strings.Split(name[open+1:end], ",") {
		out = append(out, hookLabels(name[:open]+alt+name[end+1:])...)
	}
	return out
}

// Progress returns when the event loop last handed over its counts, or
// when the Health was made if it has not yet; started says whether it has.
// A loop that is alive does at least every poll interval (and at most
// twice a second), so an old time means a wedged loop.
func (h *Health) Progress() (last time.Time, started bool) {
	if ns := h.progress.Load(); ns != 0 {
		return time.Unix(0, ns), true
	}
	return h.created, false
}

// Set stores the latest counts; safe from any goroutine.
func (h *Health) Set(c HealthCounts) {
	h.progress.Store(time.Now().UnixNano())
	for i, v := range [9]int64{int64(c.Records), int64(c.BadRecords), int64(c.Lost), int64(c.SampledEvents),
		int64(c.RingUsedBytes), int64(c.RingSizeBytes), int64(c.SockEntries), int64(c.SockMaxEntries), int64(c.ConntrackLost)} {
		h.c[i].Store(v)
	}
}

// NewBuildInfo returns the conntracer_build_info metric: constant 1,
// labelled with the build's version, VCS revision and Go version, the way
// exporters report theirs (join on it to see which version runs where).
func NewBuildInfo(version, revision, goVersion string) prometheus.Collector {
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "conntracer_build_info",
		Help:        "1, labelled with the version, VCS revision and Go version the running tracer was built from.",
		ConstLabels: prometheus.Labels{"version": version, "revision": revision, "goversion": goVersion},
	})
	g.Set(1)
	return g
}
