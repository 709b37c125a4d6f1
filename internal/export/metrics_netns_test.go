package export

import (
	"github.com/conntracer/conntracer/internal/aggregate"

	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/conntracer/conntracer/internal/events"
)

// Unix backlog overflows are counted in the namespace of the caller: a
// path socket belongs to none, and netns="0" is no namespace. The node's
// drop totals keep the drops of namespaces that went.
func TestMetricsNamespaces(t *testing.T) {
	agg := aggregate.NewAggregator(aggregate.DefaultThresholds())
	now := time.Unix(1_700_000_000, 0)
	owner := events.Process{PID: 42, TID: 42, StartNs: 42000, Source: events.OwnerConnect}
	owner.SetComm("nginx")
	const callerNS, goneNS = 4026532001, 4026532002
	eagain := events.Event{Kind: events.KindConnect, Connect: events.Connect{Owner: owner, NetNS: callerNS,
		Family: events.FamilyUnix, Errno: 11, Count: 5}}
	eagain.Connect.Path.Set([]byte("/run/php/fpm.sock"))
	evs := []events.Event{
		eagain,
		{Kind: events.KindDropCount, Drop: events.Drop{ReasonName: "NO_SOCKET", Symbol: "tcp_v4_rcv", NetNS: goneNS, Count: 144}},
		{Kind: events.KindNetNSGone, Counters: events.Counters{NetNS: goneNS}},
		{Kind: events.KindSockSampleDone},
	}
	for i := range evs {
		agg.Apply(&evs[i], now)
	}
	s := agg.Snapshot()
	c := NewCollector(func() *aggregate.Snapshot { return s }, DefaultMetricsOptions())
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	want := `
# HELP conntracer_unix_backlog_overflows_total connect() calls to a Unix stream socket that failed with EAGAIN (backlog full), per network namespace.
# TYPE conntracer_unix_backlog_overflows_total counter
conntracer_unix_backlog_overflows_total{netns="4026532001"} 5
# HELP conntracer_drops_total Packets the kernel dropped, by drop reason (from the running kernel's BTF).
# TYPE conntracer_drops_total counter
conntracer_drops_total{reason="NO_SOCKET"} 144
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want),
		"conntracer_unix_backlog_overflows_total", "conntracer_drops_total"); err != nil {
		t.Error(err)
	}
}
