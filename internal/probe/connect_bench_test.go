package probe

import (
	"context"
	"io"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/conntracer/conntracer/internal/events"
	"github.com/conntracer/conntracer/internal/export"
	"github.com/conntracer/conntracer/internal/testenv"
)

// BenchmarkConnectFailOverhead measures the tracer's cost on the overload
// pattern of field note 4: a client making non-blocking connects to a Unix
// socket whose backlog is full, each failing with EAGAIN, as fast as it
// can (socket, connect, close). The same workload runs alternately without
// and with the probe attached (default options, every record formatted as
// a JSON line), and the benchmark reports the median ratio of the traced
// rate to the untraced one. It also checks that the tracer counted every
// failure the client saw.
func BenchmarkConnectFailOverhead(b *testing.B) {
	testenv.RequireRoot(b)
	const pairs = 11
	const runFor = 700 * time.Millisecond
	path := filepath.Join(b.TempDir(), "full.sock")
	testenv.ListenUnix(b, path, "stream", 1)
	plan := testenv.ConnectPlan{Addr: path, NonBlock: true, Loop: runFor}
	// Fill the backlog once, so that every call of the runs fails.
	testenv.RunConnects(b, nil, "ctr-fill", testenv.ConnectPlan{Addr: path, NonBlock: true, Count: 4})

	var ratios, cpuRatios []float64
	for b.Loop() {
		for i := 0; i < pairs; i++ {
			var base, traced testenv.ConnectResult
			if i%2 == 0 {
				base = testenv.RunConnects(b, nil, "ctr-overload", plan)
				traced = tracedConnects(b, plan, false)
			} else {
				traced = tracedConnects(b, plan, false)
				base = testenv.RunConnects(b, nil, "ctr-overload", plan)
			}
			ratios = append(ratios, traced.Rate()/base.Rate())
			cpuRatios = append(cpuRatios, base.CPUPerCall()/traced.CPUPerCall())
			b.Logf("pair %d: baseline %.0f calls/s (%.0f ns CPU/call), traced %.0f calls/s (%.0f ns CPU/call), ratio %.3f, CPU ratio %.3f",
				i, base.Rate(), base.CPUPerCall()*1e9, traced.Rate(), traced.CPUPerCall()*1e9, traced.Rate()/base.Rate(), base.CPUPerCall()/traced.CPUPerCall())
		}
	}
	// BPF run time per call, in a run of its own: run-time statistics
	// cost every program run two clock reads, which the pairs leave out.
	tracedConnects(b, plan, true)
	sort.Float64s(ratios)
	b.ReportMetric(ratios[len(ratios)/2], "median-ratio")
	b.ReportMetric(ratios[0], "min-ratio")
	b.ReportMetric(ratios[len(ratios)-1], "max-ratio")
	// The same as calls per CPU second of the client: steadier on a
	// shared machine, and it leaves out the reader's own CPU.
	sort.Float64s(cpuRatios)
	b.ReportMetric(cpuRatios[len(cpuRatios)/2], "median-cpu-ratio")
}

func tracedConnects(b *testing.B, plan testenv.ConnectPlan, withStats bool) testenv.ConnectResult {
	if withStats {
		// Run-time statistics of BPF programs are a kernel-wide switch
		// that lives as long as this descriptor: on only for this run.
		stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
		if err != nil {
			b.Fatalf("enable BPF run-time stats: %v", err)
		}
		defer stats.Close()
	}
	opts := DefaultOptions()
	p, err := Open(opts)
	if err != nil {
		b.Fatalf("open probe: %v", err)
	}
	defer p.Close()
	ctx, cancel := context.WithCancel(context.Background())
	h := &discardHandler{owners: events.NewOwners(), stream: export.NewStream(io.Discard, export.FormatJSON, func(ns uint64) time.Time { return time.Unix(0, int64(ns)) })}
	// The pid is known only once the helper exits; count every process's
	// failures by pid instead and pick the helper's afterwards.
	perPID := &pidCounts{inner: h, by: map[uint32]int{}}
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx, perPID) }()
	r := testenv.RunConnects(b, nil, "ctr-overload", plan)
	cancel()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	if st := p.Stats(); st.Lost > 0 {
		b.Errorf("the probe lost %d records", st.Lost)
	}
	var runNs, runs uint64
	for _, coll := range p.colls {
		if !withStats {
			break
		}
		for _, name := range []string{connectProgCtConnectEnter, connectProgCtConnectExit} {
			if prog := coll.Programs[name]; prog != nil {
				st, err := prog.Stats()
				if err != nil {
					b.Fatal(err)
				}
				runNs += uint64(st.Runtime)
				runs += st.RunCount
				if st.RunCount > 0 {
					b.Logf("  %s: %.0f ns/run", name, float64(st.Runtime)/float64(st.RunCount))
				}
			}
		}
	}
	if withStats && r.Calls > 0 {
		b.Logf("connect programs: %d runs, %.0f ns of BPF per traced call", runs, float64(runNs)/float64(r.Calls))
	}
	want := r.Errnos["EAGAIN"]
	if got := perPID.by[uint32(r.PID)]; got != want || r.Calls != want {
		b.Errorf("tracer counted %d EAGAIN for pid %d; the client made %d calls and saw %v", got, r.PID, r.Calls, r.Errnos)
	}
	return r
}

// pidCounts runs the real per-record stages and counts EAGAIN connect
// failures per pid.
type pidCounts struct {
	inner *discardHandler
	by    map[uint32]int
}

func (h *pidCounts) HandleEvent(ev *events.Event) {
	h.inner.HandleEvent(ev)
	if ev.Kind == events.KindConnect && ev.Connect.Errno == events.ErrnoEAGAIN {
		h.by[ev.Connect.Owner.PID] += int(ev.Connect.Count)
	}
}

func (h *pidCounts) Drained() { h.inner.Drained() }
