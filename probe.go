package conntracer

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"

	"github.com/conntracer/conntracer/internal/events"
)

// AttachMode selects how the TCP state tracepoint is attached.
type AttachMode string

// Attach modes, best first. AttachAuto tries each in this order and keeps
// the first that loads and attaches: feature probes mislead on locked-down
// kernels (probing the tracing program type returns EPERM even where
// tp_btf works), so the loader decides by trying.
const (
	AttachAuto       AttachMode = "auto"
	AttachTPBTF      AttachMode = "tp_btf"
	AttachRawTP      AttachMode = "raw_tp"
	AttachTracepoint AttachMode = "tracepoint"
)

// AttachModes lists the concrete modes in the order auto tries them.
var AttachModes = []AttachMode{AttachTPBTF, AttachRawTP, AttachTracepoint}

// ParseAttachMode validates a user-supplied mode.
func ParseAttachMode(s string) (AttachMode, error) {
	switch m := AttachMode(s); m {
	case AttachAuto, AttachTPBTF, AttachRawTP, AttachTracepoint:
		return m, nil
	}
	return "", fmt.Errorf("unknown attach mode %q: use auto, tp_btf, raw_tp or tracepoint", s)
}

// Filter is the part of the user's filters that runs in the kernel. Zero
// values mean "no filter". Owner filters (PID, Comm, Cgroup) apply in the
// kernel only to connections whose owner the kernel knows; the rest reach
// user space, which attributes them and filters again.
type Filter struct {
	NetNS       uint32
	PID         uint32
	Port        uint16
	Family      events.Family
	Comm        string
	CgroupID    uint64
	CgroupLevel uint32
}

// Options configure Open. The zero value is not valid: start from
// DefaultOptions.
type Options struct {
	AttachMode AttachMode
	Filter     Filter
	// RingBufferBytes is the size of the ring buffer shared by all
	// programs: a power of two, at least one page.
	RingBufferBytes int
	// MaxSockets bounds the in-kernel table of live connections (LRU).
	MaxSockets uint32
	// WakeupBytes: the kernel wakes the reader once this much is waiting;
	// below that the reader polls every PollInterval.
	WakeupBytes  uint64
	PollInterval time.Duration
}

// DefaultOptions returns the settings `tracer` runs with by default.
func DefaultOptions() Options {
	return Options{
		AttachMode:      AttachAuto,
		RingBufferBytes: 8 << 20,
		MaxSockets:      131072,
		WakeupBytes:     64 << 10,
		PollInterval:    50 * time.Millisecond,
	}
}

// Attachment reports how one hook was attached, or why it is off.
type Attachment struct {
	Hook string     // e.g. "sock/inet_sock_set_state"
	Mode AttachMode // "" when the hook is off
	Err  error      // why the hook is off, or why better modes failed
}

// String renders "hook=mode" or "hook=off (reason)".
func (a Attachment) String() string {
	if a.Mode == "" {
		return fmt.Sprintf("%s=off (%v)", a.Hook, a.Err)
	}
	return fmt.Sprintf("%s=%s", a.Hook, a.Mode)
}

// Stats counts what the reader has seen. Read it after Run returns.
type Stats struct {
	Records    uint64 // records read from the ring buffer
	BadRecords uint64 // records that failed to decode
	Lost       uint64 // records the kernel could not write (ring buffer full)
}

// Probe is the loaded and attached set of BPF programs plus the reader of
// their ring buffer. Open starts no goroutine; Run reads until cancelled.
type Probe struct {
	opts        Options
	ring        *ebpf.Map
	coll        *ebpf.Collection
	lost        *ebpf.Map
	links       []link.Link
	attachments []Attachment
	reader      *ringbuf.Reader
	stats       Stats
}

const stateHook = "sock/inet_sock_set_state"

// stateProgram names the program that implements each attach mode.
var stateProgram = map[AttachMode]string{
	AttachTPBTF:      tcplifeProgCtStateBtf,
	AttachRawTP:      tcplifeProgCtStateRaw,
	AttachTracepoint: tcplifeProgCtStateTp,
}

// Open checks the environment, loads the programs and attaches them with
// fallbacks. On error nothing stays loaded or attached.
func Open(opts Options) (_ *Probe, err error) {
	if err := CheckPrivileges(); err != nil {
		return nil, err
	}
	if err := CheckBTF(); err != nil {
		return nil, err
	}
	// Kernels before 5.11 account BPF memory against RLIMIT_MEMLOCK.
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("remove memlock limit: %w", err)
	}

	p := &Probe{opts: opts}
	defer func() {
		if err != nil {
			p.Close()
		}
	}()

	p.ring, err = ebpf.NewMap(&ebpf.MapSpec{
		Name:       "ct_events",
		Type:       ebpf.RingBuf,
		MaxEntries: uint32(opts.RingBufferBytes),
	})
	if err != nil {
		return nil, fmt.Errorf("create ring buffer of %d bytes (a power of two, at least one page): %w", opts.RingBufferBytes, err)
	}

	if err := p.loadState(); err != nil {
		return nil, err
	}
	p.attachAccept()

	p.reader, err = ringbuf.NewReader(p.ring)
	if err != nil {
		return nil, fmt.Errorf("open ring buffer reader: %w", err)
	}
	return p, nil
}

// loadState loads the tcplife object with the state program of the first
// attach mode that both loads and attaches.
func (p *Probe) loadState() error {
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
		p.coll = coll
		p.lost = coll.Maps[tcplifeMapLostRecords]
		p.links = append(p.links, l)
		p.attachments = append(p.attachments, Attachment{Hook: stateHook, Mode: mode, Err: errors.Join(errs...)})
		return nil
	}
	return fmt.Errorf("attach %s: no attach mode worked: %w", stateHook, errors.Join(errs...))
}

func (p *Probe) tryState(mode AttachMode) (*ebpf.Collection, link.Link, error) {
	spec, err := loadTcplife()
	if err != nil {
		return nil, nil, err
	}
	// Load only the state program of this mode (a program type the kernel
	// refuses would fail the whole collection) plus the accept programs.
	for m, name := range stateProgram {
		if m != mode {
			delete(spec.Programs, name)
		}
	}
	if err := p.configure(spec); err != nil {
		return nil, nil, err
	}
	if mode == AttachTracepoint {
		if _, err := EnsureTracefs(); err != nil {
			return nil, nil, err
		}
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{
		MapReplacements: map[string]*ebpf.Map{tcplifeMapEvents: p.ring},
	})
	if err != nil {
		return nil, nil, fmt.Errorf("load: %w", err)
	}
	prog := coll.Programs[stateProgram[mode]]
	var l link.Link
	switch mode {
	case AttachTPBTF:
		l, err = link.AttachTracing(link.TracingOptions{Program: prog, AttachType: ebpf.AttachTraceRawTp})
	case AttachRawTP:
		l, err = link.AttachRawTracepoint(link.RawTracepointOptions{Name: "inet_sock_set_state", Program: prog})
	case AttachTracepoint:
		l, err = link.Tracepoint("sock", "inet_sock_set_state", prog, nil)
	}
	if err != nil {
		coll.Close()
		return nil, nil, fmt.Errorf("attach: %w", err)
	}
	return coll, l, nil
}

// configure writes the options into the spec's constants and map sizes.
func (p *Probe) configure(spec *ebpf.CollectionSpec) error {
	f := p.opts.Filter
	var comm [16]byte
	copy(comm[:15], f.Comm)
	set := []struct {
		name  string
		value any
	}{
		{tcplifeVarFilterNetns, f.NetNS},
		{tcplifeVarFilterTgid, f.PID},
		{tcplifeVarFilterPort, f.Port},
		{tcplifeVarFilterFamily, uint8(f.Family)},
		{tcplifeVarFilterCommSet, boolByte(f.Comm != "")},
		{tcplifeVarFilterComm, comm},
		{tcplifeVarFilterCgroupId, f.CgroupID},
		{tcplifeVarFilterCgroupLevel, f.CgroupLevel},
		{tcplifeVarWakeupBytes, p.opts.WakeupBytes},
	}
	for _, s := range set {
		v, ok := spec.Variables[s.name]
		if !ok {
			return fmt.Errorf("variable %s missing from the BPF object", s.name)
		}
		if err := v.Set(s.value); err != nil {
			return fmt.Errorf("set %s: %w", s.name, err)
		}
	}
	spec.Maps[tcplifeMapSocks].MaxEntries = p.opts.MaxSockets
	// The shared ring buffer replaces this placeholder; sizes must agree.
	spec.Maps[tcplifeMapEvents].MaxEntries = uint32(p.opts.RingBufferBytes)
	return nil
}

func boolByte(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}

// attachAccept attaches the accept() exit tracepoints that name the owner
// of passive connections. Without them the tracer still runs: passive
// connections are attributed to their listener instead, and the start-up
// line says so.
func (p *Probe) attachAccept() {
	for _, sc := range []struct{ name, prog string }{
		{"sys_exit_accept4", tcplifeProgCtAccept4Exit},
		{"sys_exit_accept", tcplifeProgCtAcceptExit},
	} {
		hook := "syscalls/" + sc.name
		if _, err := EnsureTracefs(); err != nil {
			p.attachments = append(p.attachments, Attachment{Hook: hook, Err: err})
			continue
		}
		l, err := link.Tracepoint("syscalls", sc.name, p.coll.Programs[sc.prog], nil)
		if err != nil {
			p.attachments = append(p.attachments, Attachment{Hook: hook, Err: err})
			continue
		}
		p.links = append(p.links, l)
		p.attachments = append(p.attachments, Attachment{Hook: hook, Mode: AttachTracepoint})
	}
}

// Attachments reports, per hook, the mode in use or why it is off.
func (p *Probe) Attachments() []Attachment { return p.attachments }

// Handler consumes decoded events on the reader's goroutine, which is the
// tracer's event loop.
type Handler interface {
	// HandleEvent is called once per record. ev is reused for the next
	// record: copy what must outlive the call.
	HandleEvent(ev *events.Event)
	// Drained is called each time everything the kernel wrote so far has
	// been read: a good moment to flush output.
	Drained()
}

// Run reads records until ctx is cancelled, decoding each into a reused
// Event and handing it to h on this goroutine. On cancellation Run drains
// what the kernel already wrote, so no recorded data is lost on a clean
// stop.
func (p *Probe) Run(ctx context.Context, h Handler) error {
	var (
		rec ringbuf.Record
		ev  events.Event
	)
	draining := false
	p.reader.SetDeadline(time.Now().Add(p.opts.PollInterval))
	for {
		err := p.reader.ReadInto(&rec)
		switch {
		case err == nil:
			p.stats.Records++
			// Under sustained load the buffer may never run dry, so
			// the deadline branch below may not run: check for
			// cancellation every few thousand records too.
			if p.stats.Records%4096 == 0 && ctx.Err() != nil && !draining {
				draining = true
				p.reader.SetDeadline(time.Now())
			}
			if derr := Decode(rec.RawSample, &ev); derr != nil {
				p.stats.BadRecords++
				continue
			}
			h.HandleEvent(&ev)
		case errors.Is(err, os.ErrDeadlineExceeded):
			// Everything written so far has been read.
			h.Drained()
			if draining {
				return p.updateLost()
			}
			if ctx.Err() != nil {
				// One more pass with an immediate deadline picks up
				// records submitted since the last poll.
				draining = true
				p.reader.SetDeadline(time.Now())
				continue
			}
			p.reader.SetDeadline(time.Now().Add(p.opts.PollInterval))
		default:
			p.updateLost()
			return fmt.Errorf("read ring buffer: %w", err)
		}
	}
}

// Stats returns the reader's counters, the kernel's lost count included as
// of the end of Run (or of the last call to UpdateLost).
func (p *Probe) Stats() Stats { return p.stats }

// updateLost sums the per-CPU lost-record counters into the stats.
func (p *Probe) updateLost() error {
	n, err := p.LostRecords()
	if err != nil {
		return err
	}
	p.stats.Lost = n
	return nil
}

// LostRecords sums the kernel's per-CPU count of records dropped because
// the ring buffer was full. Safe to call from any goroutine.
func (p *Probe) LostRecords() (uint64, error) {
	var perCPU []uint64
	if err := p.lost.Lookup(uint32(0), &perCPU); err != nil {
		return 0, fmt.Errorf("read lost_records: %w", err)
	}
	var n uint64
	for _, v := range perCPU {
		n += v
	}
	return n, nil
}

// Close detaches every program and frees the maps. It is idempotent.
func (p *Probe) Close() error {
	var errs []error
	if p.reader != nil {
		errs = append(errs, p.reader.Close())
		p.reader = nil
	}
	for _, l := range p.links {
		errs = append(errs, l.Close())
	}
	p.links = nil
	if p.coll != nil {
		p.coll.Close()
		p.coll = nil
	}
	if p.ring != nil {
		errs = append(errs, p.ring.Close())
		p.ring = nil
	}
	return errors.Join(errs...)
}
