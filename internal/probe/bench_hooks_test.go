package probe

import (
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/conntracer/conntracer/internal/testenv"
)

// BenchmarkSyscallHookCost measures what the classic syscall tracepoints
// cost by themselves, with empty programs (return 0) attached where the
// tracer attaches its own: the time of a syscall nobody hooks (getppid),
// which pays the syscall slow path that any attached syscall tracepoint
// switches on for every task, and of a hooked one (connect on a bad fd,
// which fails at once), which also pays the tracepoint's record and the
// program calls. An empty tp_btf program on sock/inet_sock_set_state is
// the control: it must cost the syscalls nothing. Each case is attached,
// timed and detached in turn, over many rounds, and the minimum is kept:
// on a shared machine the minimum is what the code costs, the rest is
// other people's load.
func BenchmarkSyscallHookCost(b *testing.B) {
	testenv.RequireRoot(b)
	cases := []struct {
		name  string
		hooks []tracepointName
		btf   bool
	}{
		{name: "none"},
		{name: "accept-exit", hooks: []tracepointName{{"syscalls", "sys_exit_accept4"}, {"syscalls", "sys_exit_accept"}}},
		{name: "connect-enter-exit", hooks: []tracepointName{{"syscalls", "sys_enter_connect"}, {"syscalls", "sys_exit_connect"}}},
		{name: "all-four", hooks: []tracepointName{{"syscalls", "sys_exit_accept4"}, {"syscalls", "sys_exit_accept"}, {"syscalls", "sys_enter_connect"}, {"syscalls", "sys_exit_connect"}}},
		{name: "tp_btf-state", btf: true},
	}
	const rounds, calls = 40, 10000
	getppid := make([]float64, len(cases))
	connect := make([]float64, len(cases))
	timeCalls := func(f func()) float64 {
		start := time.Now()
		for i := 0; i < calls; i++ {
			f()
		}
		return float64(time.Since(start).Nanoseconds()) / calls
	}
	sa := &unix.SockaddrInet4{Port: 1}
	for b.Loop() {
		for r := 0; r < rounds; r++ {
			for ci, c := range cases {
				detach := attachEmpty(b, c.btf, c.hooks)
				g := timeCalls(func() { unix.Getppid() })
				k := timeCalls(func() { _ = unix.Connect(-1, sa) })
				detach()
				if r == 0 || g < getppid[ci] {
					getppid[ci] = g
				}
				if r == 0 || k < connect[ci] {
					connect[ci] = k
				}
			}
		}
	}
	for ci, c := range cases {
		b.ReportMetric(getppid[ci], c.name+"-getppid-ns")
		b.ReportMetric(connect[ci], c.name+"-connect-ns")
	}
}

// tracepointName is a classic tracepoint: group and name.
type tracepointName struct{ group, name string }

// attachEmpty attaches an empty program to each classic tracepoint (and to
// the state tracepoint as tp_btf if btf) and returns the detach function.
func attachEmpty(b *testing.B, btf bool, hooks []tracepointName) func() {
	var closers []func() error
	empty := asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()}
	load := func(spec *ebpf.ProgramSpec) *ebpf.Program {
		prog, err := ebpf.NewProgram(spec)
		if err != nil {
			b.Fatalf("load empty %v program: %v", spec.Type, err)
		}
		closers = append(closers, prog.Close)
		return prog
	}
	for _, h := range hooks {
		prog := load(&ebpf.ProgramSpec{Type: ebpf.TracePoint, License: "GPL", Instructions: empty})
		l, err := link.Tracepoint(h.group, h.name, prog, nil)
		if err != nil {
			b.Fatalf("attach %s/%s: %v", h.group, h.name, err)
		}
		closers = append(closers, l.Close)
	}
	if btf {
		prog := load(&ebpf.ProgramSpec{Type: ebpf.Tracing, AttachType: ebpf.AttachTraceRawTp,
			AttachTo: "inet_sock_set_state", License: "GPL", Instructions: empty})
		l, err := link.AttachTracing(link.TracingOptions{Program: prog, AttachType: ebpf.AttachTraceRawTp})
		if err != nil {
			b.Fatalf("attach tp_btf/inet_sock_set_state: %v", err)
		}
		closers = append(closers, l.Close)
	}
	return func() {
		for i := len(closers) - 1; i >= 0; i-- {
			_ = closers[i]()
		}
	}
}
