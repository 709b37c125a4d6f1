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
	"golang.org/x/sys/unix"

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
	// IdlePollInterval: after waits that brought no record the poll
	// interval doubles up to this (pollBackoff); the kernel's wakeup at
	// WakeupBytes still ends any wait at once.
	IdlePollInterval time.Duration
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
		// The Unix connect counts are read at most this often anyway
		// (unixPollInterval).
		IdlePollInterval: unixPollInterval,

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
	if err := removeMemlock(); err != nil {
		return nil, err
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
	// A cancelled ctx ends the wait at once, however long it was. Run
	// returns only once that call is over: the caller may Close next.
	woken := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(woken)
		p.Wake()
	})
	defer func() {
		if !stop() {
			<-woken
		}
	}()
	poll := newPollBackoff(p.opts)
	// wait sleeps until the kernel wakes the readers, Wake is called or
	// the poll interval has passed, and leaves the reader's deadline such
	// that the next ReadInto returns what is there without blocking.
	wait := func() {
		every := poll.next(p.stats.Records)
		if p.waiter == nil {
			p.reader.SetDeadline(time.Now().Add(every))
			return
		}
		p.waiter.wait(time.Now().Add(every))
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

// Wake ends the event loop's current wait for the ring buffer (or the
// next one, if it is not waiting), so that it calls Handler.Drained soon:
// for whoever hands the loop work outside the ring buffer (the session's
// sampler batches), now that an idle loop waits up to IdlePollInterval.
// Safe to call from any goroutine.
func (p *Probe) Wake() {
	if p.waiter != nil {
		p.waiter.wake()
	}
}

// pollBackoff is how long the event loop waits for the ring buffer when
// the kernel does not wake it: PollInterval while records come, doubling
// after every wait that brought none, up to IdlePollInterval. An idle
// tracer wakes twice a second instead of twenty times (the 50 ms poll
// and the scheduling around it were a third of its CPU time), and under
// load nothing changes: every wait brings records.
//
// Why no record can be lost to a longer wait: the programs submit with a
// forced wakeup once WakeupBytes are waiting (bpf/records.h), and the
// waiter, parked on the ring buffer's descriptor, returns on it at once,
// however long its deadline; the wait only decides how late records
// below WakeupBytes are read. So the backoff is on only where that wakeup
// leaves room in the ring: WakeupBytes at most half of RingBufferBytes.
type pollBackoff struct {
	min, max, cur time.Duration
	records       uint64 // the reader's count at the last wait
}

func newPollBackoff(o Options) pollBackoff {
	b := pollBackoff{min: o.PollInterval, max: o.IdlePollInterval}
	if b.max < b.min || o.WakeupBytes == 0 || o.WakeupBytes > uint64(o.RingBufferBytes)/2 {
		b.max = b.min
	}
	return b
}

// next returns the next wait's length, given the reader's record count.
func (b *pollBackoff) next(records uint64) time.Duration {
	switch {
	case b.cur == 0 || records != b.records:
		b.cur = b.min
	default:
		b.cur = min(2*b.cur, b.max)
	}
	b.records = records
	return b.cur
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

// removeMemlock lifts RLIMIT_MEMLOCK where the kernel charges BPF memory
// to it (before 5.11). cilium/ebpf's rlimit package decides whether it
// does at package init, by creating a map with the limit at zero: before
// main could make file capabilities given without the effective bit
// effective (privdrop.RaiseEffective), so for such a tracer its answer is
// "charged" on any kernel, and raising the limit then needs
// CAP_SYS_RESOURCE, which newer kernels do not need and a container may
// not be given. Where raising fails, the test is made again now, with
// the capabilities in effect: a map created under a zero limit means the
// limit does not matter.
func removeMemlock() error {
	err := rlimit.RemoveMemlock()
	if err == nil {
		return nil
	}
	var old unix.Rlimit
	if unix.Prlimit(0, unix.RLIMIT_MEMLOCK, nil, &old) != nil {
		return fmt.Errorf("remove memlock limit: %w", err)
	}
	zero := unix.Rlimit{Cur: 0, Max: old.Max}
	if unix.Prlimit(0, unix.RLIMIT_MEMLOCK, &zero, nil) != nil {
		return fmt.Errorf("remove memlock limit: %w", err)
	}
	m, mapErr := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if restoreErr := unix.Prlimit(0, unix.RLIMIT_MEMLOCK, &old, nil); restoreErr != nil {
		return fmt.Errorf("restore memlock limit: %w", restoreErr)
	}
	if mapErr != nil {
		return fmt.Errorf("this kernel charges BPF memory to RLIMIT_MEMLOCK (before 5.11) and raising it failed (grant CAP_SYS_RESOURCE, or raise the limit for the tracer): %w", err)
	}
	m.Close()
	return nil
}
