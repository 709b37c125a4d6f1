package probe

import (
	"context"
	"fmt"
	"io"
	"sort"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/conntracer/conntracer/internal/events"
	"github.com/conntracer/conntracer/internal/export"
	"github.com/conntracer/conntracer/internal/testenv"
)

// BenchmarkConntrackHookOverhead measures what the in-kernel conntrack
// hooks add to a connection-churn workload whose every connection makes a
// conntrack entry (an nft ct rule in the namespace): the same workload runs
// alternately under a probe without them and one with them, and the
// benchmark reports the median ratio of the connection rates (with over
// without) and, from a last run with the kernel's BPF statistics on, the
// hooks' BPF time per connection. Skips where the hooks do not attach (the
// locked-down host): run it in the kernel matrix.
func BenchmarkConntrackHookOverhead(b *testing.B) {
	testenv.RequireRoot(b)
	testenv.RequireTool(b, "nft")
	const pairs, total = 5, 3000
	probe := func(hooks bool) *Probe {
		opts := DefaultOptions()
		opts.NoConnect = true
		opts.ConntrackInKernel = hooks
		p, err := Open(opts)
		if err != nil {
			b.Fatalf("open probe: %v", err)
		}
		if _, ok := p.ConntrackInKernel(); hooks && !ok {
			p.Close()
			b.Skipf("in-kernel conntrack hooks unavailable here (%v): run in the kernel matrix", p.Notes())
		}
		return p
	}
	// Skip before any churn where the hooks cannot attach.
	probe(true).Close()
	run := func(hooks bool) (testenv.ChurnResult, *Probe) {
		ns := testenv.NewNetNS(b)
		testenv.NFT(b, ns, "table inet ctkbench {\n\tchain out {\n\t\ttype filter hook output priority 0;\n\t\tct state new counter\n\t}\n}")
		p := probe(hooks)
		ctx, cancel := context.WithCancel(context.Background())
		h := &discardHandler{owners: events.NewOwners(), stream: export.NewStream(io.Discard, export.FormatJSON, func(ns uint64) time.Time { return time.Unix(0, int64(ns)) })}
		done := make(chan error, 1)
		go func() { done <- p.Run(ctx, h) }()
		r := testenv.RunChurn(b, ns, 1, total)
		cancel()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
		if lost := p.Stats().Lost; lost > 0 {
			b.Errorf("the probe lost %d records", lost)
		}
		return r, p
	}
	var ratios []float64
	for b.Loop() {
		for i := 0; i < pairs; i++ {
			var without, with testenv.ChurnResult
			var p1, p2 *Probe
			if i%2 == 0 {
				without, p1 = run(false)
				with, p2 = run(true)
			} else {
				with, p2 = run(true)
				without, p1 = run(false)
			}
			p1.Close()
			p2.Close()
			ratios = append(ratios, with.Rate()/without.Rate())
			b.Logf("pair %d: without hooks %.0f conn/s, with %.0f conn/s: ratio %.3f", i, without.Rate(), with.Rate(), ratios[i])
		}
	}
	sort.Float64s(ratios)
	b.ReportMetric(ratios[len(ratios)/2], "median-rate-ratio")

	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		b.Logf("BPF run-time statistics unavailable: %v", err)
		return
	}
	defer stats.Close()
	r, p := run(true)
	defer p.Close()
	var hookNs time.Duration
	for _, c := range p.colls {
		for name, prog := range c.Programs {
			if _, ok := c.Maps[conntrackMapConfirming]; !ok {
				continue // not the conntrack object
			}
			st, err := prog.Stats()
			if err != nil {
				b.Fatal(err)
			}
			hookNs += st.Runtime
			if st.RunCount > 0 {
				b.Logf("  %s: %d runs, %s", name, st.RunCount, fmt.Sprintf("%.0f ns/run", float64(st.Runtime)/float64(st.RunCount)))
			}
		}
	}
	b.ReportMetric(float64(hookNs)/float64(r.Conns), "hook-ns/conn")
}
