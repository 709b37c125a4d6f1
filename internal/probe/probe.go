package probe

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"

	"github.com/conntracer/conntracer/internal/events"
)

// AttachMode selects how a hook is attached: Options.AttachMode for the
// kernel tracepoints (TCP state changes, packet drops), Options.ConntrackMode
// for the conntrack functions (AttachFentry, AttachKprobe).
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
	// NoConnect leaves the connect() hooks (connect.go) off.
	NoConnect bool
	// ConnectInProgress sends a record for every connect() that returns
	// EINPROGRESS, not only a count (doubles the records of non-blocking
	// clients).
	ConnectInProgress bool
	// ConnectLatency also attaches sys_enter_connect, so that failed and
	// Unix connects carry their latency. Off by default: an entry hook on
	// any system call makes every system call of the machine pass through
	// the tracepoint's dispatch (0.5% of all CPU time under connection
	// churn, measured); without it the exit hook reads the arguments from
	// the saved registers and events say NoLatency.
	ConnectLatency bool
	// NoUnixDgram leaves off the counting of failed Unix datagram sends
	// (exit tracepoints of write, sendto, sendmsg, sendmmsg: a cost on
	// every such call of the machine, see README).
	NoUnixDgram bool
	// UnixDgramWrite adds write(2) to those hooks, for datagram senders
	// that use write() on a connected socket (Go's log/syslog). Off by
	// default: its exit tracepoint costs every write() on the machine about
	// 100 ns (measured), and write() is the busiest system call of most
	// servers, while glibc's syslog() and journald clients use send(),
	// sendto() or sendmsg(), which are hooked.
	UnixDgramWrite bool
	// Drops attaches skb:kfree_skb (off by default: `tracer` enables it
	// with --drops, `tracer top` always).
	Drops bool
	// DropsKeepNormal also counts frees with reason NOT_SPECIFIED or
	// SKB_CONSUMED, which are mostly not drops at all.
	DropsKeepNormal bool
	// DropRecordsPerSec bounds the individual drop records each CPU sends
	// per second (0: no bound); every drop is still counted exactly.
	DropRecordsPerSec uint32
	// ConntrackInKernel attaches the in-kernel conntrack entry hooks
	// (conntrack_kernel.go: fentry, else kprobes) when the kernel allows
	// them; ConntrackInKernel() on the probe says whether it did.
	ConntrackInKernel bool
	// ConntrackMode restricts those hooks to one mode (AttachFentry or
	// AttachKprobe); "" or AttachAuto tries fentry, then kprobes.
	ConntrackMode AttachMode

	// connectCompat runs the connect() programs' compat variant even where
	// the kernel can run the BTF one: the package's tests exercise it on
	// any kernel.
	connectCompat bool
}

// DefaultOptions returns the settings `tracer` runs with by default.
func DefaultOptions() Options {
	return Options{
		AttachMode:      AttachAuto,
		RingBufferBytes: 8 << 20,
		MaxSockets:      131072,
		WakeupBytes:     64 << 10,
		PollInterval:    50 * time.Millisecond,

		DropRecordsPerSec: 1000,
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
//
// The probe is its BPF objects (objects.go: tcplife, connect, drops,
// conntrack, each in its own file) plus what they share: the ring buffer,
// which Open creates and hands to each through MapReplacements, its
// reader, the links and attachments of every hook, the notes, and each
// object's per-CPU lost_records counter.
type Probe struct {
	opts        Options
	objects     []object // every object, loaded or not (newObjects)
	ring        *ebpf.Map
	colls       []*ebpf.Collection // the loaded objects, in load order
	lost        []objectCounter    // each loaded object's lost_records
	links       []hookLink
	attachments []Attachment
	reader      *ringbuf.Reader
	waiter      *ringWaiter // nil: the reader's own blocking wait is used
	stats       Stats
	notes       []string
}

// objectCounter is one loaded object's per-CPU lost_records map.
type objectCounter struct {
	object string
	m      *ebpf.Map
}

// Notes reports what Open did to the system on the way, such as mounting
// tracefs, so that the user is told.
func (p *Probe) Notes() []string { return p.notes }

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

	var notes []string
	if opts.Filter.CgroupID != 0 && !kernelHasAncestorCgroup() {
		// The programs test the subtree with this helper; without it the
		// filter runs in user space only (which filters every event again).
		opts.Filter.CgroupID, opts.Filter.CgroupLevel = 0, 0
		notes = append(notes, "cgroup filter applied in user space only: this kernel's tracing programs cannot call bpf_get_current_ancestor_cgroup_id (5.11+)")
	}
	p := &Probe{opts: opts, objects: newObjects(), notes: notes}
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

	l := &loader{p: p}
	for _, o := range p.objects {
		coll, err := o.open(l)
		if err != nil {
			return nil, err
		}
		if coll != nil {
			p.adopt(o.name(), coll)
		}
	}

	p.reader, err = ringbuf.NewReader(p.ring)
	if err != nil {
		return nil, fmt.Errorf("open ring buffer reader: %w", err)
	}
	if p.waiter, err = newRingWaiter(p.ring); err != nil {
		p.notes = append(p.notes, fmt.Sprintf("ring buffer read with a blocking wait: %v", err))
	}
	return p, nil
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
	// wait sleeps until the kernel wakes the readers or PollInterval has
	// passed, and leaves the reader's deadline such that the next ReadInto
	// returns what is there without blocking.
	wait := func() {
		if p.waiter == nil {
			p.reader.SetDeadline(time.Now().Add(p.opts.PollInterval))
			return
		}
		p.waiter.wait(time.Now().Add(p.opts.PollInterval))
		p.reader.SetDeadline(time.Now())
	}
	wait()
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
			// Nor would the kernel's counts be read: do it here too.
			if p.stats.Records%4096 == 0 {
				if perr := p.poll(&ev, h, false, false); perr != nil {
					return perr
				}
			}
			if derr := Decode(rec.RawSample, &ev); derr != nil {
				p.stats.BadRecords++
				continue
			}
			h.HandleEvent(&ev)
		case errors.Is(err, os.ErrDeadlineExceeded):
			// Everything written so far has been read. Counts kept in
			// kernel maps are read on the same goroutine.
			if perr := p.poll(&ev, h, true, draining); perr != nil {
				return perr
			}
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
			wait()
		default:
			p.updateLost()
			return fmt.Errorf("read ring buffer: %w", err)
		}
	}
}

// poll runs every object's per-poll work (object.poll) on the event loop.
func (p *Probe) poll(ev *events.Event, h Handler, drained, final bool) error {
	for _, o := range p.objects {
		if err := o.poll(ev, h, drained, final); err != nil {
			return err
		}
	}
	return nil
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

// LostRecords sums, over every object and CPU, the kernel's count of
// records dropped because the ring buffer was full. Safe to call from any
// goroutine.
func (p *Probe) LostRecords() (uint64, error) {
	byObject, err := p.LostByObject()
	var n uint64
	for _, o := range byObject {
		n += o.Lost
	}
	return n, err
}

// ObjectLost is one BPF object's count of records the kernel could not
// write to the ring buffer.
type ObjectLost struct {
	Object string // "tcplife", "connect", "drops", "conntrack"
	Lost   uint64
}

// LostByObject is LostRecords per BPF object, in the order they were
// loaded. Safe to call from any goroutine.
func (p *Probe) LostByObject() ([]ObjectLost, error) {
	out := make([]ObjectLost, len(p.lost))
	for i, c := range p.lost {
		n, err := sumPerCPU(c.m, 0)
		if err != nil {
			return nil, fmt.Errorf("read %s lost_records: %w", c.object, err)
		}
		out[i] = ObjectLost{Object: c.object, Lost: n}
	}
	return out, nil
}

// sumPerCPU sums, over the CPUs, the value at key of a per-CPU array of
// uint64 counters.
func sumPerCPU(m *ebpf.Map, key uint32) (uint64, error) {
	var perCPU []uint64
	if err := m.Lookup(key, &perCPU); err != nil {
		return 0, err
	}
	return sum(perCPU), nil
}

// sum adds up one per-CPU value.
func sum(perCPU []uint64) uint64 {
	var n uint64
	for _, v := range perCPU {
		n += v
	}
	return n
}

// adopt keeps a loaded object: its lost-record counter is summed and it is
// closed with the probe. Its maps serve the objects loaded after it
// (sharedMap). prepare checked that it has a lost_records map.
func (p *Probe) adopt(name string, coll *ebpf.Collection) {
	p.colls = append(p.colls, coll)
	p.lost = append(p.lost, objectCounter{object: name, m: coll.Maps[mapLostRecords]})
}

// sharedMap returns the map called name of an object already loaded, or
// nil.
func (p *Probe) sharedMap(name string) *ebpf.Map {
	for _, c := range p.colls {
		if m, ok := c.Maps[name]; ok {
			return m
		}
	}
	return nil
}

// Close detaches every program and frees the maps. It is idempotent.
func (p *Probe) Close() error {
	var errs []error
	if p.waiter != nil {
		errs = append(errs, p.waiter.close())
		p.waiter = nil
	}
	if p.reader != nil {
		errs = append(errs, p.reader.Close())
		p.reader = nil
	}
	errs = append(errs, p.detach())
	p.links = nil
	for _, c := range p.colls {
		c.Close()
	}
	p.colls, p.lost = nil, nil
	p.objects = newObjects() // fresh, unloaded: their maps are closed
	if p.ring != nil {
		errs = append(errs, p.ring.Close())
		p.ring = nil
	}
	return errors.Join(errs...)
}

// kernelHasAncestorCgroup reports whether tracepoint programs may call
// bpf_get_current_ancestor_cgroup_id (5.11+). An answer other than "not
// supported" (EPERM on locked-down kernels) counts as yes: loading decides.
func kernelHasAncestorCgroup() bool {
	err := features.HaveProgramHelper(ebpf.TracePoint, asm.FnGetCurrentAncestorCgroupId)
	return !errors.Is(err, ebpf.ErrNotSupported)
}
