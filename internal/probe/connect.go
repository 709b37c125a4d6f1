package probe

// The connect() object: bpf/connect.bpf.c, one record per failed or
// in-progress connect() call, Unix connects and failed Unix datagram sends
// counted in kernel maps that the event loop polls (connect_poll.go).

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"

	"github.com/conntracer/conntracer/internal/events"
)

// ConnectCounters are the connect() calls the kernel counted without
// sending a record each.
type ConnectCounters struct {
	Calls   uint64 // connect() calls seen at their exit (after the pid filter)
	OKInet  uint64 // successful IPv4/IPv6 connects: counted only (their conn_event follows)
	NoEnter uint64 // exits without a matching entry (attached mid-call), with Options.ConnectLatency or the compat variant: not reported
	// InProgress counts non-blocking connects that returned EINPROGRESS;
	// their outcome is their connection's conn_event. Sent as records
	// too only with Options.ConnectInProgress.
	InProgress uint64
	// UnixFull counts Unix connects sent as a record each because the
	// kernel's table of counted callers was full.
	UnixFull uint64
	// DgramFails counts failed Unix datagram sends (EAGAIN, ECONNREFUSED,
	// ENOENT) the kernel counted per sender and destination; DgramFull
	// those it could not count because that table was full (lost).
	DgramFails, DgramFull uint64
}

// connectObject is the connect() hooks and what the event loop reads of
// them. Optional: without it connect failures are missing and the
// start-up line says why.
type connectObject struct {
	counters    *ebpf.Map   // per-CPU counters; nil when off
	unixPoller  *unixPoller // nil when off
	dgramPoller *unixPoller // nil when the Unix datagram send hooks are off
}

func (*connectObject) name() string { return "connect" }

func (*connectObject) records() []recordType {
	return []recordType{
		record[connectConnectEvent](uint8(connectRecordKindRECORD_CONNECT), "connect_event", decodeConnect),
	}
}

// connectVariant is one way of running the connect() programs.
type connectVariant struct {
	enter, exit string // the programs on sys_enter_connect and sys_exit_connect
	pending     string // the map the entry stashes calls in
	alwaysEnter bool   // the exit needs the entry's stash, latency or not
	dgram       bool   // the Unix datagram send programs can run beside it
}

var (
	// connectBTF: the exit reads the arguments from the caller's saved
	// registers (bpf_task_pt_regs) and the task through BTF loads; the
	// entry, stashing the start in task local storage, only for latency.
	connectBTF = connectVariant{
		enter: connectProgCtConnectEnter, exit: connectProgCtConnectExit,
		pending: connectMapPending, dgram: true,
	}
	// connectCompat: for kernels without them (5.10), the entry always
	// stashes the arguments per thread in a hash map and the task is read
	// with probe reads. The datagram send programs need
	// bpf_task_pt_regs: off.
	connectCompat = connectVariant{
		enter: connectProgCtConnectEnterCompat, exit: connectProgCtConnectExitCompat,
		pending: connectMapPendingByTid, alwaysEnter: true,
	}
)

// unused returns the programs and maps of the other variant and, when v
// cannot run them, the datagram send programs: left out of the load.
func (v connectVariant) unused() (progs, maps []string) {
	other := connectCompat
	if v == connectCompat {
		other = connectBTF
	}
	progs = []string{other.enter, other.exit}
	if !v.dgram {
		for _, c := range unixDgramSends {
			progs = append(progs, c.prog)
		}
	}
	return progs, []string{other.pending}
}

// open loads the object and attaches its syscall tracepoints: the exit of
// connect(), and its entry with Options.ConnectLatency or where the
// kernel needs the compat variant (connectNeedsCompat); then the Unix
// datagram send hooks unless Options.NoUnixDgram.
func (o *connectObject) open(l *loader) (*ebpf.Collection, error) {
	opts := l.opts()
	if opts.NoConnect {
		return nil, nil
	}
	v, why := connectBTF, connectNeedsCompat()
	if why == nil && opts.connectCompat {
		why = fmt.Errorf("asked for (%w)", ebpf.ErrNotSupported)
	}
	if why != nil {
		v = connectCompat
		l.note(fmt.Sprintf("connect() arguments stashed per thread at sys_enter_connect and read with probe reads (compat variant): %v", why))
	}
	hook := "syscalls/sys_exit_connect"
	// Exit first: an entry stashed with no exit hook would sit in the
	// pending map until evicted.
	tracepoints := []string{"sys_exit_connect", "sys_enter_connect"}
	progs := []string{v.exit, v.enter}
	if opts.ConnectLatency || v.alwaysEnter {
		hook = "syscalls/sys_{enter,exit}_connect"
	} else {
		tracepoints, progs = tracepoints[:1], progs[:1]
	}
	without, unusedMaps := v.unused()
	coll, _, failed, err := l.loadFirst(&loadSpec{
		object: o.name(),
		hook:   hook,
		load: func() (*ebpf.CollectionSpec, error) {
			spec, err := loadConnect()
			if err != nil {
				return nil, err
			}
			// A map type the kernel lacks (task storage before
			// 5.11) would fail the whole collection.
			for _, m := range unusedMaps {
				delete(spec.Maps, m)
			}
			return spec, nil
		},
		without: without,
		vars: map[string]any{
			connectVarEmitInProgress: boolByte(opts.ConnectInProgress),
			connectVarConnectLatency: boolByte(opts.ConnectLatency),
		},
		modes: []modeHooks{{
			mode:   AttachTracepoint,
			attach: func(c *ebpf.Collection) ([]hookLink, error) { return attachSyscalls(c, tracepoints, progs) },
		}},
	})
	if err != nil || coll == nil {
		if err == nil {
			l.off(hook, joinFailures(failed))
		}
		return nil, err
	}
	o.counters = coll.Maps[connectMapCounters]
	o.unixPoller = newUnixPoller(coll.Maps[connectMapUnixConnects], events.KindConnect)
	switch {
	case opts.NoUnixDgram:
	case !v.dgram:
		l.off(unixDgramHook(opts.UnixDgramWrite), fmt.Errorf("failed Unix datagram sends are read at the send's exit from the caller's saved registers, which needs bpf_task_pt_regs (5.15+) and bpf_get_current_task_btf (5.11+): %w", why))
	default:
		o.attachUnixDgram(l, coll)
	}
	return coll, nil
}

// unixDgramHook names the Unix datagram send hook in Attachments.
func unixDgramHook(write bool) string {
	if write {
		return "syscalls/sys_exit_{sendto,sendmsg,sendmmsg,write} (unix dgram)"
	}
	return "syscalls/sys_exit_{sendto,sendmsg,sendmmsg} (unix dgram, write off)"
}

// unixDgramSends are the system calls a Unix datagram socket sends with,
// each with its program on the call's exit tracepoint. write comes last:
// only Options.UnixDgramWrite adds it.
var unixDgramSends = [...]struct{ tracepoint, prog string }{
	{"sys_exit_sendto", connectProgCtUnixSendtoExit},
	{"sys_exit_sendmsg", connectProgCtUnixSendmsgExit},
	{"sys_exit_sendmmsg", connectProgCtUnixSendmmsgExit},
	{"sys_exit_write", connectProgCtUnixWriteExit},
}

// attachUnixDgram attaches the counting of failed Unix datagram sends. If
// any of its tracepoints cannot be attached it is off as a whole (a
// partial view would undercount without saying so) and the start-up line
// says why; connect() tracing stays on.
func (o *connectObject) attachUnixDgram(l *loader, coll *ebpf.Collection) {
	hook := unixDgramHook(l.opts().UnixDgramWrite)
	calls := unixDgramSends[:]
	if !l.opts().UnixDgramWrite {
		calls = calls[:3]
	}
	var tracepoints, progs []string
	for _, c := range calls {
		tracepoints = append(tracepoints, c.tracepoint)
		progs = append(progs, c.prog)
	}
	links, err := attachSyscalls(coll, tracepoints, progs)
	if err != nil {
		l.off(hook, err)
		return
	}
	o.dgramPoller = newUnixPoller(coll.Maps[connectMapUnixDgramSends], events.KindUnixDgramSend)
	l.attached(hook, AttachTracepoint, nil, links...)
}

// poll hands h the Unix connects and the failed Unix datagram sends the
// kernel counted since the last poll (each poller on its own interval).
func (o *connectObject) poll(ev *events.Event, h Handler, _, final bool) error {
	for _, u := range []*unixPoller{o.unixPoller, o.dgramPoller} {
		if u == nil {
			continue
		}
		if err := u.poll(ev, h, final); err != nil {
			return err
		}
	}
	return nil
}

// ConnectCounters sums the connect object's per-CPU counters. It returns
// zeros when the connect hooks are off. Safe to call from any goroutine.
func (p *Probe) ConnectCounters() (ConnectCounters, error) {
	var c ConnectCounters
	o := objectOf[*connectObject](p)
	if o == nil || o.counters == nil {
		return c, nil
	}
	for slot, dst := range map[connectConnectCounter]*uint64{
		connectConnectCounterCONNECT_CALLS:       &c.Calls,
		connectConnectCounterCONNECT_OK_INET:     &c.OKInet,
		connectConnectCounterCONNECT_NO_ENTER:    &c.NoEnter,
		connectConnectCounterCONNECT_IN_PROGRESS: &c.InProgress,
		connectConnectCounterCONNECT_UNIX_FULL:   &c.UnixFull,
		connectConnectCounterUNIX_DGRAM_FAILS:    &c.DgramFails,
		connectConnectCounterUNIX_DGRAM_FULL:     &c.DgramFull,
	} {
		n, err := sumPerCPU(o.counters, uint32(slot))
		if err != nil {
			return c, fmt.Errorf("read connect counters: %w", err)
		}
		*dst = n
	}
	return c, nil
}

// connectNeedsCompat says why the BTF variant of the connect() programs
// cannot load here, when a feature probe knows it: it keeps pending
// connects in task local storage (BPF_MAP_TYPE_TASK_STORAGE, 5.11+), reads
// the arguments through bpf_task_pt_regs (5.15+) and the task through
// bpf_get_current_task_btf (5.11+). nil when the probes say yes or cannot
// tell (then loading decides). The error wraps ebpf.ErrNotSupported.
func connectNeedsCompat() error {
	if err := features.HaveMapType(ebpf.TaskStorage); errors.Is(err, ebpf.ErrNotSupported) {
		return fmt.Errorf("this kernel lacks task local storage (5.11+): %w", err)
	}
	for _, h := range []struct {
		fn   asm.BuiltinFunc
		name string
	}{
		{asm.FnGetCurrentTaskBtf, "bpf_get_current_task_btf (5.11+)"},
		{asm.FnTaskPtRegs, "bpf_task_pt_regs (5.15+)"},
	} {
		if err := features.HaveProgramHelper(ebpf.TracePoint, h.fn); errors.Is(err, ebpf.ErrNotSupported) {
			return fmt.Errorf("this kernel's tracepoint programs cannot call %s: %w", h.name, err)
		}
	}
	return nil
}
