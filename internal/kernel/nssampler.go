package kernel

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/conntracer/conntracer/internal/events"
)

// NetNSSampler reads, once per tick and in every network namespace, what
// the kernel counts per namespace and BPF cannot see on this kernel:
//   - conntrack statistics through ctnetlink (KindConntrackStats), with the
//     timeouts that keep entries alive;
//   - accept-queue overflows: the namespace's TcpExtListenOverflows delta,
//     attributed to the listener whose queue is full (KindListenOverflow).
//     Measured on 6.18: a SYN refused because the accept queue is full is
//     freed with consume_skb (tcp_conn_request returns 0, "acceptable"),
//     not kfree_skb, so the drop hook never sees most overflows; only the
//     final ACK refused in tcp_check_req shows as TCP_LISTEN_OVERFLOW.
//
// Not safe for concurrent use; one goroutine calls Sample on a ticker and
// hands the events to the event loop.
type NetNSSampler struct {
	// OnlyNetNS restricts sampling to one namespace (inode); 0: all.
	OnlyNetNS uint32
	// Watcher, if set, is told about every namespace where conntrack is
	// loaded, each sample (a new one is subscribed when first seen), and
	// which namespaces still exist.
	Watcher ConntrackNSWatcher
	// NetNS is the namespace listing shared with the tracer's other
	// samplers (nil: each Sample walks /proc itself).
	NetNS    *NetNSList
	prevOver map[uint32]uint64
	procDir  string
	// Namespace identity: the cookie each inode had at the last round
	// (0: the kernel gives none), so that a namespace appearing after the
	// first round, or an inode reused by another namespace, is reported
	// (KindNetNSNew, KindNetNSGone) and its counters start from zero.
	cookies map[uint32]uint64
	rounds  int
	// zeroCT holds the last all-zero conntrack statistics of a namespace
	// whose table was unused (not sent: a line per idle namespace says
	// nothing). It is sent just before the first non-zero sample, as that
	// namespace's baseline: the first drops count.
	zeroCT map[uint32]events.Conntrack
}

// ConntrackNSWatcher follows the conntrack tables of the namespaces the
// NetNSSampler finds active (CtEvents does, through ctnetlink).
type ConntrackNSWatcher interface {
	// Watch starts following namespace ino, open at nsFD for the call's
	// duration; a namespace followed already is left as it is.
	Watch(ino uint32, nsFD int) error
	// Retain stops following the namespaces not in seen (gone).
	Retain(seen map[uint32]bool)
}

// NewNetNSSampler returns a sampler of every namespace. The first Sample
// takes the baselines: overflow deltas start from it.
func NewNetNSSampler() *NetNSSampler {
	return &NetNSSampler{prevOver: map[uint32]uint64{}, procDir: "/proc",
		cookies: map[uint32]uint64{}, zeroCT: map[uint32]events.Conntrack{}}
}

// Sample returns the events of one tick. bootNs stamps them
// (CLOCK_BOOTTIME). warnings list namespaces that could not be read.
func (s *NetNSSampler) Sample(bootNs uint64) ([]events.Event, []error) {
	cands, warnings := s.NetNS.list()
	warnings = slices.Clone(warnings) // the listing's own slice is shared
	var evs []events.Event
	seen := make(map[uint32]bool, len(cands))
	for _, ino := range cands.inodes() {
		if s.OnlyNetNS != 0 && ino != s.OnlyNetNS {
			continue
		}
		seen[ino] = true
		ns, err := openNetNS(ino, cands[ino])
		if err != nil {
			continue // gone since the scan
		}
		e, w := s.sampleOne(int(ns), ino, bootNs)
		ns.Close()
		evs = append(evs, e...)
		warnings = append(warnings, w...)
	}
	if s.Watcher != nil {
		s.Watcher.Retain(seen)
	}
	for ino := range s.prevOver {
		if !seen[ino] {
			delete(s.prevOver, ino) // namespace gone: nothing can leak
		}
	}
	for ino := range s.cookies {
		if !seen[ino] {
			evs = append(evs, s.gone(ino, bootNs))
		}
	}
	s.rounds++
	return evs, warnings
}

// identity returns the events that tell the aggregator that namespace ino
// is not the one it knew under that inode: KindNetNSNew for a namespace
// first seen after the first round (its counters all started within the
// trace), preceded by KindNetNSGone when the inode now names another
// namespace (its cookie changed: inodes are reused once freed).
func (s *NetNSSampler) identity(ino uint32, cookie, bootNs uint64) []events.Event {
	prev, known := s.cookies[ino]
	var evs []events.Event
	if known && prev != 0 && cookie != 0 && prev != cookie {
		evs = append(evs, s.gone(ino, bootNs))
		known = false
	}
	s.cookies[ino] = cookie
	if !known && s.rounds > 0 {
		evs = append(evs, events.Event{Kind: events.KindNetNSNew, Counters: events.Counters{NetNS: ino, TimeNs: bootNs}})
	}
	return evs
}

// gone forgets namespace ino and returns the KindNetNSGone event.
func (s *NetNSSampler) gone(ino uint32, bootNs uint64) events.Event {
	delete(s.cookies, ino)
	delete(s.zeroCT, ino)
	delete(s.prevOver, ino)
	return events.Event{Kind: events.KindNetNSGone, Counters: events.Counters{NetNS: ino, TimeNs: bootNs}}
}

func (s *NetNSSampler) sampleOne(fd int, ino uint32, bootNs uint64) ([]events.Event, []error) {
	var (
		evs      []events.Event
		warnings []error
	)
	proc, err := readNetNSProc(fd, ino)
	if err != nil {
		return nil, []error{fmt.Errorf("netns %d: %w", ino, err)}
	}
	evs = append(evs, s.identity(ino, proc.Cookie, bootNs)...)
	// Conntrack: only where the module is loaded and this namespace has
	// used it (a table that never held an entry and counted nothing is
	// not worth a line per namespace).
	if proc.ProcStat != nil {
		// Followed from the first sample on, active or not: since 5.19
		// (nf_conntrack_events=2, the default) an entry carries the event
		// extension only if a ctnetlink listener existed in its namespace
		// when it was created; entries made before the subscription never
		// report an update or their destruction.
		if s.Watcher != nil {
			if err := s.Watcher.Watch(ino, fd); err != nil {
				warnings = append(warnings, err)
			}
		}
		ct, err := ConntrackStats(fd)
		ct.Entries, ct.Max = proc.ConntrackCount, proc.ConntrackMax
		switch {
		case err != nil:
			warnings = append(warnings, fmt.Errorf("netns %d: %w", ino, err))
		default:
			ct.NetNS = ino
			ct.TimeNs = bootNs
			ct.TimeoutEstablished = proc.TimeoutEstablished
			ct.TimeoutTimeWait = proc.TimeoutTimeWait
			ct.TimeoutCloseWait = proc.TimeoutCloseWait
			ct.TimeoutSynSent = proc.TimeoutSynSent
			if ct.Entries == 0 && ct.Insert == 0 && ct.Drop == 0 && ct.Invalid == 0 && ct.InsertFailed == 0 &&
				ct.EarlyDrop == 0 && ct.SearchRestart == 0 {
				s.zeroCT[ino] = ct
				break
			}
			if z, ok := s.zeroCT[ino]; ok {
				delete(s.zeroCT, ino)
				evs = append(evs, events.Event{Kind: events.KindConntrackStats, Conntrack: z})
			}
			evs = append(evs, events.Event{Kind: events.KindConntrackStats, Conntrack: ct})
		}
	}

	prev, had := s.prevOver[ino]
	s.prevOver[ino] = proc.ListenOverflows
	if !had || proc.ListenOverflows <= prev {
		return evs, warnings
	}
	ev, err := s.attributeOverflow(fd, ino, proc, proc.ListenOverflows-prev, bootNs)
	if err != nil {
		warnings = append(warnings, fmt.Errorf("netns %d: attribute %d listen overflows: %w", ino, proc.ListenOverflows-prev, err))
	}
	return append(evs, ev), warnings
}

// attributeOverflow names the listener behind a namespace's overflows: the
// one whose accept queue is fullest relative to its backlog (sock_diag
// reports a listener's queue length as rqueue and its backlog as wqueue).
// Overflows of several listeners in one second go to the fullest one.
func (s *NetNSSampler) attributeOverflow(fd int, ino uint32, proc NetNSProc, delta uint64, bootNs uint64) (events.Event, error) {
	ev := events.Event{Kind: events.KindListenOverflow}
	d := &ev.Drop
	d.ReasonName = "TCP_LISTEN_OVERFLOW"
	d.NetNS = ino
	d.L4Proto = unix.IPPROTO_TCP
	d.Count = delta
	d.TimeNs = bootNs
	d.Somaxconn = proc.Somaxconn

	h, err := newDiagHandle(netns.NsHandle(fd), ino)
	if err != nil {
		return ev, err
	}
	defer h.Close()
	var best *netlink.InetDiagTCPInfoResp
	for _, fam := range [...]uint8{unix.AF_INET, unix.AF_INET6} {
		socks, err := dumpTCP(h, fam)
		if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
			return ev, err
		}
		for _, sk := range socks {
			m := sk.InetDiagMsg
			if events.TCPState(m.State) != events.TCPListen || m.WQueue == 0 {
				continue
			}
			if best == nil || uint64(m.RQueue)*uint64(best.InetDiagMsg.WQueue) > uint64(best.InetDiagMsg.RQueue)*uint64(m.WQueue) {
				best = sk
			}
		}
	}
	if best == nil {
		return ev, errors.New("no listener found")
	}
	m := best.InetDiagMsg
	d.QueueLen, d.Backlog = m.RQueue, m.WQueue
	if a, ok := netip.AddrFromSlice(m.ID.Source); ok {
		d.Dst = netip.AddrPortFrom(a.Unmap(), m.ID.SourcePort)
		d.Family = events.FamilyIPv6
		if a.Unmap().Is4() {
			d.Family = events.FamilyIPv4
		}
	}
	pids, err := s.NetNS.PIDs()
	if err != nil {
		return ev, err
	}
	owners, _ := socketOwners(s.procDir, pids, map[uint32]struct{}{m.INode: {}}, 0)
	if pid, ok := owners[m.INode]; ok {
		p, _ := newProcessReader(s.procDir, selfMountinfo).read(pid)
		p.Source = events.OwnerListener
		d.Owner = p
	}
	return ev, nil
}
