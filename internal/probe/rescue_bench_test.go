package probe

import (
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/conntracer/conntracer/internal/events"
	"github.com/conntracer/conntracer/internal/testenv"
)

// BenchmarkRescuerCost measures what the rescuer adds per state change: the
// churn workload (one client) with the tp_btf state program alone and with
// its rescuer attached too, in alternating runs a few hundred milliseconds
// apart (only the rescuer's link is detached and attached again), and the
// kernel's run time of each program (BPF_STATS_RUN_TIME, on for the whole
// benchmark, so both kinds of run pay for it alike). It reports the median
// ratio of the connection rate with the rescuer to the rate without, the
// median extra CPU of the workload's own process per connection (it runs
// the state changes, its softirqs included), and each program's ns per
// run. CT_CHURN_PAIRS pairs (default 15), CT_CHURN_CONNS connections a run
// (default 10000).
func BenchmarkRescuerCost(b *testing.B) {
	testenv.RequireRoot(b)
	pairs, total := envInt(b, "CT_CHURN_PAIRS", 15), envInt(b, "CT_CHURN_CONNS", 10000)
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		b.Skipf("BPF run-time statistics unavailable: %v", err)
	}
	defer stats.Close()
	opts := DefaultOptions()
	opts.AttachMode = AttachTPBTF
	opts.NoConnect = true
	p, done, stop := startChurnProbeHandler(b, opts, &nullHandler{owners: events.NewOwners()})
	defer p.Close()
	r := objectOf[*tcplifeObject](p).rescuerOrNil()
	if r == nil {
		b.Fatalf("no rescuer: %v", p.Attachments())
	}
	rl := &p.links[r.link]
	prog := func(name string) *ebpf.Program {
		for _, c := range p.colls {
			if pr, ok := c.Programs[name]; ok {
				return pr
			}
		}
		b.Fatalf("no program %s", name)
		return nil
	}
	state, rescue := prog(r.state), prog(r.prog)
	// An empty tp_btf program on the same tracepoint, attached throughout:
	// its ns per run is what the statistics and the call itself cost, the
	// floor under the rescuer's.
	empty, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.Tracing, AttachType: ebpf.AttachTraceRawTp,
		AttachTo: "inet_sock_set_state", License: "GPL", Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()}})
	if err != nil {
		b.Fatalf("load an empty tp_btf program: %v", err)
	}
	defer empty.Close()
	el, err := link.AttachTracing(link.TracingOptions{Program: empty, AttachType: ebpf.AttachTraceRawTp})
	if err != nil {
		b.Fatalf("attach an empty tp_btf program: %v", err)
	}
	defer el.Close()
	run := func(withRescuer bool) testenv.ChurnResult {
		if withRescuer && rl.Link == nil {
			l, err := rl.attach()
			if err != nil {
				b.Fatal(err)
			}
			rl.Link = l
		} else if !withRescuer && rl.Link != nil {
			if err := rl.Close(); err != nil {
				b.Fatal(err)
			}
			rl.Link = nil
		}
		ns := testenv.NewNetNS(b)
		return testenv.RunChurn(b, ns, 1, total)
	}
	var ratios, extra []float64
	for i := 0; i < b.N; i++ {
		ratios, extra = ratios[:0], extra[:0]
		for j := 0; j < pairs; j++ {
			var with, without testenv.ChurnResult
			if j%2 == 0 {
				without, with = run(false), run(true)
			} else {
				with, without = run(true), run(false)
			}
			ratios = append(ratios, with.Rate()/without.Rate())
			extra = append(extra, with.CPUPerConn()-without.CPUPerConn())
		}
	}
	stop()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(median(ratios), "rate-ratio")
	b.ReportMetric(median(extra), "extra-proc-ns/conn")
	for _, pr := range []struct {
		name string
		prog *ebpf.Program
	}{{r.state, state}, {r.prog, rescue}, {"empty", empty}} {
		st, err := pr.prog.Stats()
		if err != nil {
			b.Fatal(err)
		}
		if st.RunCount > 0 {
			b.ReportMetric(float64(st.Runtime)/float64(st.RunCount), pr.name+"-ns/run")
		}
	}
}
