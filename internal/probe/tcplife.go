package probe

// The TCP lifecycle concern: bpf/tcplife.bpf.c, one record per connection.

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

const stateHook = "sock/inet_sock_set_state"

// stateProgram names the program that implements each attach mode.
var stateProgram = map[AttachMode]string{
	AttachTPBTF:      tcplifeProgCtStateBtf,
	AttachRawTP:      tcplifeProgCtStateRaw,
	AttachTracepoint: tcplifeProgCtStateTp,
}

// openTCPLife loads the tcplife object with the state program of the first
// attach mode that both loads and attaches, then the accept() hooks.
func (p *Probe) openTCPLife() error {
	modes := AttachModes
	if p.opts.AttachMode != AttachAuto {
		modes = []AttachMode{p.opts.AttachMode}
	}
	var errs []error
	for _, mode := range modes {
		coll, l, err := p.tryState(mode)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", mode, err))
			continue
		}
		p.links = append(p.links, l)
		p.attachments = append(p.attachments, Attachment{Hook: stateHook, Mode: mode, Err: errors.Join(errs...)})
		if err := p.adopt("tcplife", coll, tcplifeMapLostRecords); err != nil {
			return err
		}
		p.attachAccept(coll)
		return nil
	}
	return fmt.Errorf("attach %s: no attach mode worked: %w", stateHook, errors.Join(errs...))
}

func (p *Probe) tryState(mode AttachMode) (*ebpf.Collection, hookLink, error) {
	spec, err := loadTcplife()
	if err != nil {
		return nil, hookLink{}, err
	}
	// Load only the state program of this mode (a program type the kernel
	// refuses would fail the whole collection) plus the accept programs.
	for m, name := range stateProgram {
		if m != mode {
			delete(spec.Programs, name)
		}
	}
	if err := p.configure(spec); err != nil {
		return nil, hookLink{}, err
	}
	if mode == AttachTracepoint {
		if err := p.ensureTracefs(); err != nil {
			return nil, hookLink{}, err
		}
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{
		MapReplacements: map[string]*ebpf.Map{tcplifeMapEvents: p.ring},
	})
	if err != nil {
		return nil, hookLink{}, fmt.Errorf("load: %w", err)
	}
	l, err := attachTracepointMode(mode, "sock", "inet_sock_set_state", coll.Programs[stateProgram[mode]])
	if err != nil {
		coll.Close()
		return nil, hookLink{}, fmt.Errorf("attach: %w", err)
	}
	return coll, l, nil
}

// configure writes the options into the spec's constants and map sizes.
func (p *Probe) configure(spec *ebpf.CollectionSpec) error {
	if err := p.prepare(spec, "tcplife", p.opts.Filter.variables()); err != nil {
		return err
	}
	spec.Maps[tcplifeMapSocks].MaxEntries = p.opts.MaxSockets
	return nil
}

// attachAccept attaches the accept() exit tracepoints that name the owner
// of passive connections. Without them the tracer still runs: passive
// connections are attributed to their listener instead, and the start-up
// line says so.
func (p *Probe) attachAccept(coll *ebpf.Collection) {
	for _, sc := range []struct{ name, prog string }{
		{"sys_exit_accept4", tcplifeProgCtAccept4Exit},
		{"sys_exit_accept", tcplifeProgCtAcceptExit},
	} {
		hook := "syscalls/" + sc.name
		if err := p.ensureTracefs(); err != nil {
			p.attachments = append(p.attachments, Attachment{Hook: hook, Err: err})
			continue
		}
		prog := coll.Programs[sc.prog]
		l, err := attachHook(func() (link.Link, error) { return link.Tracepoint("syscalls", sc.name, prog, nil) })
		if err != nil {
			p.attachments = append(p.attachments, Attachment{Hook: hook, Err: err})
			continue
		}
		p.links = append(p.links, l)
		p.attachments = append(p.attachments, Attachment{Hook: hook, Mode: AttachTracepoint})
	}
}
