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
	return (&UnixSampler{}).Sample()
}

// UnixSampler is UnixListeners for a tracer that samples on a tick: it
// reads the namespaces from a shared listing and remembers each
// listener's owner. Finding an owner reads the fds of every process
// (/proc/PID/fd), so it is done only for listeners not seen before, and
// again for one whose owner is no longer listed: listeners live long and
// stay with their process. (A listener passed to a process of lower pid
// after it was first seen keeps the owner it had.) Not safe for
// concurrent use.
type UnixSampler struct {
	NetNS  *NetNSList // nil: each Sample walks /proc itself
	owners map[uint32]events.Process
	scans  int // rounds that read every process's fds (tests)
}

// Sample is one round: see UnixListeners.
func (s *UnixSampler) Sample() (evs []events.Event, warnings []error, err error) {
	cands, warnings := s.NetNS.list()
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
	if len(inodes) == 0 {
		clear(s.owners)
		return evs, warnings, nil
	}

	pids, err := s.NetNS.PIDs()
	if err != nil {
		return evs, append(warnings, fmt.Errorf("find listeners' processes: %w", err)), nil
	}
	alive := make(map[uint32]bool, len(pids))
	for _, pid := range pids {
		alive[uint32(pid)] = true
	}
	// The owners still valid: of a listener still there, by a process
	// still listed.
	next := make(map[uint32]events.Process, len(inodes))
	want := map[uint32]struct{}{}
	for _, ino := range inodes {
		if p, ok := s.owners[ino]; ok && alive[p.PID] {
			next[ino] = p
			continue
		}
		want[ino] = struct{}{}
	}
	if len(want) > 0 {
		s.scans++
		owners, w := socketOwners("/proc", pids, want, 0)
		warnings = append(warnings, w...)
		r := newProcessReader("/proc", selfMountinfo)
		procs := map[uint32]events.Process{}
		for ino, pid := range owners {
			p, ok := procs[pid]
			if !ok {
				var err error
				if p, err = r.read(pid); err != nil {
					warnings = append(warnings, err)
				}
				procs[pid] = p
			}
			if p.PID != 0 {
				next[ino] = p
			}
		}
	}
	s.owners = next
	for i := range evs {
		if p, ok := next[inodes[i]]; ok {
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
