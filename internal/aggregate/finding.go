package aggregate

import "time"

// Finding is a rule's verdict over the aggregate: a process (and where it
// applies a remote endpoint or socket path) and a cause, with the numbers
// that prove it and what operators usually do about it. Findings are what
// `tracer top`, the JSON snapshot, /metrics and reports show.
type Finding struct {
	Kind    string // stable identifier, e.g. "pool_leak", "unix_backlog_overflow"
	PID     uint32
	Comm    string
	Remote  string // "10.0.0.2:6379", or "" when the finding is not about one endpoint
	Path    string // Unix socket path, for findings about a Unix socket
	NetNS   uint32
	Since   time.Time // first seen
	Last    time.Time // last seen (still true)
	Message string    // one line: what is wrong, in the operator's words
	Remedy  string    // the usual fix
	// Evidence holds the numbers behind the verdict, by stable name
	// ("established": 812, "growth_per_min": 40...).
	Evidence map[string]float64
}
