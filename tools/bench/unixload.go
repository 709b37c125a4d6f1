package main

import (
	"context"
	"fmt"
	"time"

	"github.com/conntracer/conntracer/internal/testenv"
)

// unixSection is the overload pattern of field note 4: a client making
// non-blocking connects to a Unix listener whose backlog is full, as fast
// as it can (each fails with EAGAIN), alternately without and with
// `tracer serve`. The listener has an abstract name in a fresh namespace,
// so that /metrics' per-namespace counter holds this client's failures
// only: it must equal the client's own count after every traced run.
func (b *bench) unixSection(ctx context.Context) error {
	ns, err := b.newNetNS()
	if err != nil {
		return err
	}
	defer ns.delete()
	name := "@" + ns.Name + "-full"
	if err := b.listenUnixIn(ns, name, 1); err != nil {
		return err
	}
	// Fill the backlog once, so that every later call fails.
	if _, err := b.runConnects(ns, "ctr-fill", testenv.ConnectPlan{Addr: name, NonBlock: true, Count: 4}); err != nil {
		return err
	}
	plan := testenv.ConnectPlan{Addr: name, NonBlock: true, Loop: b.cfg.unixRun}
	s := &UnixSummary{Pairs: b.cfg.unixPairs, RunSeconds: b.cfg.unixRun.Seconds(), AllCounted: true}
	var rates, cpus, baseRates []float64
	for i := 0; i < b.cfg.unixPairs; i++ {
		var run UnixRun
		first, second := false, true // traced?
		if i%2 == 1 {
			first, second = true, false
		}
		for _, traced := range []bool{first, second} {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			r, cpu, counted, wait, err := b.unixOnce(ctx, ns, plan, traced)
			if err != nil {
				return fmt.Errorf("pair %d: %w", i, err)
			}
			if r.Calls != r.Errnos["EAGAIN"] {
				return fmt.Errorf("pair %d: the client's calls did not all fail with EAGAIN: %v (is the backlog full?)", i, r.Errnos)
			}
			if traced {
				run.TracedRate, run.TracedCPU = r.Rate(), cpu/float64(r.Calls)
				run.ClientSaw, run.TracerSaw = r.Errnos["EAGAIN"], counted
				s.MetricsWait = max(s.MetricsWait, wait.Seconds())
				if counted != uint64(run.ClientSaw) {
					s.AllCounted = false
				}
			} else {
				run.BaseRate, run.BaseCPU = r.Rate(), cpu/float64(r.Calls)
			}
		}
		b.logf("unix pair %d: baseline %.0f calls/s, traced %.0f calls/s; client saw %d EAGAIN, tracer counted %d",
			i, run.BaseRate, run.TracedRate, run.ClientSaw, run.TracerSaw)
		s.Runs = append(s.Runs, run)
		rates = append(rates, run.TracedRate/run.BaseRate)
		cpus = append(cpus, run.TracedCPU/run.BaseCPU)
		baseRates = append(baseRates, run.BaseRate)
	}
	s.Rate, s.CPU, s.BaseRate = ratio(rates), ratio(cpus), median(baseRates)
	b.res.Unix = s
	return nil
}

// unixOnce runs the overload once, traced or not, and returns the client's
// result, the machine's busy CPU seconds over the run, and (traced) the
// tracer's count for the namespace and how long /metrics took to show it.
func (b *bench) unixOnce(ctx context.Context, ns *netns, plan testenv.ConnectPlan, traced bool) (r testenv.ConnectResult, cpu float64, counted uint64, wait time.Duration, err error) {
	var t *tracer
	if traced {
		if t, err = b.startServe(ctx); err != nil {
			return
		}
		defer t.stop()
		time.Sleep(b.cfg.settle)
	}
	before, err := busyCPU()
	if err != nil {
		return
	}
	if r, err = b.runConnects(ns, "ctr-overload", plan); err != nil {
		return
	}
	time.Sleep(tail)
	after, err := busyCPU()
	if err != nil {
		return
	}
	cpu = after - before
	if !traced {
		return
	}
	// The kernel map of Unix connects is read every half second and the
	// snapshot /metrics reads is published once per socket-table round
	// (1 s): wait for the count to arrive, 10 s at most.
	series := fmt.Sprintf(`conntracer_unix_backlog_overflows_total{netns="%d"}`, ns.Inode)
	start := time.Now()
	for {
		m, serr := scrape(t.addr)
		if serr != nil {
			err = serr
			return
		}
		counted = uint64(m.get(series))
		wait = time.Since(start)
		if counted >= uint64(r.Errnos["EAGAIN"]) || wait > 10*time.Second {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	err = t.stop()
	return
}
