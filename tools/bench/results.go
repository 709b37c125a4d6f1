package main

import "time"

// Results is everything one `make bench` measured: the input of the report
// (report.go), kept apart from the measuring so that the rendering can be
// tested on fixed numbers and re-rendered from a saved JSON file.
type Results struct {
	Quick   bool      `json:"quick"`   // BENCH_QUICK=1: small counts, not for conclusions
	Started time.Time `json:"started"` // UTC
	Elapsed float64   `json:"elapsed_seconds"`
	// SectionSeconds is how long each section took.
	SectionSeconds map[string]float64 `json:"section_seconds,omitempty"`
	// IdleSeconds is how long `tracer serve` idled before its memory
	// was read.
	IdleSeconds float64 `json:"idle_seconds"`
	Machine     Machine `json:"machine"`
	// Commands are the command lines run, in order, for the report.
	Commands []string `json:"commands"`

	Micro []MicroResult  `json:"micro"`
	Churn []ChurnSummary `json:"churn"`
	// Nginx is the web-server workload (nginx.go): Clients are wrk's
	// connections, Conns the requests of the median baseline run.
	Nginx  *ChurnSummary  `json:"nginx,omitempty"`
	Unix   *UnixSummary   `json:"unix,omitempty"`
	Storm  *StormSummary  `json:"storm,omitempty"`
	Memory *MemorySummary `json:"memory,omitempty"`
	// Errors are sections that failed, by name: the report says so
	// instead of leaving a blank.
	Errors map[string]string `json:"errors,omitempty"`
}

// Machine is what the numbers were measured on.
type Machine struct {
	Kernel    string `json:"kernel"`     // uname -r
	CPU       string `json:"cpu"`        // model name
	CPUs      int    `json:"cpus"`       // online
	MemoryMiB int    `json:"memory_mib"` // MemTotal
	Go        string `json:"go"`
	Commit    string `json:"commit"` // git describe of the tree measured
	Bpftrace  string `json:"bpftrace"`
	// Load is /proc/loadavg at the start: a shared machine shows it.
	Load string `json:"load"`
	// Sockets is /proc/net/sockstat's TCP line at the start: the
	// tracer's start-up cost grows with what is open.
	Sockets string `json:"sockets"`
}

// MicroResult is one `go test -bench` line.
type MicroResult struct {
	Package string `json:"package"`
	Name    string `json:"name"` // without "Benchmark" and the -N suffix
	Iters   int64  `json:"iters"`
	// Metrics by unit as go test prints them: "ns/op", "B/op",
	// "allocs/op" and whatever the benchmark reports.
	Metrics map[string]float64 `json:"metrics"`
}

// Variant names of the churn workload.
const (
	VariantBaseline = "baseline"
	VariantServe    = "serve"
	VariantRecord   = "serve+record"
	VariantBpftrace = "bpftrace"
	// VariantStream is `tracer --output json` writing its stream to a
	// file: the event stream without the aggregator.
	VariantStream = "stream"
	// VariantTcplife is libbpf-tools' tcplife (Debian's libbpf-tools),
	// the peer operators run: a line per closed connection.
	VariantTcplife = "tcplife"
)

// Variants in the order of the report.
var Variants = []string{VariantBaseline, VariantServe, VariantRecord, VariantStream, VariantBpftrace, VariantTcplife}

// ChurnRun is one run of the churn workload under one variant.
type ChurnRun struct {
	Variant    string  `json:"variant"`
	Round      int     `json:"round"`
	Conns      int     `json:"conns"`
	Seconds    float64 `json:"seconds"`
	CPUSeconds float64 `json:"cpu_seconds"` // whole machine, busy time over the window
	// OwnCPUSeconds is the variant's own process's CPU (utime + stime)
	// over the same window: the tracer's user-space cost and its system
	// calls, not the in-kernel programs paid by the traced processes.
	OwnCPUSeconds float64 `json:"own_cpu_seconds,omitempty"`
	// Lost is the tracer's kernel-side loss counter after the run
	// (serve variants only).
	Lost uint64 `json:"lost"`
	// RSS and HWM of the tracer process at the end of the run (bytes).
	RSS uint64 `json:"rss"`
	HWM uint64 `json:"hwm"`
}

// Rate is connections per second.
func (r ChurnRun) Rate() float64 { return float64(r.Conns) / r.Seconds }

// CPUPerConn is CPU seconds (all CPUs) per connection.
func (r ChurnRun) CPUPerConn() float64 { return r.CPUSeconds / float64(r.Conns) }

// Ratio is a median of paired ratios with its range.
type Ratio struct {
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
	N      int     `json:"n"`
}

// VariantSummary is one variant against the baseline of the same rounds.
type VariantSummary struct {
	Variant string `json:"variant"`
	// Absolute medians, for orientation only: the machine is shared.
	MedianRate       float64 `json:"median_rate"`
	MedianCPUPerConn float64 `json:"median_cpu_per_conn"`               // seconds
	MedianOwnPerConn float64 `json:"median_own_cpu_per_conn,omitempty"` // seconds, the variant's process
	Rate             Ratio   `json:"rate_ratio"`                        // variant / baseline
	CPU              Ratio   `json:"cpu_ratio"`                         // variant / baseline, CPU per connection
	Lost             uint64  `json:"lost"`                              // summed over the runs
}

// ChurnSummary is the churn A/B for one number of clients.
type ChurnSummary struct {
	Clients  int              `json:"clients"`
	Conns    int              `json:"conns"` // per run
	Rounds   int              `json:"rounds"`
	Variants []VariantSummary `json:"variants"` // baseline first (ratios 1)
	Runs     []ChurnRun       `json:"runs"`
}

// Variant returns the summary of one variant, or nil.
func (c *ChurnSummary) Variant(name string) *VariantSummary {
	for i := range c.Variants {
		if c.Variants[i].Variant == name {
			return &c.Variants[i]
		}
	}
	return nil
}

// UnixRun is one pair of the Unix overload A/B.
type UnixRun struct {
	BaseRate   float64 `json:"base_rate"`     // calls/s
	TracedRate float64 `json:"traced_rate"`   // calls/s
	BaseCPU    float64 `json:"base_cpu"`      // machine CPU seconds per call
	TracedCPU  float64 `json:"traced_cpu"`    // machine CPU seconds per call
	ClientSaw  int     `json:"client_eagain"` // EAGAIN the traced run's client counted
	TracerSaw  uint64  `json:"tracer_eagain"` // what /metrics counted for its namespace
}

// UnixSummary is the Unix-socket overload A/B.
type UnixSummary struct {
	Pairs       int       `json:"pairs"`
	RunSeconds  float64   `json:"run_seconds"`
	Rate        Ratio     `json:"rate_ratio"`
	CPU         Ratio     `json:"cpu_ratio"`
	BaseRate    float64   `json:"median_base_rate"`
	AllCounted  bool      `json:"all_counted"` // tracer == client in every traced run
	Runs        []UnixRun `json:"runs"`
	MetricsWait float64   `json:"metrics_wait_seconds"` // longest wait for the counter to match
}

// StormStep is one rate step of the event storm.
type StormStep struct {
	Target    float64 `json:"target"`    // records/s asked for (0: as fast as possible)
	Procs     int     `json:"procs"`     // generator processes
	Calls     int     `json:"calls"`     // refused connects made
	Seconds   float64 `json:"seconds"`   //
	Generated uint64  `json:"generated"` // records the kernel was asked to send
	Received  uint64  `json:"received"`  // records the tracer read
	Lost      uint64  `json:"lost"`      // the tracer's kernel loss counter
	Stalled   bool    `json:"stalled"`   // the reader was stopped (SIGSTOP) during the step
}

// Rate is records generated per second.
func (s StormStep) Rate() float64 { return float64(s.Generated) / s.Seconds }

// Accounted says whether every generated record was read or counted lost.
func (s StormStep) Accounted() bool { return s.Received+s.Lost == s.Generated }

// StormSummary is the event storm.
type StormSummary struct {
	RecordsPerCall int         `json:"records_per_call"`
	RingBytes      int         `json:"ring_bytes"`
	ChurnRecords   float64     `json:"churn_records_per_s"` // the churn's peak record rate, the 1x step
	Steps          []StormStep `json:"steps"`
}

// MaxZeroLoss is the highest rate of a live (not stalled) step without
// loss, and whether any live step lost records.
func (s *StormSummary) MaxZeroLoss() (rate float64, liveLoss bool) {
	for _, st := range s.Steps {
		if st.Stalled {
			continue
		}
		if st.Lost > 0 {
			liveLoss = true
			continue
		}
		rate = max(rate, st.Rate())
	}
	return rate, liveLoss
}

// Process memory of one `tracer serve`.
type ProcMemory struct {
	Label    string `json:"label"`
	RSS      uint64 `json:"rss"`       // bytes
	HWM      uint64 `json:"hwm"`       // bytes
	Anon     uint64 `json:"anon"`      // RssAnon
	File     uint64 `json:"file"`      // RssFile
	RingRSS  uint64 `json:"ring_rss"`  // resident pages of the bpf-map mappings (the ring buffer)
	GoHeap   uint64 `json:"go_heap"`   // go_memstats_heap_inuse_bytes
	MapBytes uint64 `json:"map_bytes"` // memlock of every BPF map the process holds
	// CPUPercent is the process's own CPU time (utime + stime from
	// /proc/PID/stat) over the second half of the idle wait, in percent
	// of one core: what an idle tracer costs the machine.
	CPUPercent float64 `json:"cpu_percent,omitempty"`
	// Context is what the tracer had to read at the time: network
	// namespaces on the machine, TCP sockets of the initial one. Its
	// start-up and sampling cost grow with both.
	Context string `json:"context,omitempty"`
}

// MemorySummary is the memory section.
type MemorySummary struct {
	Idle       ProcMemory  `json:"idle"`        // default settings
	Idle4MiB   ProcMemory  `json:"idle_4mib"`   // --ring-buffer-bytes 4 MiB
	Churn      *ProcMemory `json:"churn"`       // peak over the serve churn runs
	Million    ProcMemory  `json:"million"`     // --max-sockets 1048576
	SocksBytes uint64      `json:"socks_bytes"` // memlock of the socks map at 1 M entries
	SocksMax   uint32      `json:"socks_max"`
	// From BenchmarkTrackedConnectionMemory: user space per tracked
	// connection with 1 M synthetic connections in the aggregator.
	HeapPerConn float64 `json:"heap_per_conn"`
	RSSPerConn  float64 `json:"rss_per_conn"`
}

// KernelPerConn is the socks map's bytes per entry.
func (m *MemorySummary) KernelPerConn() float64 {
	if m.SocksMax == 0 {
		return 0
	}
	return float64(m.SocksBytes) / float64(m.SocksMax)
}

// PerConn is kernel plus user-space bytes per tracked connection.
func (m *MemorySummary) PerConn() float64 { return m.KernelPerConn() + m.HeapPerConn }
