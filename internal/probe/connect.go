package probe

// The connect() concern: bpf/connect.bpf.c, one record per failed or
// in-progress connect() call, Unix sockets included.

import (
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

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

// openConnect loads the connect object and attaches its syscall
// tracepoints: the exit of connect(), and its entry with
// Options.ConnectLatency. Without them the tracer still runs: connect
// failures are then missing and the start-up line says why.
func (p *Probe) openConnect() error {
	hook := "syscalls/sys_exit_connect"
	if p.opts.ConnectLatency {
		hook = "syscalls/sys_{enter,exit}_connect"
	}
	off := func(err error) error {
		p.attachments = append(p.attachments, Attachment{Hook: hook, Err: err})
		return nil
	}
	if err := p.ensureTracefs(); err != nil {
		return off(err)
	}
	spec, err := loadConnect()
	if err != nil {
		return fmt.Errorf("load connect object: %w", err)
	}
	if err := p.prepare(spec, "connect", p.opts.Filter.variables(), map[string]any{
		connectVarEmitInProgress: boolByte(p.opts.ConnectInProgress),
		connectVarConnectLatency: boolByte(p.opts.ConnectLatency),
	}); err != nil {
		return err
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{
		MapReplacements: map[string]*ebpf.Map{connectMapEvents: p.ring},
	})
	if err != nil {
		return off(fmt.Errorf("load: %+v", err))
	}
	if err := p.adopt("connect", coll, connectMapLostRecords); err != nil {
		return err
	}
	p.connectCounters = coll.Maps[connectMapCounters]
	p.unixPoller = newUnixPoller(coll.Maps[connectMapUnixConnects], events.KindConnect)
	// Exit first: an entry stashed with no exit hook would sit in the
	// pending map until evicted.
	calls := []struct{ name, prog string }{
		{"sys_exit_connect", connectProgCtConnectExit},
		{"sys_enter_connect", connectProgCtConnectEnter},
	}
	if !p.opts.ConnectLatency {
		calls = calls[:1]
	}
	for _, sc := range calls {
		prog := coll.Programs[sc.prog]
		l, err := attachHook(func() (link.Link, error) { return link.Tracepoint("syscalls", sc.name, prog, nil) })
		if err != nil {
			return off(fmt.Errorf("attach syscalls/%s: %w", sc.name, err))
		}
		p.links = append(p.links, l)
	}
	p.attachments = append(p.attachments, Attachment{Hook: hook, Mode: AttachTracepoint})
	if !p.opts.NoUnixDgram {
		p.attachUnixDgram(coll)
	}
	return nil
}

// unixDgramSyscalls are the system calls a Unix datagram socket sends
// with; ct_unix_send_exit is attached to the exit tracepoint of each.
// write comes last: only Options.UnixDgramWrite adds it.
var unixDgramSyscalls = [...]string{"sendto", "sendmsg", "sendmmsg", "write"}

// attachUnixDgram attaches the counting of failed Unix datagram sends. If
// any of its tracepoints cannot be attached it is off as a whole (a
// partial view would undercount without saying so) and the start-up line
// says why; connect() tracing stays on.
func (p *Probe) attachUnixDgram(coll *ebpf.Collection) {
	hook := "syscalls/sys_exit_{sendto,sendmsg,sendmmsg,write} (unix dgram)"
	calls := unixDgramSyscalls[:]
	if !p.opts.UnixDgramWrite {
		hook = "syscalls/sys_exit_{sendto,sendmsg,sendmmsg} (unix dgram, write off)"
		calls = calls[:3]
	}
	var links []hookLink
	prog := coll.Programs[connectProgCtUnixSendExit]
	for _, sc := range calls {
		l, err := attachHook(func() (link.Link, error) { return link.Tracepoint("syscalls", "sys_exit_"+sc, prog, nil) })
		if err != nil {
			closeLinks(links)
			p.attachments = append(p.attachments, Attachment{Hook: hook, Err: fmt.Errorf("attach syscalls/sys_exit_%s: %w", sc, err)})
			return
		}
		links = append(links, l)
	}
	p.links = append(p.links, links...)
	p.dgramPoller = newUnixPoller(coll.Maps[connectMapUnixDgramSends], events.KindUnixDgramSend)
	p.attachments = append(p.attachments, Attachment{Hook: hook, Mode: AttachTracepoint})
}

// ConnectCounters sums the connect object's per-CPU counters. It returns
// zeros when the connect hooks are off. Safe to call from any goroutine.
func (p *Probe) ConnectCounters() (ConnectCounters, error) {
	var c ConnectCounters
	if p.connectCounters == nil {
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
		var perCPU []uint64
		if err := p.connectCounters.Lookup(uint32(slot), &perCPU); err != nil {
			return c, fmt.Errorf("read connect counters: %w", err)
		}
		for _, v := range perCPU {
			*dst += v
		}
	}
	return c, nil
}

// pollConnects hands the event loop's handler the Unix connects and the
// failed Unix datagram sends the kernel counted since the last poll.
// Called by Run on the event loop.
func (p *Probe) pollConnects(ev *events.Event, h Handler, final bool) error {
	for _, u := range []*unixPoller{p.unixPoller, p.dgramPoller} {
		if u == nil {
			continue
		}
		if err := u.poll(ev, h, final); err != nil {
			return err
		}
	}
	return nil
}
