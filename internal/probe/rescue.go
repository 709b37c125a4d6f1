package probe

// The state program's rescuer: a second program on the TCP state
// tracepoint that handles the state changes the kernel did not let the
// state program see. How the two cooperate is the design block at the top
// of bpf/tcplife.bpf.c; here it is attached and its count read.
//
// Why it works (kernel/trace/bpf_trace.c): a tp_btf or raw_tracepoint
// program runs through __bpf_trace_run (bpf_prog_run_trace in newer
// kernels), which skips the program, counting a recursion miss, when that
// program's own per-CPU prog->active is already held, i.e. when the
// program is interrupted on its CPU and the interrupt's softirq fires the
// tracepoint again. tp_btf is a raw tracepoint with BTF-typed arguments
// (bpf_raw_tp_link_attach, bpf_probe_register), not a trampoline. Each
// attached program is its own probe on the tracepoint, called in the
// order attached (kernel/tracepoint.c, func_add: a probe of equal
// priority goes after those already there), so the rescuer, attached
// second and with its own prog->active, runs right after the state
// program, and also when the kernel skipped it.
//
// Classic tracepoints cannot be rescued: trace_call_bpf takes the per-CPU
// bpf_prog_active, which every classic tracepoint and kprobe program
// shares, and skips all of the tracepoint's programs together (counting a
// miss for each in recent kernels: bpf_prog_inc_misses_counters), so a
// second classic program would be skipped with the first. (A
// raw_tracepoint rescuer beside a classic state program would run, but the
// classic mode is only used where raw tracepoints do not attach, or when
// asked for by --attach-mode, which is for comparing the modes.)

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
)

// RescueHook is the Attachment of the state program's rescuer: attached in
// the state program's mode (tp_btf or raw_tp), or off with the reason.
// Absent when the state program is a classic tracepoint (a note says why).
const RescueHook = stateHook + "_rescue"

// rescuerOf names, per attach mode of the state hook, the state program
// and its rescuer. The classic mode has none.
var rescuerOf = map[AttachMode]struct{ state, rescuer string }{
	AttachTPBTF: {tcplifeProgCtStateBtf, tcplifeProgCtRescueBtf},
	AttachRawTP: {tcplifeProgCtStateRaw, tcplifeProgCtRescueRaw},
}

// withRescuers adds to the state hook's modes that can have a rescuer
// their rescuer program, as an optional one: if it does not load, the
// state program loads alone (attachRescuer then says why).
func withRescuers(modes []modeHooks) []modeHooks {
	for i := range modes {
		if r, ok := rescuerOf[modes[i].mode]; ok {
			modes[i].progs = append(modes[i].progs, r.rescuer)
			modes[i].optional = append(modes[i].optional, r.rescuer)
		}
	}
	return modes
}

// rescuer is an attached rescuer: the program whose skipped runs it
// handles, its own program, and its count of those runs.
type rescuer struct {
	state, prog string
	rescued     *ebpf.Map // rescued_runs: per-CPU
	link        int       // its link's index in Probe.links (benchmarks detach it alone)
}

// errNoRescueClassic is why the classic tracepoint mode has no rescuer.
var errNoRescueClassic = errors.New("the state program is a classic tracepoint, whose runs the kernel skips together with every other program's (bpf_prog_active): " +
	"state changes it skips are counted but cannot be rescued")

// attachRescuer attaches the rescuer loaded with the state program in
// mode, after the state program (whose link the loader has just
// recorded: the order matters, and detach undoes it in reverse). It
// returns nil, having said why, when there is none: the state program then
// runs alone, its skipped runs counted as state changes not seen.
func attachRescuer(l *loader, coll *ebpf.Collection, mode AttachMode) *rescuer {
	r, ok := rescuerOf[mode]
	if !ok {
		l.note(fmt.Sprintf("%s: %v", RescueHook, errNoRescueClassic))
		return nil
	}
	prog := coll.Programs[r.rescuer]
	if prog == nil {
		l.off(RescueHook, fmt.Errorf("%s did not load with the state program, which runs alone: %w", r.rescuer, l.leftOut[r.rescuer]))
		return nil
	}
	hl, err := attachTracepointMode(mode, "sock", "inet_sock_set_state", prog)
	if err != nil {
		// An unattached rescuer would only confuse the miss counts.
		prog.Close()
		delete(coll.Programs, r.rescuer)
		l.off(RescueHook, fmt.Errorf("attach %s: %w", r.rescuer, err))
		return nil
	}
	l.attached(RescueHook, mode, nil, hl)
	return &rescuer{state: r.state, prog: r.rescuer, rescued: coll.Maps[tcplifeMapRescuedRuns], link: len(l.p.links) - 1}
}

// count sums the rescuer's per-CPU count of the runs it handled.
func (r *rescuer) count() (uint64, error) {
	n, err := sumPerCPU(r.rescued, 0)
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", tcplifeMapRescuedRuns, err)
	}
	return n, nil
}
