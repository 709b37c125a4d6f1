package export

import (
	"time"

	"github.com/conntracer/conntracer/internal/events"
)

// Streamed says whether the live stream (Stream.Print) has a line format
// for ev: closed connections, failed connects, drops and listen
// overflows. `tracer export` writes those as the stream does and the
// other kinds as EventJSON.
func Streamed(ev *events.Event) bool {
	switch ev.Kind {
	case events.KindConnClosed, events.KindDrop, events.KindListenOverflow:
		return true
	case events.KindConnect:
		return ev.Connect.Failed()
	}
	return false
}

// EventJSON is the JSON shape `tracer export` gives the kinds the live
// stream does not print (sampler rounds, conntrack statistics...): the
// time the event was applied, its type, and only the parts that are set,
// with Go field names. Field names are stable; fields may be added.
type EventJSON struct {
	Time      time.Time         `json:"time"`
	Kind      string            `json:"type"`
	Comm      string            `json:"comm,omitempty"` // the owner's command name, readable
	Conn      *events.Conn      `json:"conn,omitempty"`
	Connect   *events.Connect   `json:"connect,omitempty"`
	Drop      *events.Drop      `json:"drop,omitempty"`
	Conntrack *events.Conntrack `json:"conntrack,omitempty"`
	Sample    *events.Sample    `json:"sample,omitempty"`
	Counters  *CountersJSON     `json:"counters,omitempty"`
	// Cgroup: a cgroup's identity (cgroup_identity records).
	Cgroup *events.CgroupRecord `json:"cgroup,omitempty"`
}

// CountersJSON are kernel or tracer counters by name, not index.
type CountersJSON struct {
	NetNS  uint32            `json:"netns,omitempty"`
	Object string            `json:"object,omitempty"`
	TimeNs uint64            `json:"time_ns,omitempty"`
	Values map[string]uint64 `json:"values"`
}

// NewEventJSON converts ev, applied at now. The result points into ev.
func NewEventJSON(ev *events.Event, now time.Time) *EventJSON {
	x := &EventJSON{Time: now, Kind: ev.Kind.String()}
	if ev.Conn != (events.Conn{}) {
		x.Conn = &ev.Conn
		x.Comm = string(ev.Conn.Owner.CommBytes())
	}
	if ev.Connect != (events.Connect{}) {
		x.Connect = &ev.Connect
		x.Comm = string(ev.Connect.Owner.CommBytes())
	}
	if ev.Drop != (events.Drop{}) {
		x.Drop = &ev.Drop
	}
	if ev.Conntrack != (events.Conntrack{}) {
		x.Conntrack = &ev.Conntrack
	}
	if ev.Sample != (events.Sample{}) {
		x.Sample = &ev.Sample
	}
	if ev.Cgroup != (events.CgroupRecord{}) {
		x.Cgroup = &ev.Cgroup
	}
	if ev.Counters != (events.Counters{}) {
		c := ev.Counters
		x.Counters = &CountersJSON{NetNS: c.NetNS, Object: c.Object, TimeNs: c.TimeNs, Values: map[string]uint64{}}
		names := events.KernelCounterNames[:]
		if ev.Kind == events.KindTracerCounters {
			names = events.TracerCounterNames[:]
		}
		for i, n := range names {
			x.Counters.Values[n] = c.Values[i]
		}
	}
	return x
}
