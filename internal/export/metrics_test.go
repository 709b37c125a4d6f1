package export

import (
	"github.com/conntracer/conntracer/internal/aggregate"

	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/conntracer/conntracer/internal/events"
)

// closedConn is a connection that lived lifetime and moved tx/rx bytes.
func closedConn(pid uint32, comm string, role events.Role, end events.EndState, lifetime time.Duration, tx, rx uint64, port uint16) events.Event {
	owner := events.Process{PID: pid, TID: pid, StartNs: uint64(pid) * 1000, Source: events.OwnerConnect}
	owner.SetComm(comm)
	const openNs = 1_000_000_000
	ev := events.Event{Kind: events.KindConnClosed, Conn: events.Conn{
		Cookie: uint64(pid)<<16 | uint64(port), NetNS: 4026531840, Family: events.FamilyIPv4,
		Local:  netip.AddrPortFrom(netip.MustParseAddr("10.0.0.1"), port),
		Remote: netip.MustParseAddrPort("10.0.0.2:6379"),
		Role:   role, Owner: owner, OpenNs: openNs, CloseNs: openNs + uint64(lifetime),
		TxBytes: tx, RxBytes: rx, EndState: end, SeenOpen: true,
	}}
	if role == events.RoleActive {
		ev.Conn.EstablishedNs = openNs + uint64(250*time.Microsecond)
	}
	return ev
}

// fixtureSnapshot is a small aggregate fed through the real Aggregator:
// three processes, connections of known lifetimes and sizes, a drop, a
// conntrack round and a failed connect.
func fixtureSnapshot(t testing.TB) *aggregate.Snapshot {
	agg := aggregate.NewAggregator(aggregate.DefaultThresholds())
	now := time.Unix(1_700_000_000, 0)
	var evs []events.Event
	for i := range 4 {
		evs = append(evs, closedConn(100, "curl", events.RoleActive, events.EndTimeWait, 3*time.Millisecond, 100, 1000, uint16(40000+i)))
	}
	evs = append(evs,
		closedConn(100, "curl", events.RoleActive, events.EndReset, 2*time.Second, 0, 0, 40010),
		closedConn(200, "redis-server", events.RolePassive, events.EndCloseWait, 3*time.Millisecond, 1000, 100, 6379),
		closedConn(300, "nginx", events.RoleActive, events.EndTimeWait, 70*time.Second, 4096, 65536, 40020),
	)
	evs = append(evs,
		events.Event{Kind: events.KindConnect, Connect: events.Connect{Owner: evs[0].Conn.Owner, NetNS: 4026531840,
			Family: events.FamilyIPv4, Remote: netip.MustParseAddrPort("10.0.0.3:80"), Errno: 111, Count: 2}},
		events.Event{Kind: events.KindConntrackStats, Conntrack: events.Conntrack{NetNS: 4026531840,
			Entries: 200, Max: 256, Insert: 500, InsertFailed: 3, Drop: 7, EarlyDrop: 1}},
	)
	for i := range evs {
		agg.Apply(&evs[i], now)
	}
	return agg.Snapshot()
}

func goldenCompare(t *testing.T, c prometheus.Collector, name string, metrics ...string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		reg := prometheus.NewPedanticRegistry()
		reg.MustRegister(c)
		text, err := gatherText(reg, metrics...)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	defer f.Close()
	if err := testutil.CollectAndCompare(c, f, metrics...); err != nil {
		t.Fatal(err)
	}
}

func TestCollectorGolden(t *testing.T) {
	s := fixtureSnapshot(t)
	c := NewCollector(func() *aggregate.Snapshot { return s }, MetricsOptions{TopProcesses: 2})
	goldenCompare(t, c, "metrics.golden")
}

func TestCollectorLint(t *testing.T) {
	s := fixtureSnapshot(t)
	c := NewCollector(func() *aggregate.Snapshot { return s }, MetricsOptions{TopProcesses: 20, Destinations: 5})
	problems, err := testutil.CollectAndLint(c)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
	reg := prometheus.NewPedanticRegistry()
	if _, err := NewHealth(reg, map[string]string{"sock/inet_sock_set_state": "tp_btf", "skb/kfree_skb": ""}); err != nil {
		t.Fatal(err)
	}
	problems, err = testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint (health): %s: %s", p.Metric, p.Text)
	}
}

// TestCollectorTopK checks the folding: with K=1 only the most active
// process keeps its comm, the others are summed into comm="other".
func TestCollectorTopK(t *testing.T) {
	s := fixtureSnapshot(t)
	c := NewCollector(func() *aggregate.Snapshot { return s }, MetricsOptions{TopProcesses: 1})
	want := `
# HELP conntracer_connections_closed_total TCP connections closed, by process group and role (unknown: open before tracing started).
# TYPE conntracer_connections_closed_total counter
conntracer_connections_closed_total{cgroup="",comm="curl",role="active"} 5
conntracer_connections_closed_total{cgroup="",comm="curl",role="passive"} 0
conntracer_connections_closed_total{cgroup="",comm="other",role="active"} 1
conntracer_connections_closed_total{cgroup="",comm="other",role="passive"} 1
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "conntracer_connections_closed_total"); err != nil {
		t.Fatal(err)
	}
}

// TestNativeHistogram checks that the lifetime histogram also carries the
// native schema-0 buckets, matching the classic ones.
func TestNativeHistogram(t *testing.T) {
	s := fixtureSnapshot(t)
	c := NewCollector(func() *aggregate.Snapshot { return s }, DefaultMetricsOptions())
	ch := make(chan prometheus.Metric, 1000)
	c.Collect(ch)
	close(ch)
	found := false
	for m := range ch {
		if !strings.Contains(m.Desc().String(), `"conntracer_connection_lifetime_seconds"`) {
			continue
		}
		var d dto.Metric
		if err := m.Write(&d); err != nil {
			t.Fatal(err)
		}
		labels := map[string]string{}
		for _, l := range d.Label {
			labels[l.GetName()] = l.GetValue()
		}
		if labels["role"] != "active" || labels["end_state"] != "time_wait" {
			continue
		}
		found = true
		h := d.Histogram
		// 4 curl connections of 3 ms (bucket (2^-9, 2^-8]] s) and one
		// nginx connection of 70 s (bucket (64, 128]].
		if h.GetSchema() != 0 || h.GetSampleCount() != 5 {
			t.Fatalf("schema %d count %d, want 0 and 5", h.GetSchema(), h.GetSampleCount())
		}
		got := nativeBuckets(h)
		want := map[int]int64{-8: 4, 7: 1}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("native buckets %v, want %v", got, want)
		}
		if len(h.Bucket) == 0 {
			t.Error("no classic buckets")
		}
	}
	if !found {
		t.Fatal("no lifetime histogram for role=active, end_state=time_wait")
	}
}

func nativeBuckets(h *dto.Histogram) map[int]int64 {
	out := map[int]int64{}
	idx, count, di := 0, int64(0), 0
	for _, sp := range h.PositiveSpan {
		idx += int(sp.GetOffset())
		for range sp.GetLength() {
			count += h.PositiveDelta[di]
			di++
			if count != 0 {
				out[idx] = count
			}
			idx++
		}
	}
	return out
}

// TestMetricNames: every metric the collector describes is listed.
func TestMetricNames(t *testing.T) {
	names := MetricNames()
	if len(names) < 20 || names[0] != "conntracer_connections_opened_total" {
		t.Fatalf("MetricNames() = %v", names)
	}
}
