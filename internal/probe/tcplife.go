package probe

// The TCP lifecycle object: bpf/tcplife.bpf.c, one record per connection
// (conn_event, sent when its socket reaches TCP_CLOSE), the socks and
// listeners tables (sample.go reads socks), and the accept() hooks that
// name the owners of passive connections.

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"

	"github.com/conntracer/conntracer/internal/events"
)

const stateHook = "sock/inet_sock_set_state"

// tcplifeObject is the one object the probe cannot do without: Open fails
// when no attach mode of the state tracepoint works.
type tcplifeObject struct {
	socks  *ebpf.Map // nil until loaded
	rescue *rescuer  // nil unless the state program has a rescuer attached
	unseen *ebpf.Map // unseen_closes (unseen.go); nil until loaded
}

func (*tcplifeObject) name() string { return "tcplife" }

// rescuerOrNil returns the object's attached rescuer, nil if it has none
// (or o is nil: no tcplife object).
func (o *tcplifeObject) rescuerOrNil() *rescuer {
	if o == nil {
		return nil
	}
	return o.rescue
}

func (*tcplifeObject) records() []recordType {
	return []recordType{
		record[tcplifeConnEvent](uint8(tcplifeRecordKindRECORD_CONN_CLOSED), "conn_event", decodeConnClosed),
	}
}

// open loads the object with the state program of the first attach mode
// that both loads and attaches, then attaches the accept() hooks.
func (o *tcplifeObject) open(l *loader) (*ebpf.Collection, error) {
	accept := acceptProgs(l)
	coll, mode, failed, err := l.loadFirst(&loadSpec{
		object:  o.name(),
		hook:    stateHook,
		load:    loadTcplife,
		without: accept.unused,
		sizes:   map[string]uint32{tcplifeMapSocks: l.opts().MaxSockets},
		only:    l.opts().AttachMode,
		modes: withRescuers(tracepointModes("sock", "inet_sock_set_state", map[AttachMode]string{
			AttachTPBTF:      tcplifeProgCtStateBtf,
			AttachRawTP:      tcplifeProgCtStateRaw,
			AttachTracepoint: tcplifeProgCtStateTp,
		})),
	})
	if err != nil {
		return nil, err
	}
	if coll == nil {
		return nil, fmt.Errorf("attach %s: no attach mode worked: %w", stateHook, joinFailures(failed))
	}
	o.socks = coll.Maps[tcplifeMapSocks]
	o.unseen = coll.Maps[tcplifeMapUnseenCloses]
	o.rescue = attachRescuer(l, coll, mode) // rescue.go
	o.attachAccept(l, coll, accept.progs)
	return coll, nil
}

// acceptVariant is the pair of accept() exit programs the kernel can load,
// and the pair left out of the object.
type acceptVariant struct {
	progs  [2]string // for sys_exit_accept4, sys_exit_accept
	unused []string
}

// acceptProgs picks the accept() programs: those that walk a BTF-typed
// current task (plain loads) where tracepoint programs may call
// bpf_get_current_task_btf (5.11+), else those that walk it with probe
// reads, and says so in a note. Decided by the kernel's answer to a test
// program (cilium/ebpf features); an answer other than "not supported"
// (EPERM on locked-down kernels) keeps the better variant, and a wrong
// guess shows up as the object failing to load, with the verifier's words.
func acceptProgs(l *loader) acceptVariant {
	btf := acceptVariant{
		progs:  [2]string{tcplifeProgCtAccept4Exit, tcplifeProgCtAcceptExit},
		unused: []string{tcplifeProgCtAccept4ExitProbe, tcplifeProgCtAcceptExitProbe},
	}
	if kernelHasTaskBTF() {
		return btf
	}
	l.note("accept() owners read with probe reads: this kernel's tracepoint programs cannot call bpf_get_current_task_btf (5.11+)")
	return acceptVariant{
		progs:  [2]string{tcplifeProgCtAccept4ExitProbe, tcplifeProgCtAcceptExitProbe},
		unused: btf.progs[:],
	}
}

// attachAccept attaches the accept() exit tracepoints that name the owner
// of passive connections. Without them the tracer still runs: passive
// connections are attributed to their listener instead, and the start-up
// line says so.
func (o *tcplifeObject) attachAccept(l *loader, coll *ebpf.Collection, progs [2]string) {
	for _, sc := range []struct{ name, prog string }{
		{"sys_exit_accept4", progs[0]},
		{"sys_exit_accept", progs[1]},
	} {
		hook := "syscalls/" + sc.name
		if err := l.ensureTracefs(); err != nil {
			l.off(hook, err)
			continue
		}
		prog := coll.Programs[sc.prog]
		hl, err := attachHook(func() (link.Link, error) { return link.Tracepoint("syscalls", sc.name, prog, nil) })
		if err != nil {
			l.off(hook, err)
			continue
		}
		l.attached(hook, AttachTracepoint, nil, hl)
	}
}

// poll has nothing to do: every connection is a record.
func (*tcplifeObject) poll(*events.Event, Handler, bool, bool) error { return nil }

// kernelHasTaskBTF reports whether BPF programs may call
// bpf_get_current_task_btf (5.11+: the tp_btf state program and the
// faster accept programs need it). An answer other than "not supported"
// (EPERM on locked-down kernels) counts as yes: loading decides.
func kernelHasTaskBTF() bool {
	err := features.HaveProgramHelper(ebpf.TracePoint, asm.FnGetCurrentTaskBtf)
	return !errors.Is(err, ebpf.ErrNotSupported)
}
