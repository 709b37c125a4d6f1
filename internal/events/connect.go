package events

import (
	"bytes"
	"net/netip"
	"strconv"
)

// Errnos the connect() path reports and the rules look for (Linux numbers,
// the same on every architecture the tracer builds for).
const (
	ErrnoENOENT        uint8 = 2
	ErrnoEAGAIN        uint8 = 11
	ErrnoEADDRNOTAVAIL uint8 = 99
	ErrnoETIMEDOUT     uint8 = 110
	ErrnoECONNREFUSED  uint8 = 111
	ErrnoEINPROGRESS   uint8 = 115
)

// SockType is a socket's type as the kernel numbers it (SOCK_STREAM...).
type SockType uint8

// Socket types connect() is traced for.
const (
	SockUnknown   SockType = 0
	SockStream    SockType = 1
	SockDgram     SockType = 2
	SockSeqpacket SockType = 5
)

// String returns "stream", "dgram", "seqpacket" or "unknown".
func (t SockType) String() string {
	switch t {
	case SockStream:
		return "stream"
	case SockDgram:
		return "dgram"
	case SockSeqpacket:
		return "seqpacket"
	}
	return "unknown"
}

// UnixPathMax is the size of sun_path.
const UnixPathMax = 108

// UnixPath is a Unix socket address as a fixed-size value, so that it can
// be a map key and be copied without allocating. An abstract name starts
// with a NUL byte; its remaining bytes are the name (NULs included).
type UnixPath struct {
	Bytes [UnixPathMax]byte
	Len   uint8
}

// Set fills p from a sun_path of n valid bytes: a pathname ends at
// its first NUL, an abstract name (first byte NUL) uses all n bytes.
func (p *UnixPath) Set(sunPath []byte) {
	n := len(sunPath)
	if n > UnixPathMax {
		n = UnixPathMax
	}
	if n > 0 && sunPath[0] != 0 {
		if i := bytes.IndexByte(sunPath[:n], 0); i >= 0 {
			n = i
		}
	}
	p.Bytes = [UnixPathMax]byte{}
	copy(p.Bytes[:], sunPath[:n])
	p.Len = uint8(n)
}

// Abstract reports an abstract socket name (not in the filesystem, and
// scoped to a network namespace).
func (p *UnixPath) Abstract() bool { return p.Len > 0 && p.Bytes[0] == 0 }

// AppendTo appends the path as `ss` shows it: abstract names with a
// leading '@' in place of the NUL byte.
func (p *UnixPath) AppendTo(b []byte) []byte {
	if p.Abstract() {
		return append(append(b, '@'), p.Bytes[1:p.Len]...)
	}
	return append(b, p.Bytes[:p.Len]...)
}

// String returns the path as AppendTo renders it.
func (p *UnixPath) String() string { return string(p.AppendTo(nil)) }

// Connect describes one connect() call (KindConnect), or one listening
// Unix socket (KindUnixListener: Owner is the listener, Path its address,
// Backlog and Queue set).
type Connect struct {
	Owner    Process // the caller (Source OwnerConnect), or the listener
	NetNS    uint32  // the socket's network namespace inode, 0 if unknown
	Family   Family  // of the address passed: FamilyUnix, FamilyIPv4, FamilyIPv6, or another AF_ number
	SockType SockType
	Remote   netip.AddrPort // IPv4/IPv6 destination
	Path     UnixPath       // AF_UNIX destination
	// Errno is the call's result: 0 on success, ErrnoEINPROGRESS for a
	// non-blocking connect whose outcome a later KindConnClosed tells.
	Errno uint8
	// Count is how many calls this event stands for: 1 for a call sent
	// as a record, the calls since the last event for Unix connects,
	// which the kernel counts per (process, path, result).
	Count uint64
	// StartNs and EndNs (CLOCK_BOOTTIME ns) bracket the call; for
	// counted calls, the first call of this key ever and the last one.
	// StartNs is 0 for a call sent as a record when its start was not
	// taken (NoLatency).
	StartNs      uint64
	EndNs        uint64
	LatencySumNs uint64 // total time spent in these Count calls
	// NoLatency: the calls' durations were not measured (the connect()
	// entry hook is off, the default: `--connect-latency`; datagram sends
	// never have one). LatencySumNs is 0 and means nothing then.
	NoLatency   bool
	NonBlocking bool // the socket was O_NONBLOCK (for counted calls: the first one's)
	AddrFault   bool // the address could not be read from the caller's memory
	// PeerAddr: a datagram send without an address, on a connected
	// socket; Path is the peer's bound address (empty if the peer was
	// gone by then: its ECONNREFUSED clears the connection).
	PeerAddr bool
	// Listener samples (KindUnixListener) only.
	Backlog   uint32 // the listen() backlog in effect (already capped by net.core.somaxconn)
	Queue     uint32 // connections waiting to be accepted
	Somaxconn uint32 // net.core.somaxconn in the listener's namespace
}

// LatencyNs returns how long the call took (the mean, for counted calls).
func (c *Connect) LatencyNs() uint64 {
	if c.Count == 0 {
		return 0
	}
	return c.LatencySumNs / c.Count
}

// Failed reports a call that failed at once (not EINPROGRESS).
func (c *Connect) Failed() bool { return c.Errno != 0 && c.Errno != ErrnoEINPROGRESS }

// AppendDestination appends where the call connected to: "10.0.0.2:80",
// "[::1]:80", a Unix path, "@abstract", or "family N" for other families.
func (c *Connect) AppendDestination(b []byte) []byte {
	switch c.Family {
	case FamilyUnix:
		return c.Path.AppendTo(b)
	case FamilyIPv4, FamilyIPv6:
		return c.Remote.AppendTo(b)
	}
	return strconv.AppendUint(append(b, "family "...), uint64(c.Family), 10)
}

// Destination returns AppendDestination as a string (allocates).
func (c *Connect) Destination() string { return string(c.AppendDestination(nil)) }

// MatchConnect reports whether a connect() event passes the filter: the
// caller's pid, comm, cgroup and namespace. Port and family filters apply
// to IPv4/IPv6 destinations only (a port filter drops Unix connects).
func (f *Filter) MatchConnect(c *Connect) bool {
	if f.NetNS != 0 && c.NetNS != f.NetNS {
		return false
	}
	if f.Family != 0 && c.Family != f.Family {
		return false
	}
	if f.Port != 0 && c.Remote.Port() != f.Port {
		return false
	}
	return f.matchOwner(&c.Owner)
}
