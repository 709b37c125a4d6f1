package conntracer

import (
	"fmt"
	"io"
	"os"
	"runtime"
	"sort"
	"strconv"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/conntracer/conntracer/internal/events"
	"github.com/conntracer/conntracer/internal/export"
	"github.com/conntracer/conntracer/internal/testenv"
)

// churnVariants are the tracer configurations BenchmarkChurnCost and
// BenchmarkChurnVariants compare: where the cost of the default set of
// hooks goes.
var churnVariants = []struct {
	name string
	opts func() Options
	// noFormat runs the event loop without the stream (decode and
	// attribution only): the kernel-side cost plus the reader.
	noFormat bool
}{
	{name: "default", opts: DefaultOptions},
	{name: "tcplife-only", opts: func() Options { o := DefaultOptions(); o.NoConnect = true; return o }},
	{name: "default-no-format", opts: DefaultOptions, noFormat: true},
}

// nullHandler attributes each event and prints nothing.
type nullHandler struct{ owners *events.Owners }

func (h *nullHandler) HandleEvent(ev *events.Event) { h.owners.Apply(ev) }
func (h *nullHandler) Drained()                     {}

// BenchmarkChurnVariants runs the churn workload (one client) without the
// tracer and with each of churnVariants, rotating the order every round so
// that each variant is measured next to a baseline, and reports per
// variant the median ratio of its connection rate to the round's
// baseline, and the median extra CPU time the workload's own process
// spent per connection (the kernel-side cost of the hooks it triggers,
// BPF programs and tracepoint machinery together; see
// testenv.ChurnResult.CPUNs). It answers "what does each part cost" where
// BenchmarkChurnOverhead answers "what does the default cost"; on a shared
// machine read it over many rounds (CT_CHURN_ROUNDS, default 7).
func BenchmarkChurnVariants(b *testing.B) {
	testenv.RequireRoot(b)
	const clients, total = 1, 20000
	rounds := 7
	if n, err := strconv.Atoi(os.Getenv("CT_CHURN_ROUNDS")); err == nil && n > 0 {
		rounds = n
	}
	ratios := make([][]float64, len(churnVariants))
	cpuDelta := make([][]float64, len(churnVariants)) // workload CPU ns/conn over the baseline
	for b.Loop() {
		for r := 0; r < rounds; r++ {
			// Slot 0 is the baseline; the rest are the variants,
			// rotated so that none always runs first or last.
			order := make([]int, len(churnVariants)+1)
			for i := range order {
				order[i] = (i + r) % len(order)
			}
			runs := make([]testenv.ChurnResult, len(order))
			for _, slot := range order {
				ns := testenv.NewNetNS(b)
				if slot == 0 {
					runs[0] = testenv.RunChurn(b, ns, clients, total)
					continue
				}
				v := churnVariants[slot-1]
				var h Handler = &nullHandler{owners: events.NewOwners()}
				if !v.noFormat {
					h = &discardHandler{owners: events.NewOwners(), stream: export.NewStream(io.Discard, export.FormatJSON, func(ns uint64) time.Time { return time.Unix(0, int64(ns)) })}
				}
				p, done, stop := startChurnProbeHandler(b, v.opts(), h)
				runs[slot] = testenv.RunChurn(b, ns, clients, total)
				stop()
				if err := <-done; err != nil {
					b.Fatal(err)
				}
				p.Close()
			}
			base := runs[0]
			line := fmt.Sprintf("round %d: baseline %.0f conn/s %.1f us CPU/conn", r, base.Rate(), base.CPUPerConn()/1e3)
			for i, v := range churnVariants {
				run := runs[i+1]
				ratios[i] = append(ratios[i], run.Rate()/base.Rate())
				cpuDelta[i] = append(cpuDelta[i], run.CPUPerConn()-base.CPUPerConn())
				line += fmt.Sprintf("; %s rate %.3f, CPU %+.2f us/conn", v.name, run.Rate()/base.Rate(), (run.CPUPerConn()-base.CPUPerConn())/1e3)
			}
			fmt.Fprintln(os.Stderr, line)
		}
	}
	for i, v := range churnVariants {
		b.ReportMetric(median(ratios[i]), v.name+"-rate-ratio")
		b.ReportMetric(median(cpuDelta[i]), v.name+"-workload-cpu-ns/conn")
	}
}

// BenchmarkChurnCost breaks the tracer's cost on the churn workload down:
// for each variant of the options, interleaved over a few rounds, the
// median run time of each BPF program per run (the kernel's run-time
// statistics, on for these runs only: they add a little to every run),
// the BPF time and the tracer's own user-space CPU time (this process:
// reader, decoder, formatting) per connection. Run-time per program is far
// less sensitive to a busy machine than rate ratios are; but programs run
// for every process on the machine, so on a shared box other workloads'
// connects and accepts count in the run counts and in bpf-ns/conn.
func BenchmarkChurnCost(b *testing.B) {
	testenv.RequireRoot(b)
	const rounds, clients, total = 3, 1, 20000
	for _, v := range churnVariants {
		b.Run(v.name, func(b *testing.B) {
			perRun := map[string][]float64{} // program -> ns/run per round
			var bpfConn, userCPU []float64   // ns per connection per round
			for b.Loop() {
				for r := 0; r < rounds; r++ {
					progs, bpf, user := churnCostOnce(b, v.opts(), v.noFormat, clients, total)
					for name, ns := range progs {
						perRun[name] = append(perRun[name], ns)
					}
					bpfConn = append(bpfConn, bpf)
					userCPU = append(userCPU, user)
				}
			}
			names := make([]string, 0, len(perRun))
			for name := range perRun {
				names = append(names, name)
			}
			sort.Strings(names)
			for _, name := range names {
				b.ReportMetric(median(perRun[name]), name+"-ns/run")
			}
			b.ReportMetric(median(bpfConn), "bpf-ns/conn")
			b.ReportMetric(median(userCPU), "tracer-cpu-ns/conn")
		})
	}
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}

// churnCostOnce runs the workload once under a probe opened with opts, the
// kernel's BPF run-time statistics on, and returns each program's ns per
// run, the BPF ns per connection and this process's CPU ns per connection.
func churnCostOnce(b *testing.B, opts Options, noFormat bool, clients, total int) (map[string]float64, float64, float64) {
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		b.Skipf("BPF run-time statistics unavailable: %v", err)
	}
	defer stats.Close()
	ns := testenv.NewNetNS(b)
	var h Handler = &nullHandler{owners: events.NewOwners()}
	if !noFormat {
		h = &discardHandler{owners: events.NewOwners(), stream: export.NewStream(io.Discard, export.FormatJSON, func(ns uint64) time.Time { return time.Unix(0, int64(ns)) })}
	}
	p, done, stop := startChurnProbeHandler(b, opts, h)
	defer p.Close()
	// Loading left garbage (kernel BTF, specs): collect it now, so that
	// its collection does not count as the event loop's cost.
	runtime.GC()
	cpu0 := selfCPU(b)
	r := testenv.RunChurn(b, ns, clients, total)
	stop()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	cpu := selfCPU(b) - cpu0
	perRun := map[string]float64{}
	var runTime time.Duration
	for _, coll := range p.colls {
		for name, prog := range coll.Programs {
			st, err := prog.Stats()
			if err != nil {
				b.Fatal(err)
			}
			runTime += st.Runtime
			if st.RunCount > 0 {
				perRun[name] = float64(st.Runtime) / float64(st.RunCount)
			}
		}
	}
	return perRun, float64(runTime) / float64(r.Conns), float64(cpu) / float64(r.Conns)
}

// selfCPU is this process's CPU time so far (user and system), in ns.
func selfCPU(b *testing.B) int64 {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}
