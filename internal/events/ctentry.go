package events

import "net/netip"

// ConntrackEntry is the payload of the conntrack entry lifecycle kinds
// (KindConntrackNew, KindConntrackDestroy, KindConntrackAllocFailed,
// KindConntrackResync, KindConntrackUpdate).
type ConntrackEntry struct {
	NetNS  uint32
	TimeNs uint64 // CLOCK_BOOTTIME ns of the event (or of the dump)
	// ID is the kernel's entry id (ctnetlink CTA_ID); 0 from sources that
	// do not know it. With NetNS and the original tuple it identifies an
	// entry.
	ID     uint32
	Family Family
	Proto  uint8 // IPPROTO_TCP (6), IPPROTO_UDP (17), IPPROTO_ICMP (1)...
	// Orig is the original direction's tuple (the side that sent the first
	// packet: for a local client, its own address and port first); Reply
	// the reply direction's (differs from Orig reversed under NAT).
	OrigSrc, OrigDst   netip.AddrPort
	ReplySrc, ReplyDst netip.AddrPort
	// TCPState is conntrack's own TCP state (TCP_CONNTRACK_*: 1 SYN_SENT,
	// 2 SYN_RECV, 3 ESTABLISHED, 4 FIN_WAIT, 5 CLOSE_WAIT, 6 LAST_ACK,
	// 7 TIME_WAIT, 8 CLOSE, 9 SYN_SENT2); 0 for other protocols or unknown.
	TCPState uint8
	// Timeout is the entry's remaining lifetime in seconds when known.
	Timeout uint32
	// Dump: this KindConntrackNew came from a resynchronising dump, not
	// from a live event.
	Dump       bool
	Generation uint64 // KindConntrackResync and its dump's entries
	Lost       uint64 // KindConntrackResync: events lost before it
	// DumpEntries is, for KindConntrackResync, how many KindConntrackNew
	// of its dump follow it: the aggregator replaces the namespace's set
	// once they are in, so entries the dump lists keep their owners. 0:
	// the set is emptied at once (an empty table, or a source that does
	// not count: its dump's entries then refill the set).
	DumpEntries uint64
}
