package events

import "net/netip"

// PortInfo is what the kernel says about ephemeral ports in a namespace:
// the range (net.ipv4.ip_local_port_range) and how many TCP sockets, in
// any state (TIME_WAIT included), use a local port inside it towards each
// destination. internal/kernel reads it (PortInfoIn) and the caller hands
// the lookup to the aggregator, whose port_exhaustion finding cites it: it
// is read on demand, not an event, and never recorded.
type PortInfo struct {
	Low, High uint16
	InUse     map[netip.AddrPort]int
}
