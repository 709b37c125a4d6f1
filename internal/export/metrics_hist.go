package export

import (
	"github.com/conntracer/conntracer/internal/aggregate"

	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/conntracer/conntracer/internal/events"
)

// Classic bucket bounds, le = 2^k: every other power of two of the
// aggregate's buckets, so the counts are exact (the aggregate's buckets
// are (2^(k-1), 2^k]).
var (
	secondsBuckets = expRange(-19, 23, 2) // about 2 us .. 97 days
	bytesBuckets   = expRange(0, 40, 2)   // 1 B .. 1 TiB
)

func expRange(from, to, step int) []int {
	var ks []int
	for k := from; k <= to; k += step {
		ks = append(ks, k)
	}
	return ks
}

func (c *Collector) collectHistograms(ch chan<- prometheus.Metric, s *aggregate.Snapshot) {
	h := &s.Histograms
	d := &c.d
	for r := range h.Lifetime {
		for e := range h.Lifetime[r] {
			if lh := &h.Lifetime[r][e]; lh.Count > 0 {
				ch <- newDualHistogram(d.lifetime, lh, secondsBuckets,
					events.Role(r).String(), events.EndState(e).String())
			}
		}
	}
	ch <- newDualHistogram(d.connectLatency, &h.ConnectLatency, secondsBuckets)
	for r := range h.TxBytes {
		if h.TxBytes[r].Count > 0 {
			ch <- newDualHistogram(d.sentPerConn, &h.TxBytes[r], bytesBuckets, events.Role(r).String())
			ch <- newDualHistogram(d.receivedPerConn, &h.RxBytes[r], bytesBuckets, events.Role(r).String())
		}
	}
}

// dualHistogram is a histogram carrying both classic buckets (for every
// Prometheus server; the text format shows only these) and the native
// buckets of schema 0 (for servers with native histograms enabled, over
// protobuf): client_golang's const histograms carry one or the other, so
// the two are merged into one dto.Histogram, as its own Histogram does
// when both are configured.
type dualHistogram struct {
	classic, native prometheus.Metric
}

func newDualHistogram(desc *prometheus.Desc, h *aggregate.Log2Hist, bounds []int, lv ...string) prometheus.Metric {
	buckets := make(map[float64]uint64, len(bounds))
	for _, k := range bounds {
		buckets[pow2(k)] = h.Cumulative(k)
	}
	classic := prometheus.MustNewConstHistogram(desc, h.Count, h.Sum, buckets, lv...)
	pos := map[int]int64{}
	for i, n := range h.Buckets {
		if n > 0 {
			pos[h.MinExp+i] = int64(n)
		}
	}
	native, err := prometheus.NewConstNativeHistogram(desc, h.Count, h.Sum, pos, nil, h.Zero, 0, h.ZeroThreshold, time.Time{}, lv...)
	if err != nil {
		return classic // cannot happen with consistent counts; classic still serves
	}
	return &dualHistogram{classic: classic, native: native}
}

// Desc implements prometheus.Metric.
func (m *dualHistogram) Desc() *prometheus.Desc { return m.classic.Desc() }

// Write implements prometheus.Metric.
func (m *dualHistogram) Write(out *dto.Metric) error {
	if err := m.classic.Write(out); err != nil {
		return err
	}
	var n dto.Metric
	if err := m.native.Write(&n); err != nil {
		return err
	}
	hc, hn := out.Histogram, n.Histogram
	hc.Schema, hc.ZeroThreshold, hc.ZeroCount = hn.Schema, hn.ZeroThreshold, hn.ZeroCount
	hc.PositiveSpan, hc.PositiveDelta = hn.PositiveSpan, hn.PositiveDelta
	if len(hc.PositiveSpan) == 0 && hc.GetZeroCount() == 0 {
		// An empty native histogram needs one span to tell it from a
		// classic one (as client_golang's own histograms do).
		off, length := int32(0), uint32(0)
		hc.PositiveSpan = []*dto.BucketSpan{{Offset: &off, Length: &length}}
	}
	return nil
}

func pow2(k int) float64 {
	if k >= 0 {
		return float64(uint64(1) << uint(k))
	}
	return 1 / float64(uint64(1)<<uint(-k))
}
