package probe

import (
	"fmt"
	"sort"
)

// Records a program never wrote because the kernel did not run it.
//
// The kernel runs a tracing program (tp_btf, raw_tp, and the classic
// tracepoint's perf path through bpf_prog_active) only if that program (or,
// for classic tracepoints, any program) is not already running on the CPU.
// When a softirq interrupts the state program while it handles a
// process-context state change (connect, close from a syscall) and the
// softirq changes another socket's state (a SYN-ACK or FIN arriving on
// loopback), the nested run is skipped and only counted in the program's
// recursion_misses (kernel/trace/bpf_trace.c, __bpf_trace_run:
// bpf_prog_inc_misses_counter). The skipped state change is invisible to
// the programs: each miss is a record lost or made inexact, which the
// ring buffer's lost_records never sees. These counters make them visible,
// with the state changes the state program's rescuer handled instead of it
// (rescue.go): what is left, Unhandled, is what no program saw.

// ProgramMisses is one loaded program's count of runs the kernel skipped
// because a BPF program was already running on that CPU.
type ProgramMisses struct {
	Object  string // "tcplife", "connect", "drops", "conntrack"
	Program string // the C function, e.g. "ct_state_btf"
	Misses  uint64 // the program's recursion_misses
	// Rescued is how many of Misses a rescuer program handled instead
	// (rescue.go); 0 for a program without a rescuer. It is read before
	// Misses, each rescue following its miss, so it does not exceed them,
	// except for state changes the kernel delivered to the rescuer and not
	// to the state program without counting a miss (seen once on the
	// shared development host): those were rescued too.
	Rescued uint64
	// Rescuer marks a rescuer program (ct_rescue_*). Its own skipped runs
	// lose nothing by themselves: it is skipped only while it runs on that
	// CPU, and then the state program either ran for that change (nothing
	// to rescue) or was skipped too, which its Misses - Rescued count.
	Rescuer bool
}

// Unhandled is the runs of the program that neither it nor a rescuer ran:
// state changes (or other events) no program saw. 0 for a rescuer.
func (pm ProgramMisses) Unhandled() uint64 {
	if pm.Rescuer || pm.Rescued >= pm.Misses {
		return 0
	}
	return pm.Misses - pm.Rescued
}

// RecursionMisses returns every loaded program's recursion_misses, by
// object in load order and by program name within one, with the state
// program's rescued runs. Safe to call from any goroutine while the probe
// is open: it reads the programs' info through their fds
// (BPF_OBJ_GET_INFO_BY_FD, kernels 5.12+; older kernels report 0) and the
// rescuer's per-CPU counter.
func (p *Probe) RecursionMisses() ([]ProgramMisses, error) {
	var rescued uint64
	r := objectOf[*tcplifeObject](p).rescuerOrNil()
	if r != nil {
		// Before the misses: each rescue follows its miss, so rescued
		// read first never exceeds the misses read after.
		n, err := r.count()
		if err != nil {
			return nil, err
		}
		rescued = n
	}
	var out []ProgramMisses
	for i, c := range p.colls {
		names := make([]string, 0, len(c.Programs))
		for name := range c.Programs {
			names = append(names, name)
		}
		sort.Strings(names)
		for _, name := range names {
			st, err := c.Programs[name].Stats()
			if err != nil {
				return nil, fmt.Errorf("read %s/%s recursion misses: %w", p.lost[i].object, name, err)
			}
			pm := ProgramMisses{Object: p.lost[i].object, Program: name, Misses: st.RecursionMisses}
			if r != nil && p.lost[i].object == (*tcplifeObject)(nil).name() {
				pm.Rescuer = name == r.prog
				if name == r.state {
					pm.Rescued = rescued
				}
			}
			out = append(out, pm)
		}
	}
	return out, nil
}

// ObjectMisses is RecursionMisses summed over one object's programs.
type ObjectMisses struct {
	Object string
	// Misses is the skipped runs of the object's programs other than
	// rescuers, Rescued how many of them a rescuer handled, and
	// Unhandled the rest: the state changes no program saw.
	Misses, Rescued, Unhandled uint64
	// RescuerMisses is the rescuers' own skipped runs (ProgramMisses.Rescuer).
	RescuerMisses uint64
}

// RecursionMissesByObject sums RecursionMisses per object, in load order.
func (p *Probe) RecursionMissesByObject() ([]ObjectMisses, error) {
	progs, err := p.RecursionMisses()
	if err != nil {
		return nil, err
	}
	out := make([]ObjectMisses, 0, len(p.lost))
	for _, c := range p.lost {
		o := ObjectMisses{Object: c.object}
		for _, pm := range progs {
			switch {
			case pm.Object != c.object:
			case pm.Rescuer:
				o.RescuerMisses += pm.Misses
			default:
				o.Misses += pm.Misses
				o.Rescued += pm.Rescued
				o.Unhandled += pm.Unhandled()
			}
		}
		out = append(out, o)
	}
	return out, nil
}
