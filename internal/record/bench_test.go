package record

import (
	"io"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/conntracer/conntracer/internal/events"
)

// BenchmarkWriteConnClosed measures recording connection records (encode
// and compress, one core) and reports the bytes each costs on disk.
func BenchmarkWriteConnClosed(b *testing.B) {
	evs := realisticCloses(1 << 16)
	cw := &countWriter{}
	w, err := NewWriter(cw, Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		e := &evs[i%len(evs)]
		if err := w.Write(&e.ev, e.now); err != nil {
			b.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(cw.n)/float64(b.N), "disk-B/event")
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}

type countWriter struct{ n int64 }

func (c *countWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

var _ io.Writer = (*countWriter)(nil)

// realisticCloses are connection records as a busy host makes them: a few
// dozen processes, each to a handful of destinations, random lifetimes
// and byte counts, cookies and ports in kernel order.
func realisticCloses(n int) []stamped {
	rng := rand.New(rand.NewPCG(1, 2))
	out := make([]stamped, n)
	kns := uint64(5e12)
	for i := range out {
		ev := closeEvent(i)
		c := &ev.Conn
		proc := rng.IntN(40)
		c.Owner = owner(uint32(1000+proc), "worker")
		c.Remote = netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, byte(proc % 5), byte(1 + rng.IntN(4))}), []uint16{6379, 5432, 443, 80}[proc%4])
		c.Local = netip.AddrPortFrom(c.Local.Addr(), uint16(32768+rng.IntN(28000)))
		kns += uint64(rng.IntN(200_000))
		life := uint64(rng.ExpFloat64() * 5e6)
		c.CloseNs, c.OpenNs = kns, kns-life
		c.EstablishedNs = c.OpenNs + uint64(20_000+rng.IntN(100_000))
		c.TxBytes, c.RxBytes = uint64(rng.IntN(2000)), uint64(rng.ExpFloat64()*20000)
		c.Cookie = 4096 + uint64(i)*uint64(1+rng.IntN(3))
		if rng.IntN(10) == 0 {
			c.EndState, c.ClosedBy, c.LastState = events.EndCloseWait, events.SideRemote, events.TCPLastAck
		}
		out[i] = stamped{ev, t0.Add(time.Duration(kns - 5e12))}
	}
	return out
}
