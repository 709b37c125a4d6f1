package events

import (
	"bytes"
	"net/netip"
)

// Family is an address family as the kernel numbers it (AF_INET, AF_INET6).
type Family uint8

const (
	// FamilyIPv4 is AF_INET. IPv4-mapped IPv6 connections are reported as IPv4.
	FamilyIPv4 Family = 2
	// FamilyIPv6 is AF_INET6.
	FamilyIPv6 Family = 10
	// FamilyUnix is AF_UNIX (connect() events only).
	FamilyUnix Family = 1
)

// String returns "ipv4", "ipv6" or "unknown".
func (f Family) String() string {
	switch f {
	case FamilyIPv4:
		return "ipv4"
	case FamilyIPv6:
		return "ipv6"
	case FamilyUnix:
		return "unix"
	}
	return "unknown"
}

// Role says which side opened the connection.
type Role uint8

const (
	// RoleUnknown: the connection was open before tracing started.
	RoleUnknown Role = iota
	// RoleActive: this side called connect() (SYN_SENT).
	RoleActive
	// RolePassive: this side accepted it from a listener (SYN_RECV).
	RolePassive
)

// String returns "active", "passive" or "unknown".
func (r Role) String() string {
	switch r {
	case RoleActive:
		return "active"
	case RolePassive:
		return "passive"
	}
	return "unknown"
}

// EndState is how a connection ended, as seen from this side.
type EndState uint8

const (
	// EndUnknown: not classified (should not appear on a closed connection).
	EndUnknown EndState = iota
	// EndConnectFailed: SYN_SENT -> CLOSE; Conn.Error says why
	// (ECONNREFUSED, ETIMEDOUT, EHOSTUNREACH...).
	EndConnectFailed
	// EndReset: aborted by a RST sent or received, or by a timeout after
	// the handshake. Conn.Error holds the socket error, if any.
	EndReset
	// EndTimeWait: this side closed first, the peer closed too, and a
	// timewait socket took the connection over (FIN_WAIT2 or CLOSING ->
	// CLOSE after the peer's FIN, no error).
	EndTimeWait
	// EndCloseWait: the peer closed first; this side passed through
	// CLOSE_WAIT and LAST_ACK and closed normally.
	EndCloseWait
	// EndClosed: any other orderly close (a LAST_ACK whose FIN was never
	// acked, a socket closed with TCP_LINGER2 < 0 in FIN_WAIT2).
	EndClosed
	// EndFinWait2: this side closed first (the application closed its
	// socket) and the peer had not closed yet: the kernel handed the
	// connection to a timewait socket in substate FIN_WAIT2, which waits
	// for the peer's FIN (up to tcp_fin_timeout) and then turns TIME_WAIT.
	// `ss` shows it as FIN-WAIT-2 meanwhile.
	EndFinWait2
)

// NumEndStates sizes arrays indexed by EndState.
const NumEndStates = int(EndFinWait2) + 1

// String returns the stable name used in output.
func (e EndState) String() string {
	switch e {
	case EndConnectFailed:
		return "connect_failed"
	case EndReset:
		return "reset"
	case EndTimeWait:
		return "time_wait"
	case EndCloseWait:
		return "close_wait"
	case EndClosed:
		return "closed"
	case EndFinWait2:
		return "fin_wait2"
	}
	return "unknown"
}

// Side names one end of a connection.
type Side uint8

const (
	// SideNone: nobody closed first (a failed connect) or it is unknown.
	SideNone Side = iota
	// SideLocal: this host's socket closed first (sent FIN or RST first).
	SideLocal
	// SideRemote: the peer closed first.
	SideRemote
)

// String returns "local", "remote" or "none".
func (s Side) String() string {
	switch s {
	case SideLocal:
		return "local"
	case SideRemote:
		return "remote"
	}
	return "none"
}

// TCPState is a kernel TCP state (include/net/tcp_states.h, a stable ABI).
type TCPState uint8

// TCP states as numbered by the kernel.
const (
	TCPEstablished TCPState = 1 + iota
	TCPSynSent
	TCPSynRecv
	TCPFinWait1
	TCPFinWait2
	TCPTimeWait
	TCPClose
	TCPCloseWait
	TCPLastAck
	TCPListen
	TCPClosing
	TCPNewSynRecv
)

var tcpStateNames = [...]string{
	"UNKNOWN", "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2",
	"TIME_WAIT", "CLOSE", "CLOSE_WAIT", "LAST_ACK", "LISTEN", "CLOSING", "NEW_SYN_RECV",
}

// String returns the kernel's name for the state, e.g. "FIN_WAIT2".
func (s TCPState) String() string {
	if int(s) < len(tcpStateNames) {
		return tcpStateNames[s]
	}
	return "UNKNOWN"
}

// OwnerSource says how the tracer learnt who owns a connection.
type OwnerSource uint8

const (
	// OwnerUnknown: no process could be attributed.
	OwnerUnknown OwnerSource = iota
	// OwnerConnect: captured in the kernel when the process called connect().
	OwnerConnect
	// OwnerAccept: captured in the kernel when the process accepted it.
	OwnerAccept
	// OwnerListener: never accepted; attributed to the listening process.
	OwnerListener
	// OwnerSnapshot: the connection predates tracing; its owner was found
	// through /proc/PID/fd at start-up.
	OwnerSnapshot
)

// String returns the stable name used in output.
func (o OwnerSource) String() string {
	switch o {
	case OwnerConnect:
		return "connect"
	case OwnerAccept:
		return "accept"
	case OwnerListener:
		return "listener"
	case OwnerSnapshot:
		return "snapshot"
	case OwnerSocket:
		return "socket"
	}
	return "unknown"
}

// Process identifies the owner of a connection. PID reuse never merges two
// processes because StartNs (the task's start, CLOCK_BOOTTIME) is part of
// the identity.
type Process struct {
	PID      uint32 // thread group id, what users call the pid
	TID      uint32 // the thread that connected or accepted
	Comm     [16]byte
	CgroupID uint64 // cgroup v2 id (the cgroup directory's inode number)
	StartNs  uint64 // task start time, ns since boot
	Source   OwnerSource
	// CgroupPath is set only by samplers that read /proc (cold path); the
	// kernel path leaves it empty and filters by CgroupID instead.
	CgroupPath string
}

// Known reports whether a process was attributed.
func (p *Process) Known() bool { return p.Source != OwnerUnknown }

// CommBytes returns the command name without its NUL padding.
func (p *Process) CommBytes() []byte {
	if i := bytes.IndexByte(p.Comm[:], 0); i >= 0 {
		return p.Comm[:i]
	}
	return p.Comm[:]
}

// SetComm copies s into Comm, truncating like the kernel does (15 bytes).
func (p *Process) SetComm(s string) {
	p.Comm = [16]byte{}
	copy(p.Comm[:15], s)
}

// Conn describes one TCP connection as seen from one socket.
type Conn struct {
	Cookie    uint64 // kernel socket cookie; 0 when the kernel never generated one
	NetNS     uint32 // network namespace inode number
	Family    Family
	Local     netip.AddrPort
	Remote    netip.AddrPort
	Role      Role
	Owner     Process
	OpenNs    uint64 // CLOCK_BOOTTIME ns of SYN_SENT/SYN_RECV; 0 if opened before tracing
	CloseNs   uint64 // CLOCK_BOOTTIME ns of the transition to CLOSE
	TxBytes   uint64 // payload bytes sent and acknowledged (SYN and FIN excluded)
	RxBytes   uint64 // payload bytes received (SYN and FIN excluded)
	EndState  EndState
	ClosedBy  Side
	LastState TCPState // the state the socket left for CLOSE (or its current state for KindConnExisting)
	Error     uint8    // socket error (errno) at close, 0 if none
	SeenOpen  bool     // the tracer saw the handshake, so OpenNs and byte counts are exact
	// EstablishedNs is when the socket reached ESTABLISHED (CLOCK_BOOTTIME
	// ns), 0 if the tracer did not see it: minus OpenNs, the connect
	// (active) or handshake (passive) latency.
	EstablishedNs uint64
}

// LifetimeNs returns how long the connection lived, or 0 when it was opened
// before tracing started (OpenNs unknown).
func (c *Conn) LifetimeNs() uint64 {
	if c.OpenNs == 0 || c.CloseNs < c.OpenNs {
		return 0
	}
	return c.CloseNs - c.OpenNs
}

// Event is one thing the kernel or a sampler reported. It is a value type
// with no pointers on the hot path: decoders fill a reused Event in place.
type Event struct {
	Kind Kind
	Conn Conn
	// Connect is set for KindConnect, KindUnixListener and
	// KindUnixDgramSend.
	Connect Connect
	// Drop: KindDrop, KindDropCount, KindListenOverflow.
	Drop Drop
	// Conntrack: KindConntrackStats.
	Conntrack Conntrack
	// ConntrackEntry: KindConntrackNew, KindConntrackDestroy,
	// KindConntrackAllocFailed, KindConntrackResync (ctentry.go).
	ConntrackEntry ConntrackEntry
	// Sample holds the extra fields of sampler events (sample.go).
	Sample Sample
	// Counters: KindKernelCounters, KindTracerCounters (kcounters.go).
	Counters Counters
	// Cgroup: KindCgroupIdentity (identity.go).
	Cgroup CgroupRecord
	// NetNSName: KindNetNSName (identity.go).
	NetNSName NetNSRecord
}

// errnoNames covers the socket errors a connection can end with. Other values
// print as "errno N".
var errnoNames = map[uint8]string{
	1: "EPERM", 2: "ENOENT", 4: "EINTR", 11: "EAGAIN", 13: "EACCES", 22: "EINVAL",
	32: "EPIPE", 99: "EADDRNOTAVAIL", 100: "ENETDOWN", 101: "ENETUNREACH",
	103: "ECONNABORTED", 104: "ECONNRESET", 110: "ETIMEDOUT", 111: "ECONNREFUSED",
	112: "EHOSTDOWN", 113: "EHOSTUNREACH", 115: "EINPROGRESS", 71: "EPROTO",
	9: "EBADF", 88: "ENOTSOCK", 91: "EPROTOTYPE", 97: "EAFNOSUPPORT", 106: "EISCONN", 114: "EALREADY",
}

// ErrnoName returns the symbolic name of a socket error ("ECONNREFUSED"),
// "" for 0, and "errno N" for values outside the table.
func ErrnoName(e uint8) string {
	if e == 0 {
		return ""
	}
	if n, ok := errnoNames[e]; ok {
		return n
	}
	return "errno " + itoa(int(e))
}

func itoa(v int) string {
	var b [4]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + v%10)
		v /= 10
		if v == 0 {
			break
		}
	}
	return string(b[i:])
}

// NetNS is the network namespace (inode number) an event is about,
// whichever payload holds it; 0 when it is about none or every namespace
// (the ends of sampler rounds). Filters by namespace use it.
func (ev *Event) NetNS() uint32 {
	switch ev.Kind {
	case KindConnect, KindUnixListener, KindUnixDgramSend:
		return ev.Connect.NetNS
	case KindDrop, KindDropCount, KindListenOverflow:
		return ev.Drop.NetNS
	case KindConntrackStats:
		return ev.Conntrack.NetNS
	case KindConntrackNew, KindConntrackUpdate, KindConntrackDestroy, KindConntrackAllocFailed, KindConntrackResync:
		return ev.ConntrackEntry.NetNS
	case KindKernelCounters, KindTracerCounters:
		return ev.Counters.NetNS
	case KindNetNSName:
		return ev.NetNSName.Inode
	}
	return ev.Conn.NetNS
}
