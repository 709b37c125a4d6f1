package main

import (
	"context"
	"fmt"
	"sort"
	"time"
)

// tail is how long the CPU window stays open after the workload ends, the
// same for every variant: the tracer's reader polls every 50 ms (when the
// kernel has not woken it), so the records of the run's last moments are
// read inside the window.
const tail = 100 * time.Millisecond

// churnSection runs the churn workload A/B for 1 and 2 clients: rounds of
// the four variants, in an order rotated each round, each run in a fresh
// namespace; every variant is compared with the baseline of its round.
func (b *bench) churnSection(ctx context.Context) error {
	for _, clients := range []int{1, 2} {
		s := ChurnSummary{Clients: clients, Conns: b.cfg.conns, Rounds: b.cfg.rounds}
		for round := 0; round < b.cfg.rounds; round++ {
			order := rotate(Variants, round)
			for _, v := range order {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				r, err := b.churnOnce(ctx, v, clients)
				if err != nil {
					return fmt.Errorf("%s, %d clients, round %d: %w", v, clients, round, err)
				}
				r.Round = round
				s.Runs = append(s.Runs, r)
				b.logf("churn clients=%d round=%d %-12s %7.0f conn/s %6.1f us CPU/conn lost %d", clients, round, v, r.Rate(), r.CPUPerConn()*1e6, r.Lost)
			}
		}
		s.Variants = summarizeChurn(s.Runs)
		b.res.Churn = append(b.res.Churn, s)
	}
	return nil
}

// rotate returns vs rotated left by n.
func rotate(vs []string, n int) []string {
	n %= len(vs)
	return append(append([]string{}, vs[n:]...), vs[:n]...)
}

// churnOnce runs the workload once beside a variant.
func (b *bench) churnOnce(ctx context.Context, variant string, clients int) (ChurnRun, error) {
	return b.workloadOnce(ctx, variant, nil, func(ns *netns) (int, float64, error) {
		r, err := b.runChurn(ns, clients, b.cfg.conns)
		return r.Conns, r.Seconds, err
	})
}

// workloadOnce runs a workload once in a fresh namespace beside a
// variant: prepare (if not nil) first, then the variant, then the
// workload, which returns its connections and seconds, inside the CPU
// window.
func (b *bench) workloadOnce(ctx context.Context, variant string, prepare func(*netns) error, workload func(*netns) (int, float64, error)) (ChurnRun, error) {
	run := ChurnRun{Variant: variant}
	ns, err := b.newNetNS()
	if err != nil {
		return run, err
	}
	defer ns.delete()
	if prepare != nil {
		if err := prepare(ns); err != nil {
			return run, err
		}
	}
	p, t, err := b.startVariant(ctx, variant)
	if err != nil {
		return run, err
	}
	if p != nil {
		// Let start-up work (the first socket-table rounds, the
		// collector of what start-up allocated) finish first.
		select {
		case <-time.After(b.cfg.settle):
		case <-ctx.Done():
			p.stop()
			return run, ctx.Err()
		}
	}
	before, err := busyCPU()
	if err != nil {
		return run, err
	}
	ownBefore := p.cpuSeconds()
	conns, secs, err := workload(ns)
	if err != nil {
		if p != nil {
			p.stop()
		}
		return run, err
	}
	time.Sleep(tail)
	after, err := busyCPU()
	if err != nil {
		return run, err
	}
	run.Conns, run.Seconds, run.CPUSeconds = conns, secs, after-before
	run.OwnCPUSeconds = p.cpuSeconds() - ownBefore
	if t != nil {
		// Losses are read after the run, once the health counters
		// (updated at most twice a second) have caught up.
		time.Sleep(600 * time.Millisecond)
		if run.Lost, err = t.lost(); err != nil {
			t.stop()
			return run, err
		}
		if st, err := statusBytes(t.PID()); err == nil {
			run.RSS, run.HWM = st["VmRSS"], st["VmHWM"]
		}
	}
	if p != nil {
		if err := p.stop(); err != nil {
			return run, err
		}
	}
	return run, nil
}

// summarizeChurn pairs every run with the baseline of its round.
func summarizeChurn(runs []ChurnRun) []VariantSummary {
	base := map[int]ChurnRun{}
	for _, r := range runs {
		if r.Variant == VariantBaseline {
			base[r.Round] = r
		}
	}
	var out []VariantSummary
	for _, v := range Variants {
		s := VariantSummary{Variant: v}
		var rates, cpus, absRate, absCPU, own []float64
		for _, r := range runs {
			if r.Variant != v {
				continue
			}
			absRate = append(absRate, r.Rate())
			absCPU = append(absCPU, r.CPUPerConn())
			if r.OwnCPUSeconds > 0 {
				own = append(own, r.OwnCPUSeconds/float64(r.Conns))
			}
			s.Lost += r.Lost
			b, ok := base[r.Round]
			if !ok {
				continue
			}
			rates = append(rates, r.Rate()/b.Rate())
			cpus = append(cpus, r.CPUPerConn()/b.CPUPerConn())
		}
		if len(absRate) == 0 {
			continue
		}
		s.MedianRate, s.MedianCPUPerConn, s.MedianOwnPerConn = median(absRate), median(absCPU), median(own)
		s.Rate, s.CPU = ratio(rates), ratio(cpus)
		out = append(out, s)
	}
	return out
}

// ratio summarizes paired ratios.
func ratio(xs []float64) Ratio {
	if len(xs) == 0 {
		return Ratio{}
	}
	s := append([]float64{}, xs...)
	sort.Float64s(s)
	return Ratio{Median: median(s), Min: s[0], Max: s[len(s)-1], N: len(s)}
}

// median of xs (the mean of the middle two for an even count).
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64{}, xs...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// churnPeak is the highest churn rate of the baseline runs, conn/s.
func (r *Results) churnPeak() float64 {
	var peak float64
	for _, c := range r.Churn {
		for _, run := range c.Runs {
			if run.Variant == VariantBaseline {
				peak = max(peak, run.Rate())
			}
		}
	}
	return peak
}
