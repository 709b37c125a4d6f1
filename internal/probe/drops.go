package probe

// The packet-drop concern: bpf/drops.bpf.c on skb:kfree_skb. Every drop is
// counted exactly in the kernel (drop_counts, read once a second into
// KindDropCount events); individual drops arrive as KindDrop records, up to
// Options.DropRecordsPerSec per CPU.

import (
	"errors"
	"fmt"
	"net/netip"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"

	"github.com/conntracer/conntracer/internal/bootclock"
	"github.com/conntracer/conntracer/internal/events"
)

const dropHook = "skb/kfree_skb"

// dropEventSize is the size of a drop_event record as the kernel writes it.
const dropEventSize = int(unsafe.Sizeof(dropsDropEvent{}))

// dropCountInterval is how often the kernel's exact drop counters are read
// into KindDropCount events.
const dropCountInterval = time.Second

// dropProgram names the program that implements each attach mode.
var dropProgram = map[AttachMode]string{
	AttachTPBTF:      dropsProgCtKfreeSkbBtf,
	AttachRawTP:      dropsProgCtKfreeSkbRaw,
	AttachTracepoint: dropsProgCtKfreeSkbTp,
}

// dropState is what the probe keeps of the drops object.
type dropState struct {
	counts  *ebpf.Map // drop_counts: exact per-key totals
	unsent  *ebpf.Map // unsent_records: drops counted but not sent (rate limit)
	lastRun time.Time
	key     dropsDropKey
	perCPU  []uint64
}

// openDrops loads and attaches the drops object. Drops are optional: when
// no mode works (a kernel before 5.17 has no drop reasons), the hook is
// reported off and tracing goes on.
func (p *Probe) openDrops() {
	if !p.opts.Drops {
		return
	}
	modes := AttachModes
	if p.opts.AttachMode != AttachAuto {
		modes = []AttachMode{p.opts.AttachMode}
	}
	var errs []error
	for _, mode := range modes {
		coll, l, err := p.tryDrops(mode)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", mode, err))
			continue
		}
		if err := p.adopt("drops", coll, dropsMapLostRecords); err != nil {
			l.Close()
			errs = append(errs, err)
			break
		}
		p.links = append(p.links, l)
		p.attachments = append(p.attachments, Attachment{Hook: dropHook, Mode: mode, Err: errors.Join(errs...)})
		p.drops = &dropState{counts: coll.Maps[dropsMapDropCounts], unsent: coll.Maps[dropsMapUnsentRecords]}
		return
	}
	p.attachments = append(p.attachments, Attachment{Hook: dropHook, Err: fmt.Errorf("no attach mode worked: %w", errors.Join(errs...))})
}

// sharedMap returns a map of an object already loaded (tcplife's socks and
// listeners), or nil.
func (p *Probe) sharedMap(name string) *ebpf.Map {
	for _, c := range p.colls {
		if m, ok := c.Maps[name]; ok {
			return m
		}
	}
	return nil
}

func (p *Probe) tryDrops(mode AttachMode) (*ebpf.Collection, hookLink, error) {
	spec, err := loadDrops()
	if err != nil {
		return nil, hookLink{}, err
	}
	for m, name := range dropProgram {
		if m != mode {
			delete(spec.Programs, name)
		}
	}
	if err := p.prepare(spec, "drops", map[string]any{
		dropsVarFilterNetns:   p.opts.Filter.NetNS,
		dropsVarKeepNormal:    boolByte(p.opts.DropsKeepNormal),
		dropsVarRecordsPerSec: p.opts.DropRecordsPerSec,
	}); err != nil {
		return nil, hookLink{}, err
	}
	repl := map[string]*ebpf.Map{dropsMapEvents: p.ring}
	// Owners come from tcplife's tables; the declarations in drops.bpf.c
	// must match them, which the replacement checks (key, value, size).
	for _, name := range []string{dropsMapSocks, dropsMapListeners} {
		if m := p.sharedMap(name); m != nil {
			spec.Maps[name].MaxEntries = m.MaxEntries()
			repl[name] = m
		}
	}
	if mode == AttachTracepoint {
		if _, err := EnsureTracefs(); err != nil {
			return nil, hookLink{}, err
		}
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{MapReplacements: repl})
	if err != nil {
		return nil, hookLink{}, fmt.Errorf("load: %w", err)
	}
	l, err := attachTracepointMode(mode, "skb", "kfree_skb", coll.Programs[dropProgram[mode]])
	if err != nil {
		coll.Close()
		return nil, hookLink{}, fmt.Errorf("attach: %w", err)
	}
	return coll, l, nil
}

// UnsentDropRecords returns how many drops were counted but not sent as
// records because of the per-CPU rate limit (their counts are exact in
// KindDropCount events). 0 when the drops hook is off.
func (p *Probe) UnsentDropRecords() (uint64, error) {
	if p.drops == nil {
		return 0, nil
	}
	var perCPU []uint64
	if err := p.drops.unsent.Lookup(uint32(0), &perCPU); err != nil {
		return 0, fmt.Errorf("read unsent_records: %w", err)
	}
	var n uint64
	for _, v := range perCPU {
		n += v
	}
	return n, nil
}

// emitDropCounts reads the kernel's exact drop counters and hands one
// KindDropCount event per key to h, at most once per dropCountInterval
// unless force is set. Runs on the event loop goroutine.
func (p *Probe) emitDropCounts(h Handler, ev *events.Event, force bool) error {
	d := p.drops
	if d == nil {
		return nil
	}
	now := time.Now()
	if !force && now.Sub(d.lastRun) < dropCountInterval {
		return nil
	}
	d.lastRun = now
	bootNs := bootclock.Now()
	it := d.counts.Iterate()
	for it.Next(&d.key, &d.perCPU) {
		var n uint64
		for _, v := range d.perCPU {
			n += v
		}
		*ev = events.Event{Kind: events.KindDropCount}
		dr := &ev.Drop
		dr.Reason = d.key.Reason
		dr.Location = d.key.Location
		dr.NetNS = d.key.Netns
		dr.NoCT = d.key.Flags&uint32(dropsDropFlagsDROP_NO_CT) != 0
		dr.Owner.PID = d.key.Tgid
		if d.key.Tgid != 0 {
			dr.Owner.Source = events.OwnerSocket
		}
		dr.Count = n
		dr.TimeNs = bootNs
		h.HandleEvent(ev)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read drop_counts: %w", err)
	}
	return nil
}

func decodeDrop(raw []byte, ev *events.Event) error {
	if len(raw) < dropEventSize {
		return fmt.Errorf("drop_event: %w: %d of %d bytes", ErrShortRecord, len(raw), dropEventSize)
	}
	var r dropsDropEvent
	copy(unsafe.Slice((*byte)(unsafe.Pointer(&r)), dropEventSize), raw)

	flags := dropsDropFlags(r.Flags)
	ev.Kind = events.KindDrop
	d := &ev.Drop
	*d = events.Drop{
		Reason:   r.Reason,
		Location: r.Location,
		NetNS:    r.Netns,
		Ifindex:  r.Ifindex,
		L4Proto:  r.L4proto,
		TCPFlags: r.TcpFlags,
		HasPorts: flags&dropsDropFlagsDROP_HAS_PORTS != 0,
		NoCT:     flags&dropsDropFlagsDROP_NO_CT != 0,
		TimeNs:   r.TimeNs,
		Count:    1,
	}
	if flags&dropsDropFlagsDROP_HAS_ADDRS != 0 {
		switch events.Family(r.Family) {
		case events.FamilyIPv4:
			d.Family = events.FamilyIPv4
			d.Src = netip.AddrPortFrom(netip.AddrFrom4([4]byte(r.Saddr[:4])), r.Sport)
			d.Dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte(r.Daddr[:4])), r.Dport)
		case events.FamilyIPv6:
			d.Family = events.FamilyIPv6
			d.Src = netip.AddrPortFrom(netip.AddrFrom16(r.Saddr), r.Sport)
			d.Dst = netip.AddrPortFrom(netip.AddrFrom16(r.Daddr), r.Dport)
		}
	}
	switch {
	case flags&dropsDropFlagsDROP_OWNER_SOCKET != 0:
		d.Owner.Source = events.OwnerSocket
	case flags&dropsDropFlagsDROP_OWNER_LISTENER != 0:
		d.Owner.Source = events.OwnerListener
	}
	if d.Owner.Source != events.OwnerUnknown {
		d.Owner.PID = r.Tgid
		d.Owner.Comm = r.Comm
	}
	return nil
}
