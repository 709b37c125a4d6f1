package probe

import (
	"github.com/conntracer/conntracer/internal/aggregate"

	"testing"
	"time"

	"github.com/conntracer/conntracer/internal/events"
)

// BenchmarkDecodeAggregate is the user-space hot path of `tracer serve` per
// ring-buffer record: decode a close record into the reused Event and apply
// it to the Aggregator. The records are what the kernel sends for a busy
// host (1000 processes, 10 remotes each, a third ending in TIME_WAIT),
// encoded through the generated type. The issue asks for at least 2 M
// events/s on one core (run with -cpu 1) and no allocation per event.
func BenchmarkDecodeAggregate(b *testing.B) {
	const n = 1 << 14
	raws := make([][]byte, n)
	for i := range raws {
		pid := uint32(1000 + i%1000)
		r := &tcplifeConnEvent{
			Kind: uint8(tcplifeRecordKindRECORD_CONN_CLOSED), Family: 2,
			Role:     uint8(tcplifeConnRoleROLE_ACTIVE),
			EndState: uint8(tcplifeConnEndStateEND_CLOSED), LastState: 7,
			Flags: uint8(tcplifeConnFlagsCONN_SEEN_OPEN | tcplifeConnFlagsCONN_OWNER_CONNECT | tcplifeConnFlagsCONN_ESTABLISHED),
			Saddr: ipv4("10.0.0.1"), Daddr: [16]uint8{10, 1, 0, byte(i % 10)},
			Sport: uint16(32768 + i%28000), Dport: 6379,
			OpenNs: uint64(i)*1000 + 1, CloseNs: uint64(i)*1000 + 500_001,
			Cookie: uint64(4096 + i), Netns: 4026531840, Tgid: pid, Tid: pid,
			ProcStartNs: uint64(pid) * 10_000_000, TxBytes: 100, RxBytes: 2000,
			Comm: comm("worker"),
		}
		if i%3 == 0 {
			r.EndState = uint8(tcplifeConnEndStateEND_TIME_WAIT)
		}
		raws[i] = encode(b, r)
	}
	a := aggregate.NewAggregator(aggregate.DefaultThresholds())
	now := time.Unix(1_700_000_000, 0)
	var ev events.Event
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := Decode(raws[i&(n-1)], &ev); err != nil {
			b.Fatal(err)
		}
		// A new connection every time: the same socket never closes twice.
		shift := uint64(i/n) * n * 1000
		ev.Conn.OpenNs += shift
		ev.Conn.CloseNs += shift
		a.Apply(&ev, now.Add(time.Duration(i)*time.Microsecond))
		// A socket-table round ends about once a second at the target
		// rate, as it would live (findings are evaluated then).
		if i&0x1fffff == 0x1fffff {
			a.Apply(&events.Event{Kind: events.KindSockSampleDone, Sample: events.Sample{TimeNs: ev.Conn.CloseNs}}, now.Add(time.Duration(i)*time.Microsecond))
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}
