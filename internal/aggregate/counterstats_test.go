package aggregate

import (
	"github.com/conntracer/conntracer/internal/events"

	"testing"
	"time"
)

func TestCounterStatsLastAndDelta(t *testing.T) {
	a := NewAggregator(DefaultThresholds())
	t0 := time.Unix(1000, 0)
	kc := func(active, tw uint64) *events.Event {
		ev := &events.Event{Kind: events.KindKernelCounters, Counters: events.Counters{NetNS: 7}}
		ev.Counters.Values[0] = active // TcpActiveOpens
		ev.Counters.Values[26] = tw    // SockstatTCPTw
		return ev
	}
	a.Apply(kc(10, 5), t0)
	a.Apply(kc(25, 2), t0.Add(10*time.Second))
	a.Apply(&events.Event{Kind: events.KindTracerCounters, Counters: events.Counters{Object: "tcplife", Values: [events.MaxCounters]uint64{3}}}, t0.Add(10*time.Second))
	s := a.Snapshot().KernelCounters
	if len(s) != 2 || s[0].Kind != "kernel_counters" || s[1].Object != "tcplife" {
		t.Fatalf("snapshot %+v", s)
	}
	if events.KernelCounterNames[0] != "TcpActiveOpens" || events.KernelCounterNames[26] != "SockstatTCPTw" {
		t.Fatal("counter indices moved: recordings depend on them")
	}
	k := s[0]
	if k.NetNS != 7 || k.Values["TcpActiveOpens"] != 25 || k.Deltas["TcpActiveOpens"] != 15 || k.Values["SockstatTCPTw"] != 2 || k.Deltas["SockstatTCPTw"] != -3 {
		t.Fatalf("kernel counters %+v", k)
	}
	if !k.Since.Equal(t0) || !k.Time.Equal(t0.Add(10*time.Second)) {
		t.Fatalf("since %v time %v", k.Since, k.Time)
	}
	if s[1].Values["Lost"] != 3 || s[1].Deltas["Lost"] != 0 {
		t.Fatalf("tracer counters %+v", s[1])
	}
}
