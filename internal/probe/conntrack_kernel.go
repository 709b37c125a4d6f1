package probe

// The in-kernel conntrack path: bpf/conntrack.bpf.c on the kernel's own
// conntrack functions (__nf_conntrack_confirm, nf_ct_delete or, where the
// compiler split it, the unlink from the hash table, __nf_conntrack_alloc),
// one record per entry inserted, removed or refused.
// It needs fentry/fexit or kprobes on nf_conntrack; where the kernel offers
// neither (the locked-down 6.18 host: fentry EPERM, no kprobes) or
// nf_conntrack is not loaded, the probe says why in its notes and the caller
// uses ctnetlink's event groups instead (the same event kinds).

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/conntracer/conntracer/internal/events"
)

// Attach modes of the in-kernel conntrack hooks.
const (
	AttachFentry AttachMode = "fentry"
	AttachKprobe AttachMode = "kprobe"
)

// ConntrackHook names the in-kernel conntrack hooks in Attachments.
const ConntrackHook = "conntrack entries"

// nfConntrackSysctl exists once nf_conntrack is loaded (or built in).
const nfConntrackSysctl = "/proc/sys/net/netfilter/nf_conntrack_max"

// ctProbe is one hook of the object: a program on a kernel function, at its
// entry or its return.
type ctProbe struct {
	fn     string
	prog   string
	onExit bool
}

// ctPrograms lists each mode's probes, returns first: a call whose entry was
// seen then always finds its return hooked (a stashed frame without one would
// wait for the LRU to evict it). The removal probe is rm's.
func ctPrograms(mode AttachMode, rm ctRemoval) []ctProbe {
	if mode == AttachFentry {
		return []ctProbe{
			{"__nf_conntrack_confirm", conntrackProgCtConfirmExit, true},
			{"__nf_conntrack_confirm", conntrackProgCtConfirmEnter, false},
			{rm.fn, rm.prog(AttachFentry), false},
			{"__nf_conntrack_alloc", conntrackProgCtAllocExit, true},
		}
	}
	return []ctProbe{
		{"__nf_conntrack_confirm", conntrackProgCtConfirmKrp, true},
		{"__nf_conntrack_confirm", conntrackProgCtConfirmKp, false},
		{rm.fn, rm.prog(AttachKprobe), false},
		{"__nf_conntrack_alloc", conntrackProgCtAllocKrp, true},
		{"__nf_conntrack_alloc", conntrackProgCtAllocKp, false},
	}
}

// ctRemoval is the kernel function whose calls are the table's removals
// (see bpf/conntrack.bpf.c): nf_ct_delete itself, or, where the compiler
// split it, the unlink from the hash table that every removal runs once.
type ctRemoval struct {
	fn     string // the function hooked
	unlink bool   // fn is the unlink (ct_unlink_*), not nf_ct_delete (ct_delete_*)
	// split is nf_ct_delete's split part kallsyms listed (e.g.
	// nf_ct_delete.part.0), "" if none.
	split string
}

// prog returns the removal program of mode.
func (r ctRemoval) prog(mode AttachMode) string {
	switch {
	case mode == AttachFentry && r.unlink:
		return conntrackProgCtUnlinkEnter
	case mode == AttachFentry:
		return conntrackProgCtDeleteEnter
	case r.unlink:
		return conntrackProgCtUnlinkKp
	}
	return conntrackProgCtDeleteKp
}

// unused returns the removal programs of the other choice, left out of
// the load.
func (r ctRemoval) unused() []string {
	if r.unlink {
		return []string{conntrackProgCtDeleteEnter, conntrackProgCtDeleteKp}
	}
	return []string{conntrackProgCtUnlinkEnter, conntrackProgCtUnlinkKp}
}

// note says which function the removals are taken from and why, for the
// probe's notes; "" for nf_ct_delete unsplit (the usual case).
func (r ctRemoval) note() string {
	switch {
	case r.unlink:
		return fmt.Sprintf("conntrack removals: at %s (nf_ct_delete is split by the compiler into %s, which nf_conntrack's own callers call directly)", r.fn, r.split)
	case r.split != "":
		return fmt.Sprintf("conntrack removals: at nf_ct_delete, which is split by the compiler (%s) with no unlink function in kallsyms: removals by nf_conntrack itself (gc, early drop, flush) are missed", r.split)
	}
	return ""
}

// ctRemovalSyms are the kallsyms names chooseCtRemoval looks at: the
// unlink functions, and nf_ct_delete's split parts by prefix.
var ctRemovalSyms = []string{"__nf_ct_delete_from_lists", "nf_ct_delete_from_lists"}

// chooseCtRemoval picks the removal hook from what kallsyms lists (has:
// the names among ctRemovalSyms present; split: nf_ct_delete's split part,
// "" if none). nf_ct_delete stays the hook unless it is split.
func chooseCtRemoval(has map[string]bool, split string) ctRemoval {
	if split == "" {
		return ctRemoval{fn: "nf_ct_delete"}
	}
	for _, fn := range ctRemovalSyms {
		if has[fn] {
			return ctRemoval{fn: fn, unlink: true, split: split}
		}
	}
	return ctRemoval{fn: "nf_ct_delete", split: split}
}

// ctRemovalHook reads /proc/kallsyms for chooseCtRemoval. Unreadable, it
// keeps nf_ct_delete (and says so in the error, for a note).
func ctRemovalHook() (ctRemoval, error) {
	f, err := os.Open("/proc/kallsyms")
	if err != nil {
		return ctRemoval{fn: "nf_ct_delete"}, fmt.Errorf("find the conntrack removal function: %w", err)
	}
	defer f.Close()
	return scanCtRemoval(f)
}

// scanCtRemoval is ctRemovalHook on a kallsyms listing ("address type name
// [module]" per line).
func scanCtRemoval(r io.Reader) (ctRemoval, error) {
	has := map[string]bool{}
	split := ""
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 3 {
			continue
		}
		name := f[2]
		switch {
		case strings.HasPrefix(name, "nf_ct_delete.") && split == "":
			split = name
		case slices.Contains(ctRemovalSyms, name):
			has[name] = true
		}
	}
	if err := sc.Err(); err != nil {
		return ctRemoval{fn: "nf_ct_delete"}, fmt.Errorf("read /proc/kallsyms: %w", err)
	}
	return chooseCtRemoval(has, split), nil
}

// ConntrackInKernel reports which source of conntrack entry events the
// tracer uses: ("in-kernel (fentry)", true) or ("in-kernel (kprobe)", true)
// when the probe's hooks are attached; otherwise ("ctnetlink events",
// false), and the caller starts the ctnetlink event source. Call it after
// Open.
func (p *Probe) ConntrackInKernel() (source string, ok bool) {
	for _, a := range p.attachments {
		if a.Hook == ConntrackHook && a.Mode != "" {
			return fmt.Sprintf("in-kernel (%s)", a.Mode), true
		}
	}
	return "ctnetlink events", false
}

// conntrackObject is the in-kernel conntrack hooks. Optional: when no mode
// works the hook is reported off, a note says why, and tracing goes on
// (the caller uses ctnetlink).
type conntrackObject struct{}

func (*conntrackObject) name() string { return "conntrack" }

func (*conntrackObject) records() []recordType {
	// One layout for three kinds: the kind byte says which.
	var out []recordType
	for _, k := range []conntrackRecordKind{
		conntrackRecordKindRECORD_CT_NEW,
		conntrackRecordKindRECORD_CT_DESTROY,
		conntrackRecordKindRECORD_CT_ALLOC_FAILED,
	} {
		out = append(out, record[conntrackCtEntryEvent](uint8(k), "ct_entry_event", decodeCtEntry))
	}
	return out
}

// poll has nothing to do: every entry is a record.
func (*conntrackObject) poll(*events.Event, Handler, bool, bool) error { return nil }

// open loads and attaches the hooks with Options.ConntrackInKernel, fentry
// first, then kprobes.
func (o *conntrackObject) open(l *loader) (*ebpf.Collection, error) {
	opts := l.opts()
	if !opts.ConntrackInKernel {
		return nil, nil
	}
	off := func(err error) {
		l.off(ConntrackHook, err)
		l.note(fmt.Sprintf("conntrack hooks: unavailable, conntrack entries need ctnetlink (%v)", err))
	}
	if _, err := os.Stat(nfConntrackSysctl); err != nil {
		off(errors.New("nf_conntrack is not loaded (no " + nfConntrackSysctl + ")"))
		return nil, nil
	}
	switch opts.ConntrackMode {
	case "", AttachAuto, AttachFentry, AttachKprobe:
	default:
		off(fmt.Errorf("unknown conntrack attach mode %q: use auto, fentry or kprobe", opts.ConntrackMode))
		return nil, nil
	}
	rm, err := ctRemovalHook()
	if err != nil {
		l.note(fmt.Sprintf("conntrack removals: at nf_ct_delete (%v)", err))
	} else if n := rm.note(); n != "" {
		l.note(n)
	}
	var hooks []modeHooks
	for _, mode := range []AttachMode{AttachFentry, AttachKprobe} {
		probes := ctPrograms(mode, rm)
		var progs []string
		for _, pr := range probes {
			progs = append(progs, pr.prog)
		}
		hooks = append(hooks, modeHooks{
			mode:   mode,
			progs:  progs,
			attach: func(coll *ebpf.Collection) ([]hookLink, error) { return attachCtProbes(coll, mode, probes) },
		})
	}
	coll, mode, failed, err := l.loadFirst(&loadSpec{
		object: o.name(),
		hook:   ConntrackHook,
		load: func() (*ebpf.CollectionSpec, error) {
			spec, err := loadConntrack()
			if err != nil {
				return nil, err
			}
			// The fentry program's target is the unlink function
			// kallsyms named (its section names one of the two).
			if p := spec.Programs[conntrackProgCtUnlinkEnter]; p != nil && rm.unlink {
				p.AttachTo = rm.fn
			}
			return spec, nil
		},
		without: rm.unused(),
		modes:   hooks,
		only:    opts.ConntrackMode,
	})
	if err != nil {
		return nil, err
	}
	if coll == nil {
		// One short reason per mode for the start-up line; the
		// attachment keeps the whole error.
		reasons := make([]string, len(failed))
		for i, f := range failed {
			reasons[i] = fmt.Sprintf("%s: %s", f.mode, shortReason(f.err))
		}
		off(&shortError{msg: strings.Join(reasons, "; "), err: joinFailures(failed)})
		return nil, nil
	}
	l.note(fmt.Sprintf("conntrack hooks: in-kernel (%s)", mode))
	return coll, nil
}

// shortError reads as a one-line summary and unwraps to the whole error
// (errors.Is/As still see the cause; %+v of the attachment is not needed to
// read the start-up line).
type shortError struct {
	msg string
	err error
}

func (e *shortError) Error() string { return e.msg }
func (e *shortError) Unwrap() error { return e.err }

// shortReason says in a few words why a mode failed, for the start-up
// note; the attachment keeps the whole error.
func shortReason(err error) string {
	switch {
	case errors.Is(err, unix.EPERM):
		return "refused by the kernel (EPERM; lockdown or missing CAP_BPF/CAP_PERFMON)"
	case errors.Is(err, os.ErrNotExist):
		return "not available (kernel without kprobes, or nf_conntrack's functions not found)"
	case errors.Is(err, ebpf.ErrNotSupported):
		return "not supported by this kernel"
	}
	s := err.Error()
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return s
}

// attachCtProbes attaches one mode's programs, all or none.
func attachCtProbes(coll *ebpf.Collection, mode AttachMode, probes []ctProbe) ([]hookLink, error) {
	var links []hookLink
	for _, pr := range probes {
		prog := coll.Programs[pr.prog]
		l, err := attachHook(func() (link.Link, error) {
			switch {
			case mode == AttachFentry:
				// The target (vmlinux or nf_conntrack's module BTF)
				// was resolved at load from the program's section name.
				return link.AttachTracing(link.TracingOptions{Program: prog})
			case pr.onExit:
				return link.Kretprobe(pr.fn, prog, nil)
			default:
				return link.Kprobe(pr.fn, prog, nil)
			}
		})
		if err != nil {
			closeLinks(links)
			return nil, fmt.Errorf("attach %s (%s): %w", pr.prog, pr.fn, err)
		}
		links = append(links, l)
	}
	return links, nil
}

// decodeCtEntry turns a ct_entry_event into KindConntrackNew, Destroy or
// AllocFailed.
func decodeCtEntry(raw []byte, ev *events.Event) {
	var r conntrackCtEntryEvent
	recordInto(raw, &r)
	switch conntrackRecordKind(r.Kind) {
	case conntrackRecordKindRECORD_CT_NEW:
		ev.Kind = events.KindConntrackNew
	case conntrackRecordKindRECORD_CT_DESTROY:
		ev.Kind = events.KindConntrackDestroy
	default:
		ev.Kind = events.KindConntrackAllocFailed
	}
	c := &ev.ConntrackEntry
	*c = events.ConntrackEntry{
		NetNS:    r.Netns,
		TimeNs:   r.TimeNs,
		Proto:    r.Proto,
		TCPState: r.TcpState,
	}
	switch events.Family(r.Family) {
	case events.FamilyIPv4:
		c.Family = events.FamilyIPv4
		v4 := func(a *[16]uint8, port uint16) netip.AddrPort {
			return netip.AddrPortFrom(netip.AddrFrom4([4]byte(a[:4])), port)
		}
		c.OrigSrc, c.OrigDst = v4(&r.OrigSaddr, r.OrigSport), v4(&r.OrigDaddr, r.OrigDport)
		c.ReplySrc, c.ReplyDst = v4(&r.ReplySaddr, r.ReplySport), v4(&r.ReplyDaddr, r.ReplyDport)
	case events.FamilyIPv6:
		c.Family = events.FamilyIPv6
		v6 := func(a *[16]uint8, port uint16) netip.AddrPort {
			return netip.AddrPortFrom(netip.AddrFrom16(*a), port)
		}
		c.OrigSrc, c.OrigDst = v6(&r.OrigSaddr, r.OrigSport), v6(&r.OrigDaddr, r.OrigDport)
		c.ReplySrc, c.ReplyDst = v6(&r.ReplySaddr, r.ReplySport), v6(&r.ReplyDaddr, r.ReplyDport)
	}
}
