package events

// Sampler events: what the tracer reads from the kernel's own tables on a
// tick rather than receives per connection. A sampler sends one round at a
// time: the items, then a Done event, so that the aggregator can replace
// its view of "now" as a whole. Recorded and replayed like every other
// event, they give the same numbers again.
//
// Their kinds (KindSockOpen, KindSockSampleDone, KindTimeWait,
// KindTimeWaitDone, KindPortRange) are numbered in kind.go.

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
