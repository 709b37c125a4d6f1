package kernel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"syscall"
	"time"

	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/conntracer/conntracer/internal/bootclock"
	"github.com/conntracer/conntracer/internal/events"
)

// TimeWaitDump returns the TIME_WAIT sockets of every network namespace
// and each namespace's ephemeral port range, as events for the
// aggregator: per namespace a KindPortRange, one KindTimeWait per socket
// and a KindTimeWaitDone naming the namespace; then a KindTimeWaitDone
// with namespace 0 ending the dump. Every event carries the dump's start
// time (CLOCK_BOOTTIME ns).
//
// A namespace that cannot be read is left out (no Done for it, so the
// aggregator keeps what it knew there) and reported in warnings. err is
// set only when no namespace could be read at all. The events are appended
// to buf[:0]: a caller that dumps periodically passes the previous batch
// back (tens of thousands of events under churn).
//
// The sock_diag request asks for TIME_WAIT alone (idiag_states), so the
// kernel walks the hash tables but sends only the timewait sockets: the
// cost grows with the sockets in the table, the traffic with TIME_WAIT.
//
// need, if not nil, decides per namespace whether to dump it, from the
// number of timewait sockets its sockstat counts (tw, -1 when unreadable):
// a caller that already knows that many skips the dump, whose cost grows
// with the very pile-up it counts. A namespace skipped sends nothing (no
// Done: the aggregator keeps what it knew), and when every namespace was
// skipped evs is empty (no final Done: nothing was reconciled).
func TimeWaitDump(buf []events.Event, need func(ino uint32, tw int) bool) (evs []events.Event, warnings []error, err error) {
	var l *NetNSList
	return l.TimeWaitDump(buf, need)
}

// TimeWaitDump is the package's TimeWaitDump on the shared listing.
func (l *NetNSList) TimeWaitDump(buf []events.Event, need func(ino uint32, tw int) bool) (evs []events.Event, warnings []error, err error) {
	evs = buf[:0]
	start := bootclock.Now()
	cands, warnings := l.list()
	warnings = slices.Clone(warnings) // the listing's own slice is shared
	var failures []error
	read, dumped := 0, 0
	for _, ino := range cands.inodes() {
		did, err := dumpTimeWaitNetNS(ino, cands[ino], start, need, &evs)
		if err != nil {
			failures = append(failures, err)
			continue
		}
		read++
		if did {
			dumped++
		}
	}
	if read > 0 && dumped == 0 {
		return evs, append(warnings, failures...), nil
	}
	if read == 0 {
		if len(failures) == 0 {
			failures = append(failures, errors.New("no network namespace found"))
		}
		return nil, warnings, fmt.Errorf("dump TIME_WAIT sockets: no network namespace could be read (run as root): %w", errors.Join(failures...))
	}
	evs = append(evs, events.Event{Kind: events.KindTimeWaitDone, Sample: events.Sample{TimeNs: start}})
	return evs, append(warnings, failures...), nil
}

// dumpTimeWaitNetNS appends the events of namespace ino, unless need
// (see TimeWaitDump) says it is not needed; it reports whether it dumped.
func dumpTimeWaitNetNS(ino uint32, paths []string, start uint64, need func(uint32, int) bool, evs *[]events.Event) (bool, error) {
	ns, err := openNetNS(ino, paths)
	if err != nil {
		return false, fmt.Errorf("open netns %d: %w", ino, err)
	}
	sock, lo, hi, tw, err := openDiagInNetNS(ns, ino, need)
	ns.Close()
	if err != nil {
		return false, fmt.Errorf("netns %d: %w", ino, err)
	}
	if sock == nil {
		return false, nil // need said no
	}
	defer sock.Close()
	if err := sock.SetReceiveTimeout(&unix.Timeval{Sec: int64(diagTimeout / time.Second)}); err != nil {
		return false, fmt.Errorf("netns %d: set sock_diag timeout: %w", ino, err)
	}
	tw = max(tw, 0)
	// Room for the namespace's timewait sockets at once: the events are
	// big, and growing the slice while tens of thousands arrive copied
	// them over and over (measured: most of the dump's CPU under churn).
	*evs = slices.Grow(*evs, tw+tw/8+16)
	*evs = append(*evs, events.Event{Kind: events.KindPortRange, Conn: events.Conn{NetNS: ino},
		Sample: events.Sample{TimeNs: start, PortLow: lo, PortHigh: hi}})
	mark := len(*evs)
	for _, fam := range [...]uint8{unix.AF_INET, unix.AF_INET6} {
		var err error
		for attempt := 1; attempt <= dumpAttempts; attempt++ {
			*evs = (*evs)[:mark]
			err = dumpTimeWait(sock, fam, ino, start, evs)
			if !errors.Is(err, errDumpInterrupted) {
				break
			}
		}
		if err != nil && !errors.Is(err, errDumpInterrupted) {
			*evs = (*evs)[:mark-1]
			return false, fmt.Errorf("dump %s TIME_WAIT sockets in netns %d: %w", events.Family(fam), ino, err)
		}
		mark = len(*evs)
	}
	*evs = append(*evs, events.Event{Kind: events.KindTimeWaitDone, Conn: events.Conn{NetNS: ino}, Sample: events.Sample{TimeNs: start}})
	return true, nil
}

// openDiagInNetNS reads how many timewait sockets the sockstat of
// namespace ns counts (-1 when unreadable) and, if need (nil: always)
// wants the dump, opens a sock_diag socket there and reads the
// namespace's ephemeral port range; else the socket is nil. A socket
// belongs to the namespace of the thread that creates it, and
// /proc/sys/net and /proc/thread-self/net answer for the namespace of the
// thread that opens the file.
func openDiagInNetNS(ns netns.NsHandle, ino uint32, need func(uint32, int) bool) (*nl.NetlinkSocket, uint16, uint16, int, error) {
	var (
		s      *nl.NetlinkSocket
		lo, hi uint16
		tw     = -1
	)
	err := inNetNS(int(ns), ino, func() error {
		if b, err := os.ReadFile("/proc/thread-self/net/sockstat"); err == nil {
			vals := map[string]uint64{}
			parseSockstat(b, vals)
			if v, ok := vals["SockstatTCPTw"]; ok {
				tw = int(min(v, 1<<22))
			}
		}
		if need != nil && !need(ino, tw) {
			return nil
		}
		var err error
		if s, err = nl.Subscribe(unix.NETLINK_INET_DIAG); err != nil {
			return err
		}
		lo, hi, err = readPortRange()
		return err
	})
	if err != nil && s != nil {
		s.Close()
		s = nil
	}
	return s, lo, hi, tw, err
}

// inetDiagReq is struct inet_diag_req_v2 asking for TIME_WAIT sockets.
type inetDiagReq struct {
	family uint8
}

func (r *inetDiagReq) Len() int { return 56 }

func (r *inetDiagReq) Serialize() []byte {
	b := make([]byte, 56)
	b[0] = r.family
	b[1] = unix.IPPROTO_TCP
	// b[2] ext = 0, b[3] pad
	// TIME_WAIT, and FIN_WAIT2 for timewait sockets still waiting for a
	// slow peer's FIN (see timeWaitEvent).
	binary.NativeEndian.PutUint32(b[4:], 1<<uint(events.TCPTimeWait)|1<<uint(events.TCPFinWait2))
	// id: all zero, cookie "no cookie" (INET_DIAG_NOCOOKIE, ~0)
	binary.NativeEndian.PutUint32(b[48:], ^uint32(0))
	binary.NativeEndian.PutUint32(b[52:], ^uint32(0))
	return b
}

// inetDiagMsgLen is sizeof(struct inet_diag_msg).
const inetDiagMsgLen = 72

// dumpTimeWait sends one TIME_WAIT dump request and appends an event per
// timewait socket.
func dumpTimeWait(s *nl.NetlinkSocket, family uint8, ino uint32, start uint64, evs *[]events.Event) error {
	req := nl.NewNetlinkRequest(nl.SOCK_DIAG_BY_FAMILY, unix.NLM_F_DUMP)
	req.AddData(&inetDiagReq{family: family})
	if err := s.Send(req); err != nil {
		return fmt.Errorf("send: %w", err)
	}
	interrupted := false
	for {
		msgs, _, err := s.Receive()
		if err != nil {
			return fmt.Errorf("receive: %w", err)
		}
		for _, m := range msgs {
			if m.Header.Seq != req.Seq {
				continue
			}
			if m.Header.Flags&unix.NLM_F_DUMP_INTR != 0 {
				interrupted = true
			}
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				if interrupted {
					return errDumpInterrupted
				}
				return nil
			case unix.NLMSG_ERROR:
				if len(m.Data) >= 4 {
					if e := int32(binary.NativeEndian.Uint32(m.Data)); e != 0 {
						return syscall.Errno(-e)
					}
				}
				return nil
			}
			// Parsed in place: an Event is over a kilobyte, and a
			// dump under churn has tens of thousands.
			*evs = append(*evs, events.Event{})
			if !timeWaitEvent(&(*evs)[len(*evs)-1], m.Data, ino, start) {
				*evs = (*evs)[:len(*evs)-1]
			}
		}
	}
}

// timeWaitEvent parses one struct inet_diag_msg into ev, which is zero,
// and reports whether it was a timewait socket.
func timeWaitEvent(ev *events.Event, b []byte, ino uint32, start uint64) bool {
	if len(b) < inetDiagMsgLen {
		return false
	}
	// A timewait socket reports its substate (inet_twsk_diag_fill) and
	// timer 3. Substate FIN_WAIT2 is an orphan that closed before its
	// peer: the tracer already counts it as TIME_WAIT (its close record
	// says so) and it turns TIME_WAIT when the peer's FIN arrives, so the
	// dump must confirm it, not make the aggregator forget it. Full
	// FIN_WAIT2 sockets (other timers) are not timewait sockets.
	state := events.TCPState(b[1])
	const twTimer = 3
	if state != events.TCPTimeWait && !(state == events.TCPFinWait2 && b[2] == twTimer) {
		return false
	}
	family := b[0]
	sport := binary.BigEndian.Uint16(b[4:])
	dport := binary.BigEndian.Uint16(b[6:])
	var local, remote netip.Addr
	if family == unix.AF_INET {
		local = netip.AddrFrom4([4]byte(b[8:12]))
		remote = netip.AddrFrom4([4]byte(b[24:28]))
	} else {
		local = netip.AddrFrom16([16]byte(b[8:24]))
		remote = netip.AddrFrom16([16]byte(b[24:40]))
	}
	fam := events.FamilyIPv6
	if family == unix.AF_INET || (local.Is4In6() && remote.Is4In6()) {
		fam = events.FamilyIPv4
		local, remote = local.Unmap(), remote.Unmap()
	}
	expiresMs := binary.NativeEndian.Uint32(b[52:])
	ev.Kind = events.KindTimeWait
	c := &ev.Conn
	c.Cookie = uint64(binary.NativeEndian.Uint32(b[44:])) | uint64(binary.NativeEndian.Uint32(b[48:]))<<32
	c.NetNS, c.Family = ino, fam
	c.Local = netip.AddrPortFrom(local, sport)
	c.Remote = netip.AddrPortFrom(remote, dport)
	c.LastState = state
	ev.Sample.TimeNs, ev.Sample.ExpiresNs = start, uint64(expiresMs)*1_000_000
	return true
}
