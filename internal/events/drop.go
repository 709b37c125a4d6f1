package events

import "net/netip"

// OwnerSocket: the owner of the socket a dropped packet belonged to (its
// connect() or accept() owner, as tcplife recorded it).
const OwnerSocket OwnerSource = 40

// Drop is the payload of KindDrop, KindDropCount and KindListenOverflow.
type Drop struct {
	Reason     uint32 // enum skb_drop_reason as numbered by the running kernel
	ReasonName string // its name without the SKB_DROP_REASON_ prefix, from kernel BTF
	Location   uint64 // kernel address that freed the packet
	Symbol     string // Location symbolized from /proc/kallsyms ("nf_hook_slow+0x8d")
	NetNS      uint32
	Ifindex    uint32
	Family     Family // 0 when the packet was not IP
	L4Proto    uint8  // IPPROTO_TCP (6), IPPROTO_UDP (17)...; 0 unknown
	TCPFlags   uint8
	HasPorts   bool
	Src, Dst   netip.AddrPort // from the packet's headers (ports 0 without HasPorts)
	Owner      Process        // the socket's or listener's process, if known
	// NoCT: a NETFILTER_DROP of a packet without a conntrack entry, the
	// signature of a table-full drop (confirmed by the namespace's
	// conntrack drop statistic).
	NoCT   bool
	TimeNs uint64 // CLOCK_BOOTTIME ns of the drop (KindDrop) or of the sample
	Count  uint64 // KindDropCount: cumulative; KindListenOverflow: delta

	// KindListenOverflow only: the listener's queue as sock_diag showed it.
	QueueLen  uint32 // connections waiting in the accept queue
	Backlog   uint32 // the listener's backlog (min of listen() argument and somaxconn)
	Somaxconn uint32 // net.core.somaxconn of the namespace
}

// TCP header flags as they appear in Drop.TCPFlags.
const (
	TCPFlagFIN = 0x01
	TCPFlagSYN = 0x02
	TCPFlagRST = 0x04
	TCPFlagACK = 0x10
)

// ProtoName returns "tcp", "udp", "icmp" or "" for the protocol numbers
// drops usually carry.
func ProtoName(p uint8) string {
	switch p {
	case 6:
		return "tcp"
	case 17:
		return "udp"
	case 1:
		return "icmp"
	case 58:
		return "icmpv6"
	}
	return ""
}
