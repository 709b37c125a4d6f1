package events

// Counter events: a periodic snapshot of counters the kernel and the
// tracer keep themselves, recorded so that a post-mortem can compare what
// the tracer saw with what the kernel counted.
//
// Their kinds, KindKernelCounters and KindTracerCounters, are numbered in
// kind.go.

// MaxCounters bounds Counters.Values. A recording carries the values it
// has; names added later take new indices, never reuse old ones.
const MaxCounters = 32

// KernelCounterNames names the values of KindKernelCounters, in index
// order: nstat's names (Tcp*, TcpExt*) and sockstat's (Sockstat*).
// Sockstat "sockets: used", "TCP: inuse" and "tw" are per namespace;
// "orphan", "alloc" and "mem" (pages) are global in the kernel.
var KernelCounterNames = [...]string{
	"TcpActiveOpens", "TcpPassiveOpens", "TcpAttemptFails", "TcpEstabResets", "TcpCurrEstab",
	"TcpInSegs", "TcpOutSegs", "TcpRetransSegs", "TcpInErrs", "TcpOutRsts",
	"TcpExtListenOverflows", "TcpExtListenDrops", "TcpExtTCPTimeWaitOverflow",
	"TcpExtTCPAbortOnClose", "TcpExtTCPAbortOnData", "TcpExtTCPAbortOnTimeout",
	"TcpExtTCPAbortOnMemory", "TcpExtTCPAbortOnLinger", "TcpExtTW", "TcpExtTCPSynRetrans",
	"TcpExtSyncookiesSent", "TcpExtTCPReqQFullDrop", "TcpExtTCPBacklogDrop",
	"SockstatSocketsUsed", "SockstatTCPInuse", "SockstatTCPOrphan", "SockstatTCPTw",
	"SockstatTCPAlloc", "SockstatTCPMem",
}

// TracerCounterNames names the values of KindTracerCounters.
var TracerCounterNames = [...]string{
	// "Lost": records the kernel could not write (ring buffer full).
	"Lost",
	// Records read and records that failed to decode (Object "").
	"Records", "Undecodable",
	// Sampler batches waiting for the event loop (Object "", a gauge).
	"BatchesWaiting",
	// "RecursionMisses": state changes never seen: runs of the object's
	// programs the kernel skipped because the program was already running
	// on the CPU (their recursion_misses), less those a rescuer program
	// handled instead (Rescued). Recordings made before the rescuer
	// count every skipped run here.
	"RecursionMisses",
	// "Rescued": skipped runs of the state program that its rescuer
	// handled (nothing lost); "RescuerMisses": the rescuer's own skipped
	// runs, which lose nothing by themselves (internal/probe/recursion.go).
	"Rescued", "RescuerMisses",
	// "UnseenCloses": connections whose close reached no program at all,
	// with no skipped run counted (state changes in a softirq over some
	// tasks of a sandboxed host: docs/notes/residual-loss.md), found when
	// a new socket opened at the same address: each a record lost.
	"UnseenCloses",
}

// KernelGauges are the KernelCounterNames that are levels, not counts:
// their delta over a recording is a change, not a number of events.
var KernelGauges = map[string]bool{
	"TcpCurrEstab": true, "SockstatSocketsUsed": true, "SockstatTCPInuse": true, "SockstatTCPOrphan": true,
	"SockstatTCPTw": true, "SockstatTCPAlloc": true, "SockstatTCPMem": true, "BatchesWaiting": true,
}

// Counters is the payload of KindKernelCounters and KindTracerCounters.
type Counters struct {
	NetNS  uint32 // KindKernelCounters: the namespace read
	TimeNs uint64 // when read, CLOCK_BOOTTIME ns
	Object string // KindTracerCounters: the BPF object, "" for the reader's totals
	Values [MaxCounters]uint64
}

// CounterNames returns the names of k's values (nil for other kinds).
func CounterNames(k Kind) []string {
	switch k {
	case KindKernelCounters:
		return KernelCounterNames[:]
	case KindTracerCounters:
		return TracerCounterNames[:]
	}
	return nil
}
