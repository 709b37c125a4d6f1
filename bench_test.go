package conntracer

import (
	"context"
	"fmt"
	"io"
	"sort"
	"testing"
	"time"

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
// workload: the same workload runs alternately without and with the probe
// attached (default options, JSON formatting of every record), in a fresh
// namespace each time, and the benchmark reports the median ratio of the
// traced rate to the untraced one over paired runs. Run it with
// `make bench-churn`; the machine is noisy, so only ratios of interleaved
// runs mean anything.
func BenchmarkChurnOverhead(b *testing.B) {
	testenv.RequireRoot(b)
	const pairs, total = 7, 20000
	for _, clients := range []int{1, 2} {
		b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) {
			var ratios []float64
			var lost uint64
			for b.Loop() {
				for i := 0; i < pairs; i++ {
					// Alternate which variant goes first within a pair.
					var base, traced testenv.ChurnResult
					if i%2 == 0 {
						base = churnOnce(b, clients, total, false, &lost)
						traced = churnOnce(b, clients, total, true, &lost)
					} else {
						traced = churnOnce(b, clients, total, true, &lost)
						base = churnOnce(b, clients, total, false, &lost)
					}
					ratios = append(ratios, traced.Rate()/base.Rate())
					b.Logf("pair %d: baseline %.0f conn/s, traced %.0f conn/s, ratio %.3f", i, base.Rate(), traced.Rate(), traced.Rate()/base.Rate())
				}
			}
			sort.Float64s(ratios)
			b.ReportMetric(ratios[len(ratios)/2], "median-ratio")
			b.ReportMetric(ratios[0], "min-ratio")
			b.ReportMetric(ratios[len(ratios)-1], "max-ratio")
			if lost > 0 {
				b.Errorf("the probe lost %d records", lost)
			}
		})
	}
}

func churnOnce(b *testing.B, clients, total int, traced bool, lost *uint64) testenv.ChurnResult {
	ns := testenv.NewNetNS(b)
	if !traced {
		return testenv.RunChurn(b, ns, clients, total)
	}
	p, err := Open(DefaultOptions())
	if err != nil {
		b.Fatalf("open probe: %v", err)
	}
	defer p.Close()
	ctx, cancel := context.WithCancel(context.Background())
	h := &discardHandler{owners: events.NewOwners(), stream: export.NewStream(io.Discard, export.FormatJSON, func(ns uint64) time.Time { return time.Unix(0, int64(ns)) })}
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx, h) }()
	r := testenv.RunChurn(b, ns, clients, total)
	cancel()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	*lost += p.Stats().Lost
	return r
}
