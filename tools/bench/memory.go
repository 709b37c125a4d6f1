package main

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// Kernel map types, from include/uapi/linux/bpf.h.
const bpfMapTypeLRUHash = 9

// million is the socket count of the 1 M tracked connections row.
const million = 1 << 20

// memorySection measures `tracer serve`'s memory idle (default ring
// buffer, and the 4 MiB one the target names), takes the peak under
// churn from the churn runs, and sizes 1 M tracked connections: the
// kernel's socks map is an LRU hash, preallocated, so its memory at
// --max-sockets 1048576 is fixed and read from the map's memlock in
// /proc/PID/fdinfo (no need to open a million sockets); the user-space
// side comes from BenchmarkTrackedConnectionMemory (1 M synthetic
// connections in the Aggregator), run by the micro-benchmark section.
func (b *bench) memorySection(ctx context.Context) error {
	m := b.res.Memory
	if m == nil {
		m = &MemorySummary{}
		b.res.Memory = m
	}
	var err error
	if m.Idle, err = b.serveMemory(ctx, "idle, defaults"); err != nil {
		return err
	}
	if m.Idle4MiB, err = b.serveMemory(ctx, "idle, --ring-buffer-bytes 4194304", "--ring-buffer-bytes", "4194304"); err != nil {
		return err
	}
	var maps []bpfMap
	if m.Million, err = b.serveMemory(ctx, "idle, --max-sockets 1048576", func(pid int) {
		maps, _ = processMaps(pid)
	}, "--max-sockets", fmt.Sprint(million)); err != nil {
		return err
	}
	for _, mp := range maps {
		if mp.Type == bpfMapTypeLRUHash && mp.MaxEntries == million {
			m.SocksBytes, m.SocksMax = mp.Memlock, mp.MaxEntries
		}
	}
	if m.SocksMax == 0 {
		return fmt.Errorf("no LRU map of %d entries among the tracer's maps: is --max-sockets still the socks map's size?", million)
	}
	// Peak under churn: the highest resident set the serve runs saw.
	for _, c := range b.res.Churn {
		for _, r := range c.Runs {
			if r.Variant != VariantServe {
				continue
			}
			if m.Churn == nil || r.HWM > m.Churn.HWM {
				m.Churn = &ProcMemory{Label: fmt.Sprintf("under churn, %d client(s): end of the serve run with the highest peak", c.Clients), RSS: r.RSS, HWM: r.HWM}
			}
		}
	}
	return nil
}

// serveMemory starts `tracer serve` with extra flags, lets it settle, and
// reads its memory. An optional func(pid) argument runs before it stops.
func (b *bench) serveMemory(ctx context.Context, label string, extra ...any) (ProcMemory, error) {
	pm := ProcMemory{Label: label}
	var flags []string
	var inspect func(int)
	for _, e := range extra {
		switch v := e.(type) {
		case string:
			flags = append(flags, v)
		case func(int):
			inspect = v
		}
	}
	t, err := b.startServe(ctx, flags...)
	if err != nil {
		return pm, err
	}
	defer t.stop()
	// Idle: past the first socket-table rounds, a TIME_WAIT dump (5 s)
	// and a garbage collection of what start-up allocated.
	// Its CPU time is measured over the second half of the wait, past
	// start-up.
	select {
	case <-time.After(b.cfg.idle / 2):
	case <-ctx.Done():
		return pm, ctx.Err()
	}
	cpu0, at0 := t.cpuSeconds(), time.Now()
	select {
	case <-time.After(b.cfg.idle - b.cfg.idle/2):
	case <-ctx.Done():
		return pm, ctx.Err()
	}
	pm.CPUPercent = 100 * (t.cpuSeconds() - cpu0) / time.Since(at0).Seconds()
	st, err := statusBytes(t.PID())
	if err != nil {
		return pm, err
	}
	pm.RSS, pm.HWM, pm.Anon, pm.File = st["VmRSS"], st["VmHWM"], st["RssAnon"], st["RssFile"]
	pm.Context = machineContext()
	if pm.RingRSS, err = bpfMapRSS(t.PID()); err != nil {
		return pm, err
	}
	maps, err := processMaps(t.PID())
	if err != nil {
		return pm, err
	}
	for _, mp := range maps {
		pm.MapBytes += mp.Memlock
	}
	if mt, err := scrape(t.addr); err == nil {
		pm.GoHeap = uint64(mt.get("go_memstats_heap_inuse_bytes"))
		// Idle is the tracer's idea: what the rest of the machine did
		// meanwhile reached it too.
		var drops float64
		for k, v := range mt {
			if strings.HasPrefix(k, "conntracer_drops_total{") {
				drops += v
			}
		}
		pm.Context += fmt.Sprintf("; meanwhile %.0f records read, %.0f drops counted", mt.get(`conntracer_events_read_total{stage="ring_buffer"}`), drops)
	}
	if inspect != nil {
		inspect(t.PID())
	}
	b.logf("memory %s: CPU %.2f%% of a core, RSS %.1f MiB (anon %.1f, file %.1f, ring %.1f), HWM %.1f MiB, Go heap %.1f MiB, BPF maps %.1f MiB",
		label, pm.CPUPercent, mib(pm.RSS), mib(pm.Anon), mib(pm.File), mib(pm.RingRSS), mib(pm.HWM), mib(pm.GoHeap), mib(pm.MapBytes))
	return pm, t.stop()
}

func mib(n uint64) float64 { return float64(n) / (1 << 20) }
