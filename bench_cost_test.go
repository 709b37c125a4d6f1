package conntracer

import (
	"sort"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/conntracer/conntracer/internal/testenv"
)

// churnVariants are the tracer configurations BenchmarkChurnCost compares:
// where the cost of the default set of hooks goes.
var churnVariants = []struct {
	name string
	opts func() Options
}{
	{"default", DefaultOptions},
	{"tcplife-only", func() Options { o := DefaultOptions(); o.NoConnect = true; return o }},
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
					progs, bpf, user := churnCostOnce(b, v.opts(), clients, total)
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
func churnCostOnce(b *testing.B, opts Options, clients, total int) (map[string]float64, float64, float64) {
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		b.Skipf("BPF run-time statistics unavailable: %v", err)
	}
	defer stats.Close()
	ns := testenv.NewNetNS(b)
	p, done, stop := startChurnProbeWith(b, opts)
	defer p.Close()
	cpu0 := selfCPU(b)
	r := testenv.RunChurn(b, ns, clients, total)
	stop()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	cpu := selfCPU(b) - cpu0
	perRun := map[string]float64{}
	var runtime time.Duration
	for _, coll := range p.colls {
		for name, prog := range coll.Programs {
			st, err := prog.Stats()
			if err != nil {
				b.Fatal(err)
			}
			runtime += st.Runtime
			if st.RunCount > 0 {
				perRun[name] = float64(st.Runtime) / float64(st.RunCount)
			}
		}
	}
	return perRun, float64(runtime) / float64(r.Conns), float64(cpu) / float64(r.Conns)
}

// selfCPU is this process's CPU time so far (user and system), in ns.
func selfCPU(b *testing.B) int64 {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}
