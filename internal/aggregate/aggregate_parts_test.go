package aggregate

import (
	"github.com/conntracer/conntracer/internal/events"

	"testing"
	"time"
)

// The aggregator drives the connect, drop and conntrack sub-aggregates:
// one Apply per event, drop events named first, every section in the
// Snapshot and the findings of every kind in one sorted list, evaluated
// with the socket table's rounds.
func TestAggregatorOwnsParts(t *testing.T) {
	a := NewAggregator(DefaultThresholds())
	a.SetDropNames(events.NewDropNames(map[uint32]string{6: "NETFILTER_DROP"}, func(uint64) string { return "nft_do_chain+0x1" }))
	a.SetConnectRules(DefaultConnectRules(), nil)
	now := time.Unix(1000, 0)
	apply := func(ev events.Event) { a.Apply(&ev, now) }
	nginx := proc(10, "nginx")

	apply(unixConnect(nginx, "/run/php.sock", events.ErrnoEAGAIN, 7))
	apply(events.Event{Kind: events.KindUnixListener, Connect: events.Connect{Owner: proc(20, "php-fpm"), Family: events.FamilyUnix, Backlog: 1, Queue: 2, Somaxconn: 4096, NetNS: 4026531840,
		Path: events.UnixPath{Bytes: [108]byte{'/', 'r', 'u', 'n', '/', 'p', 'h', 'p', '.', 's', 'o', 'c', 'k'}, Len: 13}}})
	apply(*ctSample(1, 10, 5))
	// A rule's drop, named by the aggregator (the event carries numbers).
	rule := ntDrop(1, false, 42, "curl")
	rule.Drop.ReasonName = ""
	rule.Drop.Reason = 6
	apply(*rule)
	count := *rule
	count.Kind, count.Drop.Count = events.KindDropCount, 4
	apply(count)
	// Three table-full drops: the statistic rises by three.
	for range 3 {
		d := ntDrop(1, true, 43, "churner")
		d.Drop.ReasonName, d.Drop.Reason = "", 6
		apply(*d)
	}
	now = now.Add(time.Second)
	apply(*ctSample(1, 256, 8))
	apply(events.Event{Kind: events.KindSockSampleDone, Sample: events.Sample{TimeNs: 1}})

	s := a.Snapshot()
	if len(s.Unix) != 1 || s.Unix[0].ListenerPID != 20 || len(s.Unix[0].Callers) != 1 || s.Unix[0].Callers[0].Counts["EAGAIN"] != 7 {
		t.Errorf("unix section %+v", s.Unix)
	}
	if len(s.Conntrack) != 1 || s.Conntrack[0].ConntrackDrops != 3 || len(s.Conntrack[0].RefusedFlows) != 3 {
		t.Errorf("conntrack section %+v", s.Conntrack)
	}
	if len(s.Drops.ByReason) == 0 || s.Drops.ByReason[0].Reason != "NETFILTER_DROP" || s.Drops.ByReason[0].Location != "nft_do_chain+0x1" {
		t.Errorf("drops section %+v", s.Drops)
	}
	kinds := map[string]bool{}
	for i, f := range s.Findings {
		kinds[f.Kind] = true
		// Most urgent first (issue 16: sorted by kind name, pool_leak fell off the view).
		if p := s.Findings[max(i-1, 0)]; i > 0 && (findingSeverity(p.Kind) > findingSeverity(f.Kind) ||
			findingSeverity(p.Kind) == findingSeverity(f.Kind) && p.Kind > f.Kind) {
			t.Errorf("findings not sorted by severity, then kind: %s before %s", p.Kind, f.Kind)
		}
	}
	for _, k := range []string{"unix_backlog_overflow", "conntrack_table_full"} {
		if !kinds[k] {
			t.Errorf("no %s finding in %v", k, kinds)
		}
	}
}

// Close records, the hot path, stay allocation-free with the parts owned.
func TestAggregatorApplyCloseAllocs(t *testing.T) {
	a := NewAggregator(DefaultThresholds())
	p := proc(10, "client")
	ev := tcpClosed(p, 11, "10.0.0.2:6379", events.EndReset, 0, 1_000, 2_000) // (a TIME_WAIT close adds a timewait entry)
	now := time.Unix(1000, 0)
	a.Apply(&ev, now) // first sight of the process, remote and latency key
	if n := testing.AllocsPerRun(100, func() { a.Apply(&ev, now) }); n != 0 {
		t.Errorf("Apply of a close record allocates %.1f times", n)
	}
}
