package export

import (
	"strconv"
	"time"

	"github.com/conntracer/conntracer/internal/events"
)

// appendConnectText prints a failed connect() in the connection columns:
// no local address, the destination as remote, "connect" as role, the
// call's latency as lifetime ("-" when not measured), and the errno as end, with the number of
// calls when the kernel counted several ("x312").
func (s *Stream) appendConnectText(b []byte, c *events.Connect) []byte {
	b = s.clocks.appendClock(b, s.clock(c.EndNs))
	b = append(b, ' ')
	b = s.appendTextOwner(b, events.KindConnect, &c.Owner, true)
	start := len(b)
	b = append(b, '-')
	b = pad(b, start, 40)
	start = len(b)
	b = appendPrintableDest(b, c)
	b = pad(b, start, 40)
	start = len(b)
	b = append(b, "connect"...)
	b = pad(b, start, 8)
	start = len(b)
	if c.NoLatency {
		b = append(b, '-')
	} else {
		b = appendDuration(b, c.LatencyNs())
	}
	b = pad(b, start, 11)
	start = len(b)
	b = append(b, '-')
	b = pad(b, start, 11)
	start = len(b)
	b = append(b, '-')
	b = pad(b, start, 11)
	start = len(b)
	b = append(b, "connect_failed ("...)
	b = append(b, events.ErrnoName(c.Errno)...)
	b = append(b, ')')
	if c.Count > 1 {
		b = append(b, " x"...)
		b = strconv.AppendUint(b, c.Count, 10)
	}
	b = s.appendTextWorkload(b, start, c.Owner.CgroupID, c.NetNS)
	return append(b, '\n')
}

// appendPrintableDest renders the destination with control bytes (an
// abstract name may hold NULs) replaced.
func appendPrintableDest(b []byte, c *events.Connect) []byte {
	start := len(b)
	b = c.AppendDestination(b)
	for i := start; i < len(b); i++ {
		if b[i] < 0x20 || b[i] == 0x7f {
			b[i] = '?'
		}
	}
	return b
}

// appendConnectJSON: field names are part of the interface (README).
// count is how many calls the line stands for: the kernel counts repeated
// Unix connect failures per (process, path, errno) and they are printed
// once per read of its table.
func (s *Stream) appendConnectJSON(b []byte, c *events.Connect) []byte {
	b = append(b, `{"time":"`...)
	b = s.clock(c.EndNs).UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","type":"connect_failed","pid":`...)
	b = strconv.AppendUint(b, uint64(c.Owner.PID), 10)
	b = append(b, `,"tid":`...)
	b = strconv.AppendUint(b, uint64(c.Owner.TID), 10)
	b = append(b, `,"comm":`...)
	b = appendJSONString(b, c.Owner.CommBytes())
	b = append(b, `,"cgroup_id":`...)
	b = strconv.AppendUint(b, c.Owner.CgroupID, 10)
	b = append(b, `,"netns":`...)
	b = strconv.AppendUint(b, uint64(c.NetNS), 10)
	b = s.appendJSONNetNSName(b, c.NetNS)
	b = append(b, `,"family":"`...)
	b = append(b, c.Family.String()...)
	b = append(b, `","sock_type":"`...)
	b = append(b, c.SockType.String()...)
	b = append(b, `","destination":`...)
	start := len(b)
	b = c.AppendDestination(b)
	// Quote in place: render, then escape from a copy kept in the
	// stream's buffer tail (no allocation once it has grown).
	dest := append(s.scratch[:0], b[start:]...)
	s.scratch = dest
	b = appendJSONString(b[:start], dest)
	if c.Family == events.FamilyIPv4 || c.Family == events.FamilyIPv6 {
		b = append(b, `,"remote_addr":"`...)
		b = s.addrs.appendAddr(b, c.Remote.Addr())
		b = append(b, `","remote_port":`...)
		b = strconv.AppendUint(b, uint64(c.Remote.Port()), 10)
	}
	b = append(b, `,"errno":"`...)
	b = append(b, events.ErrnoName(c.Errno)...)
	b = append(b, `","count":`...)
	b = strconv.AppendUint(b, c.Count, 10)
	b = append(b, `,"latency_seconds":`...)
	if c.NoLatency {
		b = append(b, "null"...)
	} else {
		b = appendSeconds(b, c.LatencyNs())
	}
	b = append(b, `,"nonblocking":`...)
	b = strconv.AppendBool(b, c.NonBlocking)
	return append(b, "}\n"...)
}

// routineUnixPaths are the sockets of optional local services that
// programs try and carry on without: glibc's name service cache (every
// getpwnam, getaddrinfo... tries it first when nscd is not running) and
// syslog's /dev/log. A refused connect to them means the service is not
// running, which is how most hosts are configured.
var routineUnixPaths = [...]string{
	"/var/run/nscd/socket", "/run/nscd/socket", "/dev/log",
}

// RoutineConnectFailure reports a failed connect() that is how programs
// probe for an optional local service, not a sign of trouble, and so is
// kept out of the default stream (counted, and printed with
// --connect-routine): a Unix connect failing with ENOENT (no socket file
// at that path: the service is not installed or not running), or with
// ECONNREFUSED (a socket file nobody listens on) to a path of
// routineUnixPaths. What is kept: every TCP failure, a Unix backlog
// overflow (EAGAIN, the saturated upstream of FIELD-NOTES §4), and a
// refused connect to any other path (a server that died and left its
// socket file, e.g. php-fpm behind nginx), EACCES and the rest.
func RoutineConnectFailure(c *events.Connect) bool {
	if c.Family != events.FamilyUnix || !c.Failed() {
		return false
	}
	switch c.Errno {
	case events.ErrnoENOENT:
		return true
	case events.ErrnoECONNREFUSED:
		p := c.Path.Bytes[:c.Path.Len]
		for _, r := range routineUnixPaths {
			if string(p) == r { // no allocation: compared in place
				return true
			}
		}
	}
	return false
}
