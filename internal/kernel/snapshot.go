package kernel

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/conntracer/conntracer/internal/events"
)

const (
	// diagTimeout bounds each netlink send and receive, so a wedged socket
	// cannot hang start-up; a dump of 100k sockets takes well under it.
	diagTimeout = 10 * time.Second
	// dumpAttempts is how often a dump the kernel flags as interrupted
	// (NLM_F_DUMP_INTR: the socket table changed under it) is retried
	// before its possibly incomplete result is used.
	dumpAttempts = 3
)

// ExistingConnections returns one events.KindConnExisting event per TCP
// connection open right now, in every network namespace on the machine,
// with its owner found through /proc.
//
// Only connected sockets are reported: LISTEN, TIME_WAIT, NEW_SYN_RECV and
// CLOSE sockets are skipped (listeners and unconnected sockets are not
// connections; TIME_WAIT and request sockets have no owner and will never
// produce a close event from the state tracepoint). A socket whose owner
// cannot be found (an accepted connection still in the listener's queue, or
// a process that exited meanwhile) is reported with events.OwnerUnknown.
//
// warnings lists what did not stop the scan but made it incomplete: a
// namespace that vanished or could not be entered, owners that could not be
// read. Without root the scan still covers the caller's own namespace and
// the processes it may inspect, and says in warnings what it missed. err is
// set only when nothing could be read at all (no /proc, or not a single
// namespace could be dumped); evs is then empty.
func ExistingConnections() (evs []events.Event, warnings []error, err error) {
	s := scanner{procDir: "/proc", netnsDir: netnsRunDir, mountinfo: selfMountinfo}
	return s.existingConnections()
}

// scanner holds the paths and the parallelism of a scan; ExistingConnections
// uses the real ones, and tests of the /proc parts use directories of their
// own.
type scanner struct {
	procDir   string
	netnsDir  string
	mountinfo string
	fdWorkers int // goroutines reading /proc/PID/fd; 0: the default
}

func (s scanner) existingConnections() ([]events.Event, []error, error) {
	pids, err := listPIDs(s.procDir)
	if err != nil {
		return nil, nil, fmt.Errorf("list processes in %s: %w", s.procDir, err)
	}
	cands, warnings := listNetNS(s.procDir, pids, s.netnsDir, s.mountinfo)

	var (
		evs      []events.Event
		sockInos []uint32 // socket inode of evs[i]
		failures []error
		dumped   int
	)
	for _, ino := range cands.inodes() {
		socks, w, err := dumpNetNS(ino, cands[ino])
		warnings = append(warnings, w...)
		if err != nil {
			failures = append(failures, err)
			continue
		}
		dumped++
		listening := listeningAddrs(socks)
		for _, sk := range socks {
			conn, ok := connFromDiag(sk, ino)
			if !ok {
				continue
			}
			conn.Role = inferRole(listening, conn.Local)
			evs = append(evs, events.Event{Kind: events.KindConnExisting, Conn: conn})
			sockInos = append(sockInos, sk.InetDiagMsg.INode)
		}
	}
	if dumped == 0 {
		if len(failures) == 0 {
			failures = append(failures, errors.New("no network namespace found"))
		}
		err := errors.Join(failures...)
		hint := ""
		if errors.Is(err, unix.EPERM) {
			hint = " (run as root: entering a namespace needs CAP_SYS_ADMIN)"
		}
		return nil, warnings, fmt.Errorf("dump tcp sockets: no network namespace could be read%s: %w", hint, err)
	}
	warnings = append(warnings, failures...)

	// Owners are looked up after the dumps, so every socket reported
	// existed before its owner was searched for; a socket created later
	// is not reported (the tracer sees its handshake instead).
	w := s.fillOwners(evs, sockInos)
	warnings = append(warnings, w...)

	slices.SortFunc(evs, compareEvents)
	return evs, warnings, nil
}

// fillOwners sets Conn.Owner of each event whose socket a process holds.
func (s scanner) fillOwners(evs []events.Event, sockInos []uint32) []error {
	want := make(map[uint32]struct{}, len(sockInos))
	for _, ino := range sockInos {
		if ino != 0 { // 0: no struct file, e.g. not accepted yet
			want[ino] = struct{}{}
		}
	}
	if len(want) == 0 {
		return nil
	}
	// Listed again: processes started since the namespace scan may hold
	// sockets dumped since (inherited across fork).
	pids, err := listPIDs(s.procDir)
	if err != nil {
		return []error{fmt.Errorf("find socket owners: list processes in %s: %w", s.procDir, err)}
	}
	owners, warnings := socketOwners(s.procDir, pids, want, s.fdWorkers)

	r := newProcessReader(s.procDir, s.mountinfo)
	if r.cgErr != nil {
		warnings = append(warnings, fmt.Errorf("owners' cgroup ids unknown: %w", r.cgErr))
	}
	procs := make(map[uint32]events.Process, len(owners))
	for i := range evs {
		pid, ok := owners[sockInos[i]]
		if !ok {
			continue // Owner stays zero: events.OwnerUnknown
		}
		p, ok := procs[pid]
		if !ok {
			var err error
			p, err = r.read(pid)
			if err != nil {
				warnings = append(warnings, err)
			}
			procs[pid] = p
		}
		evs[i].Conn.Owner = p
	}
	return warnings
}

// compareEvents orders a snapshot by namespace, then family and addresses,
// so that output and tests are deterministic.
func compareEvents(a, b events.Event) int {
	return cmp.Or(
		cmp.Compare(a.Conn.NetNS, b.Conn.NetNS),
		cmp.Compare(a.Conn.Family, b.Conn.Family),
		a.Conn.Local.Compare(b.Conn.Local),
		a.Conn.Remote.Compare(b.Conn.Remote),
		cmp.Compare(a.Conn.Cookie, b.Conn.Cookie),
	)
}

// dumpNetNS returns every TCP socket of network namespace ino. paths are
// ways to open it; the first that still leads to it is used.
func dumpNetNS(ino uint32, paths []string) ([]*netlink.InetDiagTCPInfoResp, []error, error) {
	ns, err := openNetNS(ino, paths)
	if err != nil {
		return nil, nil, fmt.Errorf("open netns %d: %w", ino, err)
	}
	h, err := newDiagHandle(ns, ino)
	ns.Close() // the socket keeps the namespace; the fd is no longer needed
	if err != nil {
		return nil, nil, fmt.Errorf("open sock_diag socket in netns %d: %w", ino, err)
	}
	defer h.Close()
	if err := h.SetSocketTimeout(diagTimeout); err != nil {
		return nil, nil, fmt.Errorf("set sock_diag timeout in netns %d: %w", ino, err)
	}

	var (
		socks    []*netlink.InetDiagTCPInfoResp
		warnings []error
		failed   []error
	)
	for _, fam := range [...]uint8{unix.AF_INET, unix.AF_INET6} {
		ss, err := dumpTCP(h, fam)
		switch {
		case errors.Is(err, netlink.ErrDumpInterrupted):
			warnings = append(warnings, fmt.Errorf("dump %s tcp sockets in netns %d: %w after %d attempts; using a possibly incomplete result",
				events.Family(fam), ino, err, dumpAttempts))
		case err != nil:
			failed = append(failed, fmt.Errorf("dump %s tcp sockets in netns %d: %w", events.Family(fam), ino, err))
			continue
		}
		socks = append(socks, ss...)
	}
	if len(failed) == 2 {
		return nil, warnings, errors.Join(failed...)
	}
	return socks, append(warnings, failed...), nil
}

// dumpTCP dumps the TCP sockets of one family, with their tcp_info.
//
// SocketDiagTCPInfo asks for states 0xfff (bits 0-11): every state up to
// TCP_CLOSING. Asking for SYN_RECV makes inet_diag add NEW_SYN_RECV request
// sockets too (inet_diag_dump_icsk), and TIME_WAIT brings timewait sockets;
// connFromDiag drops both kinds.
func dumpTCP(h *netlink.Handle, family uint8) ([]*netlink.InetDiagTCPInfoResp, error) {
	for attempt := 1; ; attempt++ {
		socks, err := h.SocketDiagTCPInfo(family)
		if !errors.Is(err, netlink.ErrDumpInterrupted) || attempt == dumpAttempts {
			return socks, err
		}
	}
}

// openNetNS opens network namespace ino through the first of paths that
// still leads to it. A /proc/PID path can outlive its process or, after pid
// reuse, lead to another namespace, so the inode is checked on the open fd.
func openNetNS(ino uint32, paths []string) (netns.NsHandle, error) {
	var last error
	for _, p := range paths {
		h, err := netns.GetFromPath(p)
		if err != nil {
			last = err
			continue
		}
		var st unix.Stat_t
		if err := unix.Fstat(int(h), &st); err != nil {
			h.Close()
			last = fmt.Errorf("stat %s: %w", p, err)
			continue
		}
		if st.Ino != uint64(ino) {
			h.Close()
			last = fmt.Errorf("%s now leads to netns %d", p, st.Ino)
			continue
		}
		return h, nil
	}
	// Usually the namespace is gone: its last process exited mid-scan.
	return netns.None(), fmt.Errorf("no longer reachable (%d paths tried, last: %w)", len(paths), last)
}

// newDiagHandle opens a NETLINK_INET_DIAG socket inside namespace ns (inode
// ino). A netlink socket belongs to the namespace it was created in, so it
// can be used from any thread afterwards.
//
// The family must be passed to NewHandle: without it the handle holds
// only route, xfrm and netfilter sockets, and SocketDiagTCPInfo silently
// opens a fresh inet_diag socket in the caller's namespace instead.
func newDiagHandle(ns netns.NsHandle, ino uint32) (*netlink.Handle, error) {
	var h *netlink.Handle
	err := inNetNS(int(ns), ino, func() error {
		var err error
		h, err = netlink.NewHandle(unix.NETLINK_INET_DIAG)
		return err
	})
	return h, err
}

// listeningAddrs returns the local addresses that sockets of one dump
// listen on.
func listeningAddrs(socks []*netlink.InetDiagTCPInfoResp) map[netip.AddrPort]struct{} {
	l := make(map[netip.AddrPort]struct{})
	for _, sk := range socks {
		if events.TCPState(sk.InetDiagMsg.State) != events.TCPListen {
			continue
		}
		if a, ok := netip.AddrFromSlice(sk.InetDiagMsg.ID.Source); ok {
			l[netip.AddrPortFrom(a.Unmap(), sk.InetDiagMsg.ID.SourcePort)] = struct{}{}
		}
	}
	return l
}

// inferRole guesses which side opened a connection that predates tracing:
// a connection whose local address and port someone listens on (exactly or
// on the wildcard address) was accepted, any other was connected. sock_diag
// does not say; this is what ss users infer by eye. A client that bound a
// listener's port with SO_REUSEADDR would be misread, which is rare.
func inferRole(listening map[netip.AddrPort]struct{}, local netip.AddrPort) events.Role {
	port := local.Port()
	for _, a := range []netip.Addr{local.Addr(), netip.IPv4Unspecified(), netip.IPv6Unspecified()} {
		if _, ok := listening[netip.AddrPortFrom(a, port)]; ok {
			return events.RolePassive
		}
	}
	return events.RoleActive
}

// connFromDiag turns one sock_diag record into a Conn, or reports false
// for sockets that are not open connections.
func connFromDiag(d *netlink.InetDiagTCPInfoResp, netnsIno uint32) (events.Conn, bool) {
	sk := d.InetDiagMsg
	state := events.TCPState(sk.State)
	switch state {
	case events.TCPListen, events.TCPTimeWait, events.TCPNewSynRecv, events.TCPClose:
		return events.Conn{}, false
	}
	// Only full sockets carry tcp_info. The kernel reports the two kinds
	// of mini socket under other states: a request socket (NEW_SYN_RECV)
	// as SYN_RECV (inet_req_diag_fill), and a timewait socket as its
	// substate, which is FIN_WAIT2 for an orphan whose peer has not
	// closed yet (tcp_time_wait(sk, TCP_FIN_WAIT2, ...) from tcp_close).
	// Neither has an owner, and neither will ever pass through
	// inet_sock_set_state to CLOSE: the full socket, if any, already did.
	if d.TCPInfo == nil {
		return events.Conn{}, false
	}
	local, okL := netip.AddrFromSlice(sk.ID.Source)
	remote, okR := netip.AddrFromSlice(sk.ID.Destination)
	if !okL || !okR {
		return events.Conn{}, false
	}
	// The netlink package hands AF_INET addresses over in 16-byte
	// IPv4-in-IPv6 form; AF_INET6 sockets talking IPv4 carry mapped
	// addresses (::ffff:a.b.c.d). Both are IPv4 connections on the wire
	// and reported as such, like the BPF side does. The interface index
	// of a link-local IPv6 address is dropped: the BPF side has no zone
	// either, and the cookie identifies the socket.
	family := events.FamilyIPv6
	if sk.Family == unix.AF_INET || (local.Is4In6() && remote.Is4In6()) {
		family = events.FamilyIPv4
		local, remote = local.Unmap(), remote.Unmap()
	}
	return events.Conn{
		// inet_diag stores the 64-bit cookie as two u32 in host order,
		// low word first (sock_diag_save_cookie); ss prints it the same
		// way ("sk:"), and it is the value bpf_get_socket_cookie returns.
		// The dump generates the cookie if the socket had none, so it is
		// never 0 here.
		Cookie:    uint64(sk.ID.Cookie[0]) | uint64(sk.ID.Cookie[1])<<32,
		NetNS:     netnsIno,
		Family:    family,
		Local:     netip.AddrPortFrom(local, sk.ID.SourcePort),
		Remote:    netip.AddrPortFrom(remote, sk.ID.DestinationPort),
		Role:      events.RoleUnknown,
		LastState: state,
		SeenOpen:  false,
	}, true
}
