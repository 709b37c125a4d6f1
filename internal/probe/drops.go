package probe

// The packet-drop concern: bpf/drops.bpf.c on skb:kfree_skb. Every drop is
// counted exactly in the kernel (drop_counts, read once a second into
// KindDropCount events); individual drops arrive as KindDrop records, up to
// Options.DropRecordsPerSec per CPU.

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"

	"github.com/conntracer/conntracer/internal/bootclock"
	"github.com/conntracer/conntracer/internal/events"
)

const dropHook = "skb/kfree_skb"

// dropCountInterval is how often the kernel's exact drop counters are read
// into KindDropCount events.
const dropCountInterval = time.Second

// dropsObject is the drops hook and its counters. Optional: when no mode
// works (a kernel before 5.17 has no drop reasons), the hook is reported
// off and tracing goes on.
type dropsObject struct {
	counts  *ebpf.Map // drop_counts: exact per-key totals; nil when off
	unsent  *ebpf.Map // unsent_records: drops counted but not sent (rate limit)
	lastRun time.Time
	key     dropsDropKey
	perCPU  []uint64
}

func (*dropsObject) name() string { return "drops" }

func (*dropsObject) records() []recordType {
	return []recordType{
		record[dropsDropEvent](uint8(dropsRecordKindRECORD_DROP), "drop_event", decodeDrop),
	}
}

// open loads and attaches the object with Options.Drops. Owners come from
// tcplife's tables, which it shares (sockstate.h declares them for both).
func (o *dropsObject) open(l *loader) (*ebpf.Collection, error) {
	opts := l.opts()
	if !opts.Drops {
		return nil, nil
	}
	coll, _, failed, err := l.loadFirst(&loadSpec{
		object: o.name(),
		hook:   dropHook,
		load:   loadDrops,
		vars: map[string]any{
			dropsVarKeepNormal:    boolByte(opts.DropsKeepNormal),
			dropsVarRecordsPerSec: opts.DropRecordsPerSec,
		},
		shares: []string{dropsMapSocks, dropsMapListeners},
		only:   opts.AttachMode,
		modes: tracepointModes("skb", "kfree_skb", map[AttachMode]string{
			AttachTPBTF:      dropsProgCtKfreeSkbBtf,
			AttachRawTP:      dropsProgCtKfreeSkbRaw,
			AttachTracepoint: dropsProgCtKfreeSkbTp,
		}),
	})
	if err != nil || coll == nil {
		if err == nil {
			l.off(dropHook, fmt.Errorf("no attach mode worked: %w", joinFailures(failed)))
		}
		return nil, err
	}
	o.counts, o.unsent = coll.Maps[dropsMapDropCounts], coll.Maps[dropsMapUnsentRecords]
	if !kernelHasDropReasons() {
		l.note("drops counted by location only: this kernel's kfree_skb has no reason (5.17+)")
	}
	return coll, nil
}

// UnsentDropRecords returns how many drops were counted but not sent as
// records because of the per-CPU rate limit (their counts are exact in
// KindDropCount events). 0 when the drops hook is off.
func (p *Probe) UnsentDropRecords() (uint64, error) {
	o := objectOf[*dropsObject](p)
	if o == nil || o.unsent == nil {
		return 0, nil
	}
	n, err := sumPerCPU(o.unsent, 0)
	if err != nil {
		return 0, fmt.Errorf("read unsent_records: %w", err)
	}
	return n, nil
}

// poll reads the kernel's exact drop counters and hands one KindDropCount
// event per key to h, at most once per dropCountInterval unless final, and
// only once the ring buffer has run dry: the counts follow the records
// they count.
func (o *dropsObject) poll(ev *events.Event, h Handler, drained, final bool) error {
	if o.counts == nil || !drained {
		return nil
	}
	now := time.Now()
	if !final && now.Sub(o.lastRun) < dropCountInterval {
		return nil
	}
	o.lastRun = now
	bootNs := bootclock.Now()
	it := o.counts.Iterate()
	for it.Next(&o.key, &o.perCPU) {
		*ev = events.Event{Kind: events.KindDropCount}
		dr := &ev.Drop
		dr.Reason = o.key.Reason
		dr.Location = o.key.Location
		dr.NetNS = o.key.Netns
		dr.NoCT = o.key.Flags&uint32(dropsDropFlagsDROP_NO_CT) != 0
		dr.Owner.PID = o.key.Tgid
		if o.key.Tgid != 0 {
			dr.Owner.Source = events.OwnerSocket
		}
		dr.Count = sum(o.perCPU)
		dr.TimeNs = bootNs
		h.HandleEvent(ev)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read drop_counts: %w", err)
	}
	return nil
}

// decodeDrop turns a drop_event into a KindDrop event.
func decodeDrop(raw []byte, ev *events.Event) {
	var r dropsDropEvent
	recordInto(raw, &r)
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
}

// kernelHasDropReasons reports whether the running kernel's BTF has enum
// skb_drop_reason, the same check the BPF side makes (has_drop_reason in
// bpf/drops.bpf.c). Unreadable BTF counts as yes: then the object could
// not have loaded anyway.
func kernelHasDropReasons() bool {
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		return true
	}
	var e *btf.Enum
	return spec.TypeByName("skb_drop_reason", &e) == nil
}
