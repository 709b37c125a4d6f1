package probe

// The probe's BPF objects behind one interface: what each object brings
// (object), what the probe shares with each while it loads (loader), and the
// one loop that tries an object's attach modes in turn (loadFirst).

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/conntracer/conntracer/internal/events"
)

// newObjects lists the probe's BPF objects in the order Open loads them: an
// object that shares another's maps comes after it (drops reads tcplife's
// socks and listeners). Adding an object is a file that implements object
// and a line here.
func newObjects() []object {
	return []object{
		&tcplifeObject{},   // tcplife.go
		&connectObject{},   // connect.go
		&dropsObject{},     // drops.go
		&conntrackObject{}, // conntrack_kernel.go
	}
}

// object is one BPF object of the probe and the Go that drives it. The
// probe keeps what the objects share (the ring buffer and its reader, the
// links, attachments, notes, the lost-record counters); each object keeps
// its own maps and state.
type object interface {
	// name names the object in LostByObject and in errors: its C file's
	// name without .bpf.c.
	name() string
	// records lists the ring buffer records the object writes. It is
	// called on a fresh object too, to build Decode's table, so it must
	// not depend on the object being loaded. Each object names its kinds
	// with its own generated copy of enum record_kind (bpf/records.h puts
	// the enum into every object's BTF), so that a kind is always read
	// from the object that writes it; a kind claimed twice panics at
	// init (buildDecoders).
	records() []recordType
	// open loads and attaches the object through l, and returns what it
	// loaded, or nil when the object is off (not asked for, or no attach
	// mode worked: it has told l why). An error fails Open.
	open(l *loader) (*ebpf.Collection, error)
	// poll turns counts the object keeps in kernel maps into events for h,
	// on the event loop, reusing ev. Run calls it every few thousand
	// records and each time the ring buffer has run dry (drained), the
	// last time with final set: then everything counted must be handed
	// over.
	poll(ev *events.Event, h Handler, drained, final bool) error
}

// objectOf returns the probe's object of type T (nil if the probe has
// none), for the methods that read one object's maps.
func objectOf[T object](p *Probe) T {
	for _, o := range p.objects {
		if t, ok := o.(T); ok {
			return t
		}
	}
	var none T
	return none
}

// Names that every BPF object declares through the shared headers
// (bpf/records.h, bpf/filter.h): the same C names in each object, so one
// place sets and reads them.
const (
	mapEvents      = "events"       // bpf/records.h: replaced by the shared ring buffer
	mapLostRecords = "lost_records" // bpf/records.h: summed into Stats.Lost
	varWakeupBytes = "wakeup_bytes" // bpf/records.h
)

// variables returns the values of bpf/filter.h's constants.
func (f Filter) variables() map[string]any {
	var comm [16]byte
	copy(comm[:15], f.Comm)
	return map[string]any{
		"filter_netns":        f.NetNS,
		"filter_tgid":         f.PID,
		"filter_port":         f.Port,
		"filter_family":       uint8(f.Family),
		"filter_comm_set":     boolByte(f.Comm != ""),
		"filter_comm":         comm,
		"filter_cgroup_id":    f.CgroupID,
		"filter_cgroup_level": f.CgroupLevel,
	}
}

func boolByte(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}

// loader is what the probe shares with an object while the object loads:
// the options, the ring buffer, the objects loaded before it, and where
// its links, attachments and notes go.
type loader struct {
	p *Probe
	// leftOut says why each optional program (modeHooks.optional) of
	// the mode that loaded was left out, by program name.
	leftOut map[string]error
}

// opts returns the probe's options.
func (l *loader) opts() Options { return l.p.opts }

// attached records a hook that is attached in mode; failed says why the
// better modes were not used (nil if none failed).
func (l *loader) attached(hook string, mode AttachMode, failed error, links ...hookLink) {
	l.p.links = append(l.p.links, links...)
	l.p.attachments = append(l.p.attachments, Attachment{Hook: hook, Mode: mode, Err: failed})
}

// off records a hook that is off, and why.
func (l *loader) off(hook string, why error) {
	l.p.attachments = append(l.p.attachments, Attachment{Hook: hook, Err: why})
}

// note adds a line to the probe's notes.
func (l *loader) note(s string) { l.p.notes = append(l.p.notes, s) }

// ensureTracefs mounts tracefs if needed, noting it once.
func (l *loader) ensureTracefs() error {
	mounted, err := EnsureTracefs()
	if mounted {
		l.note("mounted tracefs at " + tracefsPath + " (classic tracepoints need it)")
	}
	return err
}

// loadSpec says how to load one object.
type loadSpec struct {
	object string                               // the object's name
	hook   string                               // the Attachment's hook
	load   func() (*ebpf.CollectionSpec, error) // the generated loadX
	// vars are the object's own constants, beyond the shared ones
	// (wakeup_bytes, the filters), set before load.
	vars map[string]any
	// sizes overrides maps' max_entries.
	sizes map[string]uint32
	// without names programs left out in every mode: variants of a
	// program for other kernels (one variant loads, the object decides
	// which by a feature probe).
	without []string
	// shares names the maps taken from an object loaded before (which
	// must declare them alike: the shared headers of bpf/ do), instead of
	// creating the object's own copies.
	shares []string
	// modes are every attach mode of the object's hooks, best first.
	modes []modeHooks
	// only restricts the attempts to one of modes ("" or AttachAuto: try
	// each in turn). The other modes' programs are left out all the same.
	only AttachMode
}

// modeHooks is an object's hooks in one attach mode.
type modeHooks struct {
	mode AttachMode
	// progs are the programs of this mode; the programs that other modes
	// list are left out of the spec (a program type the kernel refuses
	// would fail the whole collection). Programs no mode lists are
	// always loaded.
	progs []string
	// optional are those of progs the mode can do without: when the
	// object does not load with them, it is loaded again without them
	// (and loader.leftOut says why). attach must not need them.
	optional []string
	// attach attaches the loaded programs, all or none.
	attach func(*ebpf.Collection) ([]hookLink, error)
	// refused, if set, is why this mode cannot work here, known without
	// trying it.
	refused error
}

// modeFailure is why one attach mode did not work.
type modeFailure struct {
	mode AttachMode
	err  error
}

func (f modeFailure) Error() string { return fmt.Sprintf("%s: %v", f.mode, f.err) }
func (f modeFailure) Unwrap() error { return f.err }

// joinFailures joins the failures into one error, nil if there are none.
func joinFailures(failed []modeFailure) error {
	errs := make([]error, len(failed))
	for i, f := range failed {
		errs[i] = f
	}
	return errors.Join(errs...)
}

// loadFirst loads the object with the programs of each of s.modes in
// turn and keeps the first mode whose programs both load and attach: the
// object's links and its Attachment are recorded and it is returned with
// its mode. When no mode works it returns nil and why each failed, and
// records nothing:
// the object decides whether that fails Open or leaves the hook off. An
// error means the object and the Go side disagree (a constant or map
// missing): it fails Open.
func (l *loader) loadFirst(s *loadSpec) (*ebpf.Collection, AttachMode, []modeFailure, error) {
	spec, err := l.prepare(s)
	if err != nil {
		return nil, "", nil, err
	}
	var failed []modeFailure
	tried := false
	for _, m := range s.modes {
		if s.only != "" && s.only != AttachAuto && m.mode != s.only {
			continue
		}
		tried = true
		coll, links, err := l.try(spec, s, m)
		if err != nil {
			failed = append(failed, modeFailure{mode: m.mode, err: err})
			continue
		}
		l.attached(s.hook, m.mode, joinFailures(failed), links...)
		return coll, m.mode, nil, nil
	}
	if !tried {
		failed = append(failed, modeFailure{mode: s.only, err: errors.New("not an attach mode of this hook")})
	}
	return nil, "", failed, nil
}

// prepare loads the object's spec and writes into it the constants and map
// sizes, and sizes its placeholder ring buffer like the shared one, which
// MapReplacements requires. A constant or map the object lacks is an
// error: the Go side and the C side disagree.
func (l *loader) prepare(s *loadSpec) (*ebpf.CollectionSpec, error) {
	spec, err := s.load()
	if err != nil {
		return nil, fmt.Errorf("load the %s object: %w", s.object, err)
	}
	set := func(vars map[string]any) error {
		for name, value := range vars {
			v, ok := spec.Variables[name]
			if !ok {
				return fmt.Errorf("variable %s missing from the %s object", name, s.object)
			}
			if err := v.Set(value); err != nil {
				return fmt.Errorf("set %s in the %s object: %w", name, s.object, err)
			}
		}
		return nil
	}
	if err := set(map[string]any{varWakeupBytes: l.p.opts.WakeupBytes}); err != nil {
		return nil, err
	}
	if err := set(l.p.opts.Filter.variables()); err != nil {
		return nil, err
	}
	if err := set(s.vars); err != nil {
		return nil, err
	}
	sizes := map[string]uint32{mapEvents: uint32(l.p.opts.RingBufferBytes)}
	for name, n := range s.sizes {
		sizes[name] = n
	}
	for _, name := range s.shares {
		if m := l.p.sharedMap(name); m != nil {
			sizes[name] = m.MaxEntries()
		}
	}
	for name, n := range sizes {
		m, ok := spec.Maps[name]
		if !ok {
			return nil, fmt.Errorf("map %s missing from the %s object", name, s.object)
		}
		m.MaxEntries = n
	}
	for _, name := range s.without {
		if _, ok := spec.Programs[name]; !ok {
			return nil, fmt.Errorf("program %s missing from the %s object", name, s.object)
		}
		delete(spec.Programs, name)
	}
	if _, ok := spec.Maps[mapLostRecords]; !ok {
		return nil, fmt.Errorf("map %s missing from the %s object", mapLostRecords, s.object)
	}
	return spec, nil
}

// try loads a copy of spec with mode m's programs and attaches them.
func (l *loader) try(spec *ebpf.CollectionSpec, s *loadSpec, m modeHooks) (*ebpf.Collection, []hookLink, error) {
	if m.refused != nil {
		return nil, nil, m.refused
	}
	spec = spec.Copy()
	keep := map[string]bool{}
	for _, name := range m.progs {
		keep[name] = true
	}
	for _, other := range s.modes {
		for _, name := range other.progs {
			if !keep[name] {
				delete(spec.Programs, name)
			}
		}
	}
	if m.mode == AttachTracepoint {
		if err := l.ensureTracefs(); err != nil {
			return nil, nil, err
		}
	}
	repl := map[string]*ebpf.Map{mapEvents: l.p.ring}
	for _, name := range s.shares {
		if m := l.p.sharedMap(name); m != nil {
			repl[name] = m
		}
	}
	coll, err := newCollection(spec, repl)
	if err != nil && len(m.optional) > 0 {
		// Without the optional programs: if that loads, they were the
		// cause.
		without := spec.Copy()
		for _, name := range m.optional {
			delete(without.Programs, name)
		}
		var err2 error
		if coll, err2 = newCollection(without, repl); err2 == nil {
			if l.leftOut == nil {
				l.leftOut = map[string]error{}
			}
			for _, name := range m.optional {
				l.leftOut[name] = err
			}
		}
		err = err2
	}
	if err != nil {
		return nil, nil, err
	}
	links, err := m.attach(coll)
	if err != nil {
		coll.Close()
		return nil, nil, err
	}
	return coll, links, nil
}

// newCollection loads spec, taking the maps of repl instead of creating
// them.
func newCollection(spec *ebpf.CollectionSpec, repl map[string]*ebpf.Map) (*ebpf.Collection, error) {
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{MapReplacements: repl})
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) && !errors.Is(err, unix.EPERM) {
			// The verifier's log in full (%+v): it is the only clue.
			return nil, fmt.Errorf("load: %+v", err)
		}
		return nil, fmt.Errorf("load: %w", err)
	}
	return coll, nil
}

// tracepointModes returns the modes in which one program on the kernel
// tracepoint group:name can be attached (progs: its program in each mode),
// best first.
func tracepointModes(group, name string, progs map[AttachMode]string) []modeHooks {
	out := make([]modeHooks, 0, len(AttachModes))
	for _, mode := range AttachModes {
		prog := progs[mode]
		out = append(out, modeHooks{
			mode:  mode,
			progs: []string{prog},
			attach: func(coll *ebpf.Collection) ([]hookLink, error) {
				l, err := attachTracepointMode(mode, group, name, coll.Programs[prog])
				if err != nil {
					return nil, fmt.Errorf("attach: %w", err)
				}
				return []hookLink{l}, nil
			},
		})
	}
	return out
}

// attachSyscalls attaches each program progs[i] to the tracepoint
// syscalls/tracepoints[i], all or none.
func attachSyscalls(coll *ebpf.Collection, tracepoints, progs []string) ([]hookLink, error) {
	var links []hookLink
	for i, tp := range tracepoints {
		prog := coll.Programs[progs[i]]
		l, err := attachHook(func() (link.Link, error) { return link.Tracepoint("syscalls", tp, prog, nil) })
		if err != nil {
			closeLinks(links)
			return nil, fmt.Errorf("attach syscalls/%s: %w", tp, err)
		}
		links = append(links, l)
	}
	return links, nil
}
