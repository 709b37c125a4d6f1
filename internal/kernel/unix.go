package kernel

import (
	"errors"
	"fmt"
	"slices"

	"github.com/conntracer/conntracer/internal/events"
)

// tcpListenState is the state unix sockets report while listening (they
// borrow TCP_LISTEN, net/unix/af_unix.c).
const tcpListenState = 10

// UnixListeners samples every listening Unix stream and seqpacket socket
// in every network namespace: one events.KindUnixListener event each, with
// its address, namespace, the process holding it (through /proc/PID/fd),
// its backlog limit (the listen() argument capped by net.core.somaxconn, as
// the kernel keeps it) and its queue (connections not yet accepted), and
// the namespace's net.core.somaxconn.
//
// This is what `ss -xl` shows as Send-Q (limit) and Recv-Q (queue). A
// connect to a listener whose queue exceeds its limit fails with EAGAIN
// (non-blocking) or waits (blocking): unix_recvq_full() in af_unix.c.
//
// warnings says what the sample missed (namespaces that vanished, owners
// that could not be read); err is set only when nothing could be read.
// Call it from a goroutine on a tick and hand the events to the event
// loop: it reads /proc and netlink, which takes milliseconds.
func UnixListeners() (evs []events.Event, warnings []error, err error) {
	var l *NetNSList
	return l.UnixListeners()
}

// UnixListeners is the package's UnixListeners on the shared listing.
func (l *NetNSList) UnixListeners() (evs []events.Event, warnings []error, err error) {
	cands, warnings := l.list()
	warnings = slices.Clone(warnings) // the listing's own slice is shared
	var (
		inodes   []uint32
		failures []error
		dumped   int
	)
	for _, ino := range cands.inodes() {
		got, err := unixListenersIn(ino, cands[ino])
		if err != nil {
			failures = append(failures, err)
			continue
		}
		dumped++
		for _, l := range got {
			evs = append(evs, l.ev)
			inodes = append(inodes, l.inode)
		}
	}
	if dumped == 0 {
		if len(failures) == 0 {
			failures = append(failures, errors.New("no network namespace found"))
		}
		return nil, warnings, fmt.Errorf("dump unix sockets: no network namespace could be read (run as root): %w", errors.Join(failures...))
	}
	warnings = append(warnings, failures...)

	want := make(map[uint32]struct{}, len(inodes))
	for _, ino := range inodes {
		want[ino] = struct{}{}
	}
	if len(want) > 0 {
		pids, err := l.PIDs()
		if err != nil {
			return evs, append(warnings, fmt.Errorf("find listeners' processes: %w", err)), nil
		}
		owners, w := socketOwners("/proc", pids, want, 0)
		warnings = append(warnings, w...)
		r := newProcessReader("/proc", selfMountinfo)
		procs := map[uint32]events.Process{}
		for i := range evs {
			pid, ok := owners[inodes[i]]
			if !ok {
				continue
			}
			p, ok := procs[pid]
			if !ok {
				var err error
				if p, err = r.read(pid); err != nil {
					warnings = append(warnings, err)
				}
				procs[pid] = p
			}
			evs[i].Connect.Owner = p
		}
	}
	return evs, warnings, nil
}

type unixListener struct {
	ev    events.Event
	inode uint32
}

// unixListenersIn dumps the listening Unix sockets of one namespace.
func unixListenersIn(ino uint32, paths []string) ([]unixListener, error) {
	ns, err := openNetNS(ino, paths)
	if err != nil {
		return nil, fmt.Errorf("open netns %d: %w", ino, err)
	}
	defer ns.Close()
	var socks []unixDiagEntry
	for range dumpAttempts {
		socks, err = dumpUnixListening(ns, ino)
		if !errors.Is(err, errDumpInterrupted) {
			break
		}
	}
	if err != nil && !errors.Is(err, errDumpInterrupted) {
		return nil, fmt.Errorf("dump unix sockets in netns %d: %w", ino, err)
	}
	somaxconn, _ := readSysctlIn(int(ns), ino, "/proc/sys/net/core/somaxconn")

	var out []unixListener
	for _, s := range socks {
		if s.state != tcpListenState || s.name == nil || !s.hasQueue {
			continue
		}
		if t := events.SockType(s.typ); t != events.SockStream && t != events.SockSeqpacket {
			continue
		}
		l := unixListener{inode: s.inode, ev: events.Event{Kind: events.KindUnixListener}}
		c := &l.ev.Connect
		c.NetNS = ino
		c.Family = events.FamilyUnix
		c.SockType = events.SockType(s.typ)
		c.Path.Set(s.name)
		c.Queue = s.rqueue   // sk_ack_backlog for a listener
		c.Backlog = s.wqueue // sk_max_ack_backlog
		c.Somaxconn = somaxconn
		out = append(out, l)
	}
	return out, nil
}
