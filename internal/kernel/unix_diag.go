package kernel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// A raw unix sock_diag dump. vishvananda/netlink v1.3.1's
// UnixSocketDiagInfo stops at the first message its callback does not
// like (measured: a seqpacket listener ended the dump, hiding every
// socket after it) and appends 4 stray bytes to names, so the few lines
// of netlink this needs are written here (linux/unix_diag.h).

const (
	sockDiagByFamily = 20 // SOCK_DIAG_BY_FAMILY
	udiagShowName    = 0x01
	udiagShowRQLen   = 0x10
	unixDiagName     = 0
	unixDiagRQLen    = 4
	unixDiagMsgLen   = 16 // struct unix_diag_msg
)

// unixDiagEntry is one socket of a unix sock_diag dump.
type unixDiagEntry struct {
	typ, state     uint8
	inode          uint32
	name           []byte // sun_path as the kernel has it; nil if unbound
	rqueue, wqueue uint32 // for a listener: queue and backlog limit
	hasQueue       bool
}

// dumpUnixListening dumps the listening unix sockets of namespace ns.
func dumpUnixListening(ns netns.NsHandle, ino uint32) ([]unixDiagEntry, error) {
	fd, err := diagSocketIn(ns, ino)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	tv := unix.NsecToTimeval(diagTimeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return nil, fmt.Errorf("set receive timeout: %w", err)
	}

	req := make([]byte, unix.SizeofNlMsghdr+24)
	ne := binary.NativeEndian
	ne.PutUint32(req[0:], uint32(len(req)))
	ne.PutUint16(req[4:], sockDiagByFamily)
	ne.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	ne.PutUint32(req[8:], 1) // seq
	b := req[unix.SizeofNlMsghdr:]
	b[0] = unix.AF_UNIX
	ne.PutUint32(b[4:], 1<<tcpListenState) // udiag_states
	ne.PutUint32(b[12:], udiagShowName|udiagShowRQLen)
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, fmt.Errorf("send unix sock_diag request: %w", err)
	}

	var out []unixDiagEntry
	buf := make([]byte, 64<<10)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return nil, fmt.Errorf("receive unix sock_diag dump: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return nil, fmt.Errorf("parse unix sock_diag dump: %w", err)
		}
		for _, m := range msgs {
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				if m.Header.Flags&unix.NLM_F_DUMP_INTR != 0 {
					return out, errDumpInterrupted
				}
				return out, nil
			case unix.NLMSG_ERROR:
				if len(m.Data) >= 4 {
					if e := int32(ne.Uint32(m.Data)); e != 0 {
						return nil, fmt.Errorf("unix sock_diag: %w", unix.Errno(-e))
					}
				}
				return out, nil
			case sockDiagByFamily:
				if e, ok := parseUnixDiag(m.Data); ok {
					out = append(out, e)
				}
			}
		}
	}
}

// errDumpInterrupted: the kernel flagged a sock_diag dump NLM_F_DUMP_INTR
// (sockets changed during it); callers retry.
var errDumpInterrupted = errors.New("sock_diag dump interrupted (sockets changed during it)")

// parseUnixDiag reads one struct unix_diag_msg and its attributes.
func parseUnixDiag(d []byte) (unixDiagEntry, bool) {
	if len(d) < unixDiagMsgLen || d[0] != unix.AF_UNIX {
		return unixDiagEntry{}, false
	}
	ne := binary.NativeEndian
	e := unixDiagEntry{typ: d[1], state: d[2], inode: ne.Uint32(d[4:])}
	for a := d[unixDiagMsgLen:]; len(a) >= 4; {
		l := int(ne.Uint16(a[0:]))
		if l < 4 || l > len(a) {
			break
		}
		payload := a[4:l]
		switch ne.Uint16(a[2:]) {
		case unixDiagName:
			e.name = append([]byte(nil), payload...)
		case unixDiagRQLen:
			if len(payload) >= 8 {
				e.rqueue, e.wqueue, e.hasQueue = ne.Uint32(payload[0:]), ne.Uint32(payload[4:]), true
			}
		}
		step := (l + 3) &^ 3
		if step > len(a) {
			break
		}
		a = a[step:]
	}
	return e, true
}

// diagSocketIn opens a NETLINK_SOCK_DIAG socket inside namespace ns (a
// socket stays in the namespace it was created in).
func diagSocketIn(ns netns.NsHandle, ino uint32) (int, error) {
	fd := -1
	err := inNetNS(int(ns), ino, func() error {
		var err error
		fd, err = unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
		return err
	})
	if err != nil {
		return -1, fmt.Errorf("open sock_diag socket in netns %d: %w", ino, err)
	}
	return fd, nil
}
