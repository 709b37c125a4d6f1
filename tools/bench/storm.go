package main

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/conntracer/conntracer/internal/testenv"
)

// The storm's records are connects to an address with no route (the
// fresh namespace has only loopback): connect() fails with ENETUNREACH
// before any packet exists, so the only record is the failed connect()
// (connect.bpf.c sends every failure); the socket never leaves CLOSE, so
// tcplife sends nothing. A refused TCP connect would be the obvious
// choice, but its SYN is dropped (NO_SOCKET), and drop records are rate
// limited per CPU: the count of records per call would not be exact.
const (
	stormAddr      = "10.255.255.1:9"
	stormErrno     = "ENETUNREACH"
	recordsPerCall = 1
)

// stormSection raises the record rate until the tracer loses records. The
// records are failed connects in a fresh namespace, and the tracer is
// `tracer serve` filtered to that namespace (in the kernel), so that what
// it reads and loses is this workload's alone: generated = calls must
// equal read + lost at every step. The steps are multiples of the
// churn workload's peak record rate (1x, 2x: the burst the issue names,
// 4x, 8x), then as fast as two processes go. A last step stops the
// reader (SIGSTOP) while the workload runs: the rate is then above
// anything the reader drains, the ring buffer fills, and the kernel's
// loss counter must account for every record that did not arrive.
func (b *bench) stormSection(ctx context.Context) error {
	ns, err := b.newNetNS()
	if err != nil {
		return err
	}
	defer ns.delete()
	t, err := b.startServe(ctx, "--netns", ns.Name)
	if err != nil {
		return err
	}
	defer t.stop()
	time.Sleep(b.cfg.settle)
	s := &StormSummary{RecordsPerCall: recordsPerCall}
	if m, err := scrape(t.addr); err == nil {
		s.RingBytes = int(m.get("conntracer_ring_buffer_size_bytes"))
	}
	// The churn sends about one close record per socket, two per
	// connection; without a churn result, assume the documented 25,000
	// connections/s.
	peak := b.res.churnPeak()
	if peak == 0 {
		peak = 25_000
	}
	s.ChurnRecords = 2 * peak
	type step struct {
		target  float64
		procs   int
		stalled bool
	}
	steps := []step{{s.ChurnRecords, 1, false}, {2 * s.ChurnRecords, 2, false}, {4 * s.ChurnRecords, 2, false}, {8 * s.ChurnRecords, 2, false}, {0, 2, false}, {0, 2, true}}
	for _, st := range steps {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		res, err := b.stormStep(t, ns, st.target, st.procs, st.stalled)
		if err != nil {
			return err
		}
		b.logf("storm target %.0f rec/s procs %d stalled %v: %.0f rec/s generated %d read %d lost %d",
			st.target, st.procs, st.stalled, res.Rate(), res.Generated, res.Received, res.Lost)
		s.Steps = append(s.Steps, res)
	}
	b.res.Storm = s
	return t.stop()
}

// stormCounters reads what the tracer has read from the ring buffer and
// lost, once two scrapes 600 ms apart agree (the health counters are
// updated at most twice a second).
func stormCounters(t *tracer) (read, lost uint64, err error) {
	var prevRead, prevLost uint64 = ^uint64(0), ^uint64(0)
	for i := 0; i < 30; i++ {
		m, err := scrape(t.addr)
		if err != nil {
			return 0, 0, err
		}
		read = uint64(m.get(`conntracer_events_read_total{stage="ring_buffer"}`))
		lost = uint64(m.get(`conntracer_events_lost_total{stage="kernel"}`))
		if read == prevRead && lost == prevLost {
			return read, lost, nil
		}
		prevRead, prevLost = read, lost
		time.Sleep(600 * time.Millisecond)
	}
	return read, lost, fmt.Errorf("the tracer's counters did not settle")
}

func (b *bench) stormStep(t *tracer, ns *netns, target float64, procs int, stalled bool) (StormStep, error) {
	st := StormStep{Target: target, Procs: procs, Stalled: stalled}
	read0, lost0, err := stormCounters(t)
	if err != nil {
		return st, err
	}
	plan := testenv.ConnectPlan{Addr: stormAddr, Loop: b.cfg.stormStep}
	if target > 0 {
		plan.PerSecond = int(target / recordsPerCall / float64(procs))
	}
	if stalled {
		// Long enough to overflow the ring buffer at any rate this
		// machine reaches.
		plan.Loop = 2 * b.cfg.stormStep
		if err := t.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
			return st, fmt.Errorf("stop the tracer: %w", err)
		}
	}
	type started struct {
		cmd *exec.Cmd
		out *strings.Builder
	}
	var gens []started
	var startErr error
	for i := 0; i < procs; i++ {
		cmd, out, err := b.startConnects(ns, "ctr-storm", plan)
		if err != nil {
			startErr = err
			break
		}
		gens = append(gens, started{cmd, out})
	}
	for _, g := range gens {
		r, err := connectsResult(g.cmd, g.out)
		if err != nil && startErr == nil {
			startErr = err
		}
		if r.Calls != r.Errnos[stormErrno] && startErr == nil {
			startErr = fmt.Errorf("storm: connects to %s did not all fail with %s: %v", stormAddr, stormErrno, r.Errnos)
		}
		st.Calls += r.Calls
		st.Seconds = max(st.Seconds, r.Seconds)
	}
	if stalled {
		if err := t.cmd.Process.Signal(syscall.SIGCONT); err != nil {
			return st, fmt.Errorf("resume the tracer: %w", err)
		}
	}
	if startErr != nil {
		return st, startErr
	}
	read1, lost1, err := stormCounters(t)
	if err != nil {
		return st, err
	}
	st.Generated = uint64(st.Calls) * recordsPerCall
	st.Received, st.Lost = read1-read0, lost1-lost0
	return st, nil
}
