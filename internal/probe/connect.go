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
	NoEnter uint64 // with Options.ConnectLatency, exits without a matching entry (attached mid-call): not reported
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

// open loads the object and attaches its syscall tracepoints: the exit of
// connect(), and its entry with Options.ConnectLatency; then the Unix
// datagram send hooks unless Options.NoUnixDgram.
func (o *connectObject) open(l *loader) (*ebpf.Collection, error) {
	opts := l.opts()
	if opts.NoConnect {
		return nil, nil
	}
	hook := "syscalls/sys_exit_connect"
	// Exit first: an entry stashed with no exit hook would sit in the
	// pending map until evicted.
	tracepoints := []string{"sys_exit_connect", "sys_enter_connect"}
	progs := []string{connectProgCtConnectExit, connectProgCtConnectEnter}
	if opts.ConnectLatency {
		hook = "syscalls/sys_{enter,exit}_connect"
	} else {
		tracepoints, progs = tracepoints[:1], progs[:1]
	}
	coll, _, failed, err := l.loadFirst(&loadSpec{
		object: o.name(),
		hook:   hook,
		load:   loadConnect,
		vars: map[string]any{
			connectVarEmitInProgress: boolByte(opts.ConnectInProgress),
			connectVarConnectLatency: boolByte(opts.ConnectLatency),
		},
		modes: []modeHooks{{
			mode:    AttachTracepoint,
			attach:  func(c *ebpf.Collection) ([]hookLink, error) { return attachSyscalls(c, tracepoints, progs) },
			refused: connectRefused(),
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
	if !opts.NoUnixDgram {
		o.attachUnixDgram(l, coll)
	}
	return coll, nil
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
	hook := "syscalls/sys_exit_{sendto,sendmsg,sendmmsg,write} (unix dgram)"
	calls := unixDgramSends[:]
	if !l.opts().UnixDgramWrite {
		hook = "syscalls/sys_exit_{sendto,sendmsg,sendmmsg} (unix dgram, write off)"
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

// connectRefused says why the connect() programs cannot load here, when a
// feature probe knows it: they keep pending connects in task local storage
// (BPF_MAP_TYPE_TASK_STORAGE, 5.11+) and read the arguments through
// bpf_task_pt_regs (5.15+). nil when the probe says yes or cannot tell
// (then loading decides).
func connectRefused() error {
	if err := features.HaveMapType(ebpf.TaskStorage); errors.Is(err, ebpf.ErrNotSupported) {
		return fmt.Errorf("connect() results need task local storage (5.11+) and bpf_task_pt_regs (5.15+), which this kernel lacks: %w", err)
	}
	if err := features.HaveProgramHelper(ebpf.TracePoint, asm.FnTaskPtRegs); errors.Is(err, ebpf.ErrNotSupported) {
		return fmt.Errorf("connect() results need bpf_task_pt_regs (5.15+), which this kernel lacks: %w", err)
	}
	return nil
}
