package events

// Conntrack is the payload of KindConntrackStats and KindConntrackOwner.
type Conntrack struct {
	NetNS  uint32
	TimeNs uint64 // CLOCK_BOOTTIME ns of the sample

	// KindConntrackStats: the namespace's table and the kernel's per-CPU
	// statistics summed over CPUs (cumulative since the namespace's
	// conntrack started; the aggregator takes deltas).
	Entries       uint64 // nf_conntrack_count of the namespace
	Max           uint64 // nf_conntrack_max (global)
	Found         uint64
	Invalid       uint64
	Insert        uint64
	InsertFailed  uint64
	Drop          uint64 // packets dropped because the table was full
	EarlyDrop     uint64 // entries evicted early to make room
	Error         uint64
	SearchRestart uint64
	// Timeouts that keep entries alive, in seconds (0 when unreadable).
	TimeoutEstablished uint32
	TimeoutTimeWait    uint32
	TimeoutCloseWait   uint32
	TimeoutSynSent     uint32

	// KindConntrackOwner: Entries is the number of entries of Owner's
	// flows in State (0 for non-TCP entries) as of dump Generation.
	Owner      Process
	Proto      uint8
	State      TCPState
	Generation uint64
}
