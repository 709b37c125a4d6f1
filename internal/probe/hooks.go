package probe

// Attached programs, kept with the call that attached them.

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// hookLink is one attached program and the call that attached it, so that
// the probe can detach and attach it again without reloading anything.
type hookLink struct {
	link.Link
	attach func() (link.Link, error)
}

// attachHook runs attach and keeps it with the link it made.
func attachHook(attach func() (link.Link, error)) (hookLink, error) {
	l, err := attach()
	return hookLink{Link: l, attach: attach}, err
}

// attachTracepointMode attaches prog to the kernel tracepoint group:name
// the way mode says: as tp_btf, raw tracepoint or classic tracepoint (the
// program must be of that mode's type).
func attachTracepointMode(mode AttachMode, group, name string, prog *ebpf.Program) (hookLink, error) {
	return attachHook(func() (link.Link, error) {
		switch mode {
		case AttachTPBTF:
			return link.AttachTracing(link.TracingOptions{Program: prog, AttachType: ebpf.AttachTraceRawTp})
		case AttachRawTP:
			return link.AttachRawTracepoint(link.RawTracepointOptions{Name: name, Program: prog})
		case AttachTracepoint:
			return link.Tracepoint(group, name, prog, nil)
		}
		return nil, fmt.Errorf("attach mode %q does not apply to tracepoint %s:%s", mode, group, name)
	})
}

// closeLinks detaches links, ignoring errors (used on the way out of a
// failed attach).
func closeLinks(links []hookLink) {
	for _, l := range links {
		l.Close()
	}
}

// detach detaches every program, leaving programs, maps and the reader as
// they are; reattach attaches them again. BenchmarkChurnOverhead uses the
// pair to interleave runs with and without the hooks a few hundred
// milliseconds apart instead of reloading the objects (seconds) between
// runs, which on a shared machine lets the load drift between the two
// runs it compares.
func (p *Probe) detach() error {
	var errs []error
	// Last attached first: a rescuer (rescue.go) must never run without
	// the state program attached before it.
	for i := len(p.links) - 1; i >= 0; i-- {
		if p.links[i].Link != nil {
			errs = append(errs, p.links[i].Close())
			p.links[i].Link = nil
		}
	}
	return errors.Join(errs...)
}

// reattach attaches in the order of the first attach (a rescuer after
// its state program).
func (p *Probe) reattach() error {
	for i := range p.links {
		if p.links[i].Link != nil {
			continue
		}
		l, err := p.links[i].attach()
		if err != nil {
			return fmt.Errorf("attach again: %w", err)
		}
		p.links[i].Link = l
	}
	return nil
}
