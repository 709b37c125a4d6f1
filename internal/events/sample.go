package events

// Sampler events: what the tracer reads from the kernel's own tables on a
// tick rather than receives per connection. A sampler sends one round at a
// time: the items, then a Done event, so that the aggregator can replace
// its view of "now" as a whole. Recorded and replayed like every other
// event, they give the same numbers again.
//
// Their Kind values are numbered apart from the per-connection kinds so
// that recordings keep their meaning whatever other kinds are added.
const (
	// KindSockOpen reports one socket open right now, read from the
	// kernel's table of live connections (the BPF socks map). Conn holds
	// its owner (if the kernel knows it), tuple, role and open time;
	// Conn.LastState is its current state. Conn.Local's port is 0 for a
	// socket in SYN_SENT (the port is bound after the transition).
	// Sample.TimeNs is when the round was read.
	KindSockOpen Kind = 32 + iota
	// KindSockSampleDone ends a round of KindSockOpen events.
	KindSockSampleDone
	// KindTimeWait reports one TIME_WAIT socket found by a sock_diag dump
	// of every network namespace: Conn holds its namespace and tuple,
	// Sample.ExpiresNs the time left on its timer.
	KindTimeWait
	// KindTimeWaitDone ends a dump of KindTimeWait events. Sample.TimeNs
	// is when the dump started; the dump is complete for the namespaces
	// it covered.
	KindTimeWaitDone
	// KindPortRange reports a network namespace's
	// net.ipv4.ip_local_port_range (Conn.NetNS, Sample.PortLow/PortHigh).
	KindPortRange
)

// sampleKindString names the sampler kinds (see Kind.String).
func sampleKindString(k Kind) string {
	switch k {
	case KindSockOpen:
		return "sock_open"
	case KindSockSampleDone:
		return "sock_sample_done"
	case KindTimeWait:
		return "time_wait"
	case KindTimeWaitDone:
		return "time_wait_done"
	case KindPortRange:
		return "port_range"
	}
	return counterKindString(k)
}

// Sample carries the fields of sampler events that a Conn has no room for.
type Sample struct {
	// TimeNs is when the sampler read the kernel, CLOCK_BOOTTIME ns, the
	// clock of Conn.OpenNs and Conn.CloseNs.
	TimeNs uint64
	// ExpiresNs is, for KindTimeWait, how long the socket stays in
	// TIME_WAIT from TimeNs on.
	ExpiresNs uint64
	// PortLow and PortHigh bound the ephemeral ports (KindPortRange).
	PortLow, PortHigh uint16
}
