package export

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/conntracer/conntracer/internal/aggregate"
	"github.com/conntracer/conntracer/internal/events"
)

// Two namespaces: one named by a pod, one nothing names.
const podNS, bareNS = 4026532101, 4026532102

func podNetNS(ino uint32) string {
	if ino == podNS {
		return "shop/checkout-7d9f"
	}
	return ""
}

// netnsSnapshot: process 42 connects from the pod's namespace, process 43
// from the unnamed one; the pod's namespace has a listen overflow.
func netnsSnapshot(t *testing.T) *aggregate.Snapshot {
	t.Helper()
	agg := aggregate.NewAggregator(aggregate.DefaultThresholds())
	now := time.Unix(1_700_000_000, 0)
	var evs []events.Event
	for i, ns := range []uint32{podNS, bareNS} {
		owner := events.Process{PID: uint32(42 + i), TID: uint32(42 + i), StartNs: 1, Source: events.OwnerConnect}
		owner.SetComm([]string{"api", "worker"}[i])
		evs = append(evs, events.Event{Kind: events.KindConnClosed, Conn: events.Conn{
			Cookie: uint64(i + 1), NetNS: ns, Family: events.FamilyIPv4, Role: events.RoleActive, Owner: owner,
			Local: netip.MustParseAddrPort("10.0.0.1:40000"), Remote: netip.MustParseAddrPort("10.0.3.7:6379"),
			SeenOpen: true, OpenNs: 1e9, EstablishedNs: 1e9 + 1e5, CloseNs: 2e9, EndState: events.EndTimeWait,
		}})
	}
	evs = append(evs, events.Event{Kind: events.KindListenOverflow, Drop: events.Drop{NetNS: podNS, Count: 3}},
		events.Event{Kind: events.KindSockSampleDone})
	for i := range evs {
		agg.Apply(&evs[i], now)
	}
	return agg.Snapshot()
}

// The snapshot's JSON names the namespaces it mentions, and each remote
// its own; the text view has a NETNS column (the name, else the inode)
// that the filter matches.
func TestSnapshotNamesNetNS(t *testing.T) {
	s := netnsSnapshot(t)
	d := NewDocument(s, time.Second, nil)
	d.NameNetNS(podNetNS)
	var buf bytes.Buffer
	if err := d.WriteJSON(&buf); err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Processes []struct {
			PID     uint32 `json:"pid"`
			Remotes []struct {
				NetNS     uint32 `json:"netns"`
				NetNSName string `json:"netns_name"`
			} `json:"remotes"`
		} `json:"processes"`
		NetNSNames map[string]string `json:"netns_names"`
	}
	if err := json.Unmarshal(buf.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	if len(doc.NetNSNames) != 1 || doc.NetNSNames["4026532101"] != "shop/checkout-7d9f" {
		t.Errorf("netns_names %v, want only the pod's namespace", doc.NetNSNames)
	}
	for _, p := range doc.Processes {
		for _, r := range p.Remotes {
			if want := podNetNS(r.NetNS); r.NetNSName != want {
				t.Errorf("pid %d remote in netns %d: netns_name %q, want %q", p.PID, r.NetNS, r.NetNSName, want)
			}
		}
	}

	for _, remotes := range []bool{false, true} {
		text := RenderText(s, ViewOptions{Sort: ColOpens, Width: 200, NetNSNames: podNetNS, Remotes: remotes})
		lines := strings.Split(text, "\n")
		col := strings.Index(lines[1], "NETNS")
		if col < 0 {
			t.Fatalf("no NETNS column:\n%s", text)
		}
		got := map[string]string{}
		for _, l := range lines[2:4] {
			got[strings.Fields(l)[1]] = strings.Fields(l[col:])[0]
		}
		if got["api"] != "shop/checkout-7d9f" || got["worker"] != "4026532102" {
			t.Errorf("remotes %v: NETNS by comm %v, want the pod's name for api, the inode for worker\n%s", remotes, got, text)
		}
		filtered := RenderText(s, ViewOptions{Sort: ColOpens, Width: 200, NetNSNames: podNetNS, Remotes: remotes, Filter: "checkout"})
		if !strings.Contains(filtered, " api ") || strings.Contains(filtered, " worker ") {
			t.Errorf("filter on the namespace's name:\n%s", filtered)
		}
	}
	if text := RenderText(s, ViewOptions{Sort: ColOpens, Width: 200}); strings.Contains(text, "NETNS") {
		t.Errorf("NETNS column without names:\n%s", text)
	}
}

// Per-namespace series carry netns_name beside netns when the collector
// names namespaces; "" for one nothing names.
func TestMetricsNetNSName(t *testing.T) {
	s := netnsSnapshot(t)
	opts := DefaultMetricsOptions()
	opts.NetNSNames = podNetNS
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewCollector(func() *aggregate.Snapshot { return s }, opts))
	want := `
# HELP conntracer_listen_overflows_total TCP listen queue overflows, per network namespace.
# TYPE conntracer_listen_overflows_total counter
conntracer_listen_overflows_total{netns="4026532101",netns_name="shop/checkout-7d9f"} 3
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "conntracer_listen_overflows_total"); err != nil {
		t.Error(err)
	}
	if problems, err := testutil.CollectAndLint(NewCollector(func() *aggregate.Snapshot { return s }, opts)); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", problems, err)
	}
}
