package probe

import (
	"fmt"
	"io"
	"runtime"
	"sort"
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

// BenchmarkChurnVariants answers "what does each part cost" where
// BenchmarkChurnOverhead answers "what does the default cost". It runs the
// churn workload (one client) without any hook and under each of these, in
// an order rotated every round, each run a few hundred milliseconds from
// the others (the probes are loaded once; their hooks are attached for
// their run only), and reports per variant the median ratio of its
// connection rate to the round's untraced run and the median extra CPU
// time per connection, of the whole machine and of the workload's own
// process:
//   - empty-state: an empty tp_btf program on sock:inet_sock_set_state,
//     where the tracer's state program goes: the price of the hook itself,
//     10 calls per connection;
//   - empty-syscall-exits: empty programs on the exit tracepoints of
//     accept4, accept and connect: the price of the syscall tracepoint
//     machinery, which every system call of the machine then goes through;
//   - each of churnVariants (the real programs and event loop).
//
// CT_CHURN_PAIRS rounds (default 21), CT_CHURN_CONNS connections a run
// (default 10000).
func BenchmarkChurnVariants(b *testing.B) {
	testenv.RequireRoot(b)
	rounds, total := envInt(b, "CT_CHURN_PAIRS", 21), envInt(b, "CT_CHURN_CONNS", 10000)
	type variant struct {
		name           string
		attach, detach func() error
	}
	var emptyDetach func()
	vs := []variant{
		{name: "none", attach: func() error { return nil }, detach: func() error { return nil }},
		{name: "empty-state", attach: func() error { emptyDetach = attachEmpty(b, true, nil); return nil },
			detach: func() error { emptyDetach(); return nil }},
		{name: "empty-syscall-exits", attach: func() error {
			emptyDetach = attachEmpty(b, false, []tracepointName{{"syscalls", "sys_exit_accept4"}, {"syscalls", "sys_exit_accept"}, {"syscalls", "sys_exit_connect"}})
			return nil
		}, detach: func() error { emptyDetach(); return nil }},
	}
	for _, cv := range churnVariants {
		var h Handler = &nullHandler{owners: events.NewOwners()}
		if !cv.noFormat {
			h = &discardHandler{owners: events.NewOwners(), stream: export.NewStream(io.Discard, export.FormatJSON, func(ns uint64) time.Time { return time.Unix(0, int64(ns)) })}
		}
		p, done, stop := startChurnProbeHandler(b, cv.opts(), h)
		defer func() {
			stop()
			if err := <-done; err != nil {
				b.Error(err)
			}
			p.Close()
		}()
		if err := p.detach(); err != nil {
			b.Fatal(err)
		}
		vs = append(vs, variant{name: cv.name, attach: p.reattach, detach: p.detach})
	}
	runtime.GC()
	rate := make([][]float64, len(vs))
	machine := make([][]float64, len(vs)) // machine CPU ns/conn over the round's untraced run
	workload := make([][]float64, len(vs))
	for b.Loop() {
		for r := 0; r < rounds; r++ {
			runs := make([]churnRun, len(vs))
			for k := range vs {
				slot := (k + r) % len(vs)
				ns := testenv.NewNetNS(b)
				if err := vs[slot].attach(); err != nil {
					b.Fatal(err)
				}
				before := busyNs(b)
				res := testenv.RunChurn(b, ns, 1, total)
				time.Sleep(100 * time.Millisecond) // the reader's last poll, inside the window
				runs[slot] = churnRun{res, (busyNs(b) - before) / float64(res.Conns)}
				if err := vs[slot].detach(); err != nil {
					b.Fatal(err)
				}
			}
			line := fmt.Sprintf("round %d: untraced %.0f conn/s %.1f us CPU/conn", r, runs[0].Rate(), runs[0].cpuPerConn/1e3)
			for i := 1; i < len(vs); i++ {
				rate[i] = append(rate[i], runs[i].Rate()/runs[0].Rate())
				machine[i] = append(machine[i], runs[i].cpuPerConn-runs[0].cpuPerConn)
				workload[i] = append(workload[i], runs[i].CPUPerConn()-runs[0].CPUPerConn())
				line += fmt.Sprintf("; %s %.3f", vs[i].name, runs[i].Rate()/runs[0].Rate())
			}
			b.Log(line)
		}
	}
	for i := 1; i < len(vs); i++ {
		b.ReportMetric(median(rate[i]), vs[i].name+"-rate-ratio")
		b.ReportMetric(median(machine[i]), vs[i].name+"-machine-cpu-ns/conn")
		b.ReportMetric(median(workload[i]), vs[i].name+"-workload-cpu-ns/conn")
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
