package events

// Conntrack is the payload of KindConntrackStats. (Entries per owning
// process come from the entry lifecycle kinds, ctentry.go, and the
// aggregator's entry table, internal/aggregate/ctentries.go.)
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
}
