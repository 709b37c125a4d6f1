package probe

import (
	"context"
	"fmt"
	"io"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/conntracer/conntracer/internal/events"
	"github.com/conntracer/conntracer/internal/export"
	"github.com/conntracer/conntracer/internal/testenv"
)

// BenchmarkRecordPath measures what the event loop does per record before
// any output: decode, attribute, filter. BenchmarkRecordPathJSON adds the
// formatting of a JSON line, which `tracer --output json` pays per line.
func BenchmarkRecordPath(b *testing.B) { benchmarkRecordPath(b, false) }

// BenchmarkRecordPathJSON is BenchmarkRecordPath plus a JSON line per record.
func BenchmarkRecordPathJSON(b *testing.B) { benchmarkRecordPath(b, true) }

func benchmarkRecordPath(b *testing.B, print bool) {
	raw := encode(b, &tcplifeConnEvent{
		Kind: uint8(tcplifeRecordKindRECORD_CONN_CLOSED), Family: 2, Role: 1, EndState: 3,
		Flags: uint8(tcplifeConnFlagsCONN_SEEN_OPEN | tcplifeConnFlagsCONN_OWNER_CONNECT),
		Saddr: ipv4("10.0.0.1"), Daddr: ipv4("10.0.0.2"), Sport: 40000, Dport: 80,
		OpenNs: 1, CloseNs: 1_000_000, TxBytes: 100, RxBytes: 2000, Tgid: 42, Comm: comm("nginx"),
	})
	owners := events.NewOwners()
	filter := events.Filter{Port: 80}
	stream := export.NewStream(io.Discard, export.FormatJSON, func(ns uint64) time.Time { return time.Unix(0, int64(ns)) })
	var ev events.Event
	b.ReportAllocs()
	for b.Loop() {
		if err := Decode(raw, &ev); err != nil {
			b.Fatal(err)
		}
		owners.Apply(&ev)
		if filter.Match(&ev) && print {
			_ = stream.Print(&ev)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds()/1e6, "Mrecords/s")
}

// discardHandler runs the real per-record stages and throws the output away.
type discardHandler struct {
	owners *events.Owners
	stream *export.Stream
}

func (h *discardHandler) HandleEvent(ev *events.Event) {
	h.owners.Apply(ev)
	_ = h.stream.Print(ev)
}

func (h *discardHandler) Drained() { _ = h.stream.Flush() }

// BenchmarkChurnOverhead measures the tracer's cost on a connection-churn
// workload: the same workload runs alternately without and with the probe's
// hooks attached (default options, JSON formatting of every record), in a
// fresh namespace each time, and the benchmark reports, over paired runs,
// the median ratio of the traced connection rate to the untraced one, of
// the whole machine's CPU time per connection (traced over untraced), and
// of the workload process's own CPU time per connection (which, unlike the
// machine's, other processes on a shared machine do not inflate). A last
// traced run with the kernel's BPF run-time statistics on reports the BPF
// time per connection.
//
// The machine is noisy: only ratios of interleaved runs mean anything, and
// on a shared host single pairs range 0.7-1.5x when the two runs of a pair
// are seconds apart. So the probe is loaded once and its programs are
// detached and attached again between runs (milliseconds, where a reload
// takes seconds), runs are short (CT_CHURN_CONNS connections, default
// 10000: under a second) and many (CT_CHURN_PAIRS pairs, default 31). The
// reader keeps running in the untraced runs, as an idle tracer would: it
// reads nothing then but its timer.
func BenchmarkChurnOverhead(b *testing.B) {
	testenv.RequireRoot(b)
	pairs, total := envInt(b, "CT_CHURN_PAIRS", 31), envInt(b, "CT_CHURN_CONNS", 10000)
	for _, clients := range []int{1, 2} {
		b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) {
			var rates, cpus, wcpus []float64
			p, done, stop := startChurnProbe(b)
			defer p.Close()
			// Loading left garbage (kernel BTF, specs): collect it now,
			// as `tracer` does once tracing runs (internal/session/memory.go).
			runtime.GC()
			for b.Loop() {
				for i := 0; i < pairs; i++ {
					// Alternate which variant goes first within a pair.
					var base, traced churnRun
					if i%2 == 0 {
						base = churnOnce(b, p, clients, total, false)
						traced = churnOnce(b, p, clients, total, true)
					} else {
						traced = churnOnce(b, p, clients, total, true)
						base = churnOnce(b, p, clients, total, false)
					}
					rates = append(rates, traced.Rate()/base.Rate())
					cpus = append(cpus, traced.cpuPerConn/base.cpuPerConn)
					wcpus = append(wcpus, traced.CPUPerConn()/base.CPUPerConn())
					b.Logf("pair %d: baseline %.0f conn/s %.1f us CPU/conn, traced %.0f conn/s %.1f us CPU/conn: rate ratio %.3f, CPU ratio %.3f",
						i, base.Rate(), base.cpuPerConn/1e3, traced.Rate(), traced.cpuPerConn/1e3, rates[i], cpus[i])
				}
			}
			stop()
			if err := <-done; err != nil {
				b.Fatal(err)
			}
			sort.Float64s(rates)
			sort.Float64s(cpus)
			b.ReportMetric(rates[len(rates)/2], "median-rate-ratio")
			b.ReportMetric(rates[len(rates)/4], "p25-rate-ratio")
			b.ReportMetric(rates[len(rates)*3/4], "p75-rate-ratio")
			b.ReportMetric(cpus[len(cpus)/2], "median-cpu-ratio")
			b.ReportMetric(median(wcpus), "median-workload-cpu-ratio")
			if lost := p.Stats().Lost; lost > 0 {
				b.Errorf("the probe lost %d records", lost)
			}
			b.ReportMetric(bpfNsPerConn(b, clients, total), "bpf-ns/conn")
		})
	}
}

// envInt reads a positive integer setting from the environment.
func envInt(b *testing.B, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		b.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}

// churnRun is one run of the churn workload and the CPU the machine spent.
type churnRun struct {
	testenv.ChurnResult
	cpuPerConn float64 // ns of CPU time, all CPUs, per connection
}

// busyNs reads the machine's busy CPU time (everything but idle and
// iowait) from /proc/stat.
func busyNs(b *testing.B) float64 {
	raw, err := os.ReadFile("/proc/stat")
	if err != nil {
		b.Fatal(err)
	}
	line, _, _ := strings.Cut(string(raw), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
	var busy float64
	for i, v := range f[1:] {
		if i == 3 || i == 4 {
			continue
		}
		n, err := strconv.ParseFloat(v, 64)
		if err != nil {
			b.Fatalf("parse /proc/stat %q: %v", line, err)
		}
		busy += n
	}
	return busy * 1e9 / 100 // USER_HZ is 100 on Linux
}

// churnOnce runs the workload once in a fresh namespace with p's hooks
// attached (traced) or detached, and measures the machine's CPU over it.
func churnOnce(b *testing.B, p *Probe, clients, total int, traced bool) churnRun {
	ns := testenv.NewNetNS(b)
	var err error
	if traced {
		err = p.reattach()
	} else {
		err = p.detach()
	}
	if err != nil {
		b.Fatal(err)
	}
	before := busyNs(b)
	r := testenv.RunChurn(b, ns, clients, total)
	// The reader polls every PollInterval: let it read the rest of a
	// traced run's records inside the window (both kinds of run wait, so
	// that the windows match).
	time.Sleep(2 * p.opts.PollInterval)
	return churnRun{r, (busyNs(b) - before) / float64(r.Conns)}
}

func startChurnProbe(b *testing.B) (*Probe, chan error, context.CancelFunc) {
	return startChurnProbeWith(b, DefaultOptions())
}

// startChurnProbeWith opens a probe with opts and runs its event loop with
// the per-record stages of the stream (attribution, JSON formatting).
func startChurnProbeWith(b *testing.B, opts Options) (*Probe, chan error, context.CancelFunc) {
	return startChurnProbeHandler(b, opts, &discardHandler{owners: events.NewOwners(), stream: export.NewStream(io.Discard, export.FormatJSON, func(ns uint64) time.Time { return time.Unix(0, int64(ns)) })})
}

// startChurnProbeHandler opens a probe with opts and runs its event loop
// with h.
func startChurnProbeHandler(b *testing.B, opts Options, h Handler) (*Probe, chan error, context.CancelFunc) {
	p, err := Open(opts)
	if err != nil {
		b.Fatalf("open probe: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx, h) }()
	return p, done, cancel
}

// bpfNsPerConn runs the workload once more with the kernel's BPF run-time
// statistics on (they cost time themselves, hence a separate run) and
// returns the BPF time, all programs together, per connection.
func bpfNsPerConn(b *testing.B, clients, total int) float64 {
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		b.Logf("BPF run-time statistics unavailable: %v", err)
		return 0
	}
	defer stats.Close()
	ns := testenv.NewNetNS(b)
	p, done, stop := startChurnProbe(b)
	defer p.Close()
	r := testenv.RunChurn(b, ns, clients, total)
	stop()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	var runtime time.Duration
	for _, coll := range p.colls {
		for name, prog := range coll.Programs {
			st, err := prog.Stats()
			if err != nil {
				b.Fatal(err)
			}
			runtime += st.Runtime
			if st.RunCount > 0 {
				// A metric, not a log line: benchmark logs are
				// cut after a few lines.
				b.ReportMetric(float64(st.Runtime)/float64(st.RunCount), name+"-ns/run")
			}
		}
	}
	return float64(runtime) / float64(r.Conns)
}
