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
// ring buffer's lost_records never sees. These counters make them visible.

// ProgramMisses is one loaded program's count of runs the kernel skipped
// because a BPF program was already running on that CPU.
type ProgramMisses struct {
	Object  string // "tcplife", "connect", "drops", "conntrack"
	Program string // the C function, e.g. "ct_state_btf"
	Misses  uint64
}

// RecursionMisses returns every loaded program's recursion_misses, by
// object in load order and by program name within one. Safe to call from
// any goroutine while the probe is open: it reads the programs' info
// through their fds (BPF_OBJ_GET_INFO_BY_FD, kernels 5.12+; older kernels
// report 0).
func (p *Probe) RecursionMisses() ([]ProgramMisses, error) {
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
			out = append(out, ProgramMisses{Object: p.lost[i].object, Program: name, Misses: st.RecursionMisses})
		}
	}
	return out, nil
}

// RecursionMissesByObject sums RecursionMisses per object, in load order.
func (p *Probe) RecursionMissesByObject() ([]ObjectLost, error) {
	progs, err := p.RecursionMisses()
	if err != nil {
		return nil, err
	}
	out := make([]ObjectLost, 0, len(p.lost))
	for _, c := range p.lost {
		o := ObjectLost{Object: c.object}
		for _, pm := range progs {
			if pm.Object == c.object {
				o.Lost += pm.Misses
			}
		}
		out = append(out, o)
	}
	return out, nil
}
