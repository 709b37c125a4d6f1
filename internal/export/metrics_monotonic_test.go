package export

import (
	"github.com/conntracer/conntracer/internal/aggregate"

	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/conntracer/conntracer/internal/events"
)

// scraper drives the real Aggregator with synthetic closes and a fake
// clock, publishes a snapshot per sample round as the event loop does,
// and scrapes the collector after each, checking what Prometheus needs
// of counters: no series ever goes down (one that disappears and comes
// back included), and the increases of the series present in two
// consecutive scrapes add up to the node's (what sum(rate()) sees).
type scraper struct {
	t      *testing.T
	agg    *aggregate.Aggregator
	wall   time.Time
	bootNs uint64
	snap   *aggregate.Snapshot
	c      *Collector
	port   uint16

	closes, lastCloses uint64             // closes applied, and at the last scrape
	noNodeCheck        bool               // skip the sum of increases (new series expected)
	seen               map[string]float64 // every counter series ever scraped, last value
	prev               map[string]float64 // the last scrape's
}

func newScraper(t *testing.T, opts MetricsOptions) *scraper {
	s := &scraper{t: t, agg: aggregate.NewAggregator(aggregate.DefaultThresholds()),
		wall: time.Unix(1_700_000_000, 0), bootNs: 10_000_000_000, seen: map[string]float64{}, port: 30000}
	s.c = NewCollector(func() *aggregate.Snapshot { return s.snap }, opts)
	return s
}

// close applies n closed connections of pid (comm, cgroup id).
func (s *scraper) close(pid uint32, comm string, cgroupID uint64, n int) {
	for range n {
		s.port++
		ev := closedConn(pid, comm, events.RoleActive, events.EndReset, time.Millisecond, 100, 10, s.port)
		ev.Conn.Owner.CgroupID = cgroupID
		s.agg.Apply(&ev, s.wall)
		s.closes++
	}
}

// round advances the clock by d, ends a sample round (where idle
// processes expire), publishes and scrapes. It returns the scrape's
// counters by series.
func (s *scraper) round(d time.Duration) map[string]float64 {
	s.t.Helper()
	s.wall = s.wall.Add(d)
	s.bootNs += uint64(d)
	s.agg.Apply(&events.Event{Kind: events.KindSockSampleDone, Sample: events.Sample{TimeNs: s.bootNs}}, s.wall)
	s.snap = s.agg.Snapshot()

	cur := scrapeCounters(s.t, s.c)
	for k, v := range cur {
		if old, ok := s.seen[k]; ok && v < old {
			s.t.Errorf("%s went down: %v -> %v", k, old, v)
		}
		s.seen[k] = v
	}
	// What sum(rate(conntracer_connections_closed_total[...])) sees.
	var inc float64
	for k, v := range cur {
		if old, ok := s.prev[k]; ok && strings.HasPrefix(k, "conntracer_connections_closed_total{") {
			inc += v - old
		}
	}
	if s.prev != nil && !s.noNodeCheck && inc != float64(s.closes-s.lastCloses) {
		s.t.Errorf("closed series rose by %v in all, the node closed %d", inc, s.closes-s.lastCloses)
	}
	s.prev, s.lastCloses = cur, s.closes
	return cur
}

// scrapeCounters gathers c and returns every counter sample by series.
func scrapeCounters(t *testing.T, c prometheus.Collector) map[string]float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	mfs, err := reg.Gather()
	if err != nil {
		t.Error(err) // not Fatal: scrapers run in goroutines too
		return nil
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetType() != dto.MetricType_COUNTER {
			continue
		}
		for _, m := range mf.Metric {
			var l []string
			for _, lp := range m.Label {
				l = append(l, fmt.Sprintf("%s=%q", lp.GetName(), lp.GetValue()))
			}
			out[mf.GetName()+"{"+strings.Join(l, ",")+"}"] = m.Counter.GetValue()
		}
	}
	return out
}

func closedKey(comm, cgroup string) string {
	return fmt.Sprintf(`conntracer_connections_closed_total{cgroup=%q,comm=%q,role="active"}`, cgroup, comm)
}

// series returns the values of key across scrapes, -1 where absent.
func series(scrapes []map[string]float64, key string) []float64 {
	out := make([]float64, len(scrapes))
	for i, s := range scrapes {
		v, ok := s[key]
		if !ok {
			v = -1
		}
		out[i] = v
	}
	return out
}

// TestCountersSurviveProcessExpiry: processes that close connections and
// then expire from the aggregate (idle for IdleExpiry) keep their counts
// in their group's counters: no decrease, exact values.
func TestCountersSurviveProcessExpiry(t *testing.T) {
	const cg = "/system.slice/curl.service"
	s := newScraper(t, MetricsOptions{TopProcesses: 20, CgroupName: func(id uint64) string {
		if id == 7 {
			return cg
		}
		return ""
	}})
	var scrapes []map[string]float64
	var tracked []float64
	round := func(d time.Duration) {
		scrapes = append(scrapes, s.round(d))
		tracked = append(tracked, float64(len(s.snap.Processes)))
	}
	s.close(100, "curl", 0, 3)
	s.close(101, "curl", 0, 1)
	s.close(102, "curl", 7, 2)
	round(0)
	s.close(101, "curl", 0, 1)
	round(time.Minute)
	s.close(101, "curl", 0, 1)
	round(90 * time.Second) // 100 and 102 idle for 2.5 min: expired
	round(3 * time.Minute)  // 101 too

	if got, want := tracked, []float64{3, 3, 1, 0}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("tracked processes %v, want %v (the expiries this test is about)", got, want)
	}
	if got, want := series(scrapes, closedKey("curl", "")), []float64{4, 5, 6, 6}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("closed{comm=curl} across scrapes %v, want %v", got, want)
	}
	if got, want := series(scrapes, closedKey("curl", cg)), []float64{2, 2, 2, 2}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("closed{comm=curl,cgroup=%s} across scrapes %v, want %v", cg, got, want)
	}
	sent := `conntracer_sent_bytes_total{cgroup="",comm="curl"}`
	if got, want := series(scrapes, sent), []float64{400, 500, 600, 600}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("sent bytes{comm=curl} across scrapes %v, want %v", got, want)
	}
	lint(t, s.c)
}

// TestTopKMovesNeverDecrease: with K=1, two groups trade the top place
// twice. A group's own series shows its totals whenever it is exported
// and comes back no lower; comm="other" counts what groups did while
// folded into it, so it never goes down either; and the increases add up
// to the node's at every scrape (scraper.round checks both).
func TestTopKMovesNeverDecrease(t *testing.T) {
	s := newScraper(t, MetricsOptions{TopProcesses: 1})
	var scrapes []map[string]float64
	s.close(100, "alpha", 0, 3)
	s.close(200, "beta", 0, 1)
	scrapes = append(scrapes, s.round(0)) // alpha on top
	s.close(200, "beta", 0, 4)
	scrapes = append(scrapes, s.round(time.Second)) // beta overtakes it
	s.close(100, "alpha", 0, 1)
	scrapes = append(scrapes, s.round(time.Second)) // alpha folded, busy
	s.close(100, "alpha", 0, 5)
	scrapes = append(scrapes, s.round(time.Second)) // alpha back on top
	s.close(200, "beta", 0, 1)
	scrapes = append(scrapes, s.round(time.Second)) // beta folded, busy

	for _, c := range []struct {
		comm string
		want []float64 // -1: no series
	}{
		{"alpha", []float64{3, -1, -1, 9, 9}},
		{"beta", []float64{-1, 5, 5, -1, -1}},
		// beta's 1, then its 4 as it leaves; alpha's 1, then its 5 as
		// it leaves; beta's 1.
		{"other", []float64{1, 5, 6, 11, 12}},
	} {
		if got := series(scrapes, closedKey(c.comm, "")); fmt.Sprint(got) != fmt.Sprint(c.want) {
			t.Errorf("closed{comm=%s} across scrapes %v, want %v", c.comm, got, c.want)
		}
	}
	lint(t, s.c)
}

// TestTopKPromotionWithDepartedHistory: a group whose process expired is
// folded into "other" with its past; a new process of it brings it back
// to the top. Its own series comes back with its whole history, and
// "other" keeps what the group added while folded, where a sum of the
// folded groups' totals would fall from 6 to 3.
func TestTopKPromotionWithDepartedHistory(t *testing.T) {
	s := newScraper(t, MetricsOptions{TopProcesses: 1})
	var scrapes []map[string]float64
	s.close(100, "gamma", 0, 4)
	s.close(200, "eta", 0, 1)
	scrapes = append(scrapes, s.round(0)) // gamma on top
	s.close(200, "eta", 0, 1)
	scrapes = append(scrapes, s.round(90*time.Second))
	s.close(200, "eta", 0, 1)
	scrapes = append(scrapes, s.round(time.Minute)) // pid 100 expired: eta on top
	s.close(101, "gamma", 0, 2)
	scrapes = append(scrapes, s.round(time.Second)) // gamma busy again, folded
	s.close(101, "gamma", 0, 2)
	scrapes = append(scrapes, s.round(time.Second)) // gamma back on top

	if len(s.snap.Processes) != 2 || len(s.snap.Departed.Groups) != 1 {
		t.Fatalf("%d processes and %d departed groups, want 2 and 1 (pid 100 expired)",
			len(s.snap.Processes), len(s.snap.Departed.Groups))
	}
	for _, c := range []struct {
		comm string
		want []float64 // -1: no series
	}{
		{"gamma", []float64{4, 4, -1, -1, 8}},
		{"eta", []float64{-1, -1, 3, 3, -1}},
		{"other", []float64{1, 2, 3, 5, 7}},
	} {
		if got := series(scrapes, closedKey(c.comm, "")); fmt.Sprint(got) != fmt.Sprint(c.want) {
			t.Errorf("closed{comm=%s} across scrapes %v, want %v", c.comm, got, c.want)
		}
	}
}

// TestProcessChangingGroup: a process that execs (its comm changes) after
// closing connections leaves those counts with its old group, and its new
// group counts only what it does after: neither series goes down, none
// counts twice.
func TestProcessChangingGroup(t *testing.T) {
	s := newScraper(t, MetricsOptions{TopProcesses: 20})
	s.noNodeCheck = true // "curl" is a new series: its first value is news
	var scrapes []map[string]float64
	s.close(100, "sh", 0, 2)
	scrapes = append(scrapes, s.round(0))
	s.close(100, "curl", 0, 3) // same pid and start time: an exec
	scrapes = append(scrapes, s.round(time.Second))
	s.close(100, "curl", 0, 1)
	scrapes = append(scrapes, s.round(time.Second))
	if len(s.snap.Processes) != 1 {
		t.Fatalf("%d processes, want 1", len(s.snap.Processes))
	}
	if got, want := series(scrapes, closedKey("sh", "")), []float64{2, 2, 2}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("closed{comm=sh} across scrapes %v, want %v", got, want)
	}
	if got, want := series(scrapes, closedKey("curl", "")), []float64{-1, 3, 4}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("closed{comm=curl} across scrapes %v, want %v", got, want)
	}
}

// TestFoldOncePerSnapshot: scrapes of one snapshot get one answer; the
// folding advances only with a new snapshot.
func TestFoldOncePerSnapshot(t *testing.T) {
	s := newScraper(t, MetricsOptions{TopProcesses: 1})
	s.close(100, "alpha", 0, 3)
	s.close(200, "beta", 0, 1)
	first := s.round(0)
	for range 3 {
		if again := scrapeCounters(t, s.c); fmt.Sprint(again) != fmt.Sprint(first) {
			t.Fatalf("scraping the same snapshot again gave %v, first %v", again, first)
		}
	}
}

func lint(t *testing.T, c prometheus.Collector) {
	t.Helper()
	problems, err := testutil.CollectAndLint(c)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}

// TestConcurrentScrapes: two scrapers racing with the publisher (run with
// -race) each see every counter monotonic.
func TestConcurrentScrapes(t *testing.T) {
	agg := aggregate.NewAggregator(aggregate.DefaultThresholds())
	var snap atomic.Pointer[aggregate.Snapshot]
	snap.Store(agg.Snapshot())
	c := NewCollector(snap.Load, MetricsOptions{TopProcesses: 2})
	done := make(chan struct{})
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			last := map[string]float64{}
			for {
				select {
				case <-done:
					return
				default:
				}
				for k, v := range scrapeCounters(t, c) {
					if v < last[k] {
						t.Errorf("%s went down: %v -> %v", k, last[k], v)
					}
					last[k] = v
				}
			}
		}()
	}
	now := time.Unix(1_700_000_000, 0)
	for i := range 50 { // four groups taking turns on top
		pid := uint32(100 + i%4)
		for j := range 1 + i%3 {
			ev := closedConn(pid, fmt.Sprintf("g%d", pid), events.RoleActive, events.EndReset, time.Millisecond, 1, 1, uint16(i*4+j))
			agg.Apply(&ev, now)
		}
		agg.Apply(&events.Event{Kind: events.KindSockSampleDone, Sample: events.Sample{TimeNs: uint64(i+1) * 1e9}}, now)
		snap.Store(agg.Snapshot())
	}
	close(done)
	wg.Wait()
}
