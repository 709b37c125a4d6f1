package probe

import (
	"io"
	"slices"

	"context"
	"sync"

	"github.com/conntracer/conntracer/internal/export"

	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/conntracer/conntracer/internal/events"
	"github.com/conntracer/conntracer/internal/kernel"

	"golang.org/x/sys/unix"

	"github.com/conntracer/conntracer/internal/testenv"
)

// udpSocketIn returns a UDP socket created inside ns (a socket belongs to
// the namespace it was created in, whichever thread uses it later).
func udpSocketIn(b *testing.B, ns *testenv.NetNS) int {
	b.Helper()
	type res struct {
		fd  int
		err error
	}
	ch := make(chan res, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		target, err := unix.Open("/run/netns/"+ns.Name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			ch <- res{err: err}
			return
		}
		defer unix.Close(target)
		if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
			ch <- res{err: err}
			return
		}
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
		ch <- res{fd, err}
	}()
	r := <-ch
	if r.err != nil {
		b.Fatal(r.err)
	}
	b.Cleanup(func() { unix.Close(r.fd) })
	return r.fd
}

// BenchmarkDropStorm sends UDP datagrams to a closed port (each one a
// NO_SOCKET drop) as fast as one core can, with the drops hook attached,
// and checks that the tracer's exact count equals the kernel's UdpNoPorts
// delta while only drop-records-per-sec records per CPU reach user space.
func BenchmarkDropStorm(b *testing.B) {
	testenv.RequireRoot(b)
	ns := testenv.NewNetNS(b)
	fd := udpSocketIn(b, ns)
	opts := DefaultOptions()
	opts.Filter.NetNS = ns.Inode
	opts.Drops = true
	tr := startTracingB(b, opts)
	names := dropNamesB(b)
	noPorts := func() uint64 {
		out := ns.Output(b, "nstat", "-asz", "UdpNoPorts")
		for _, l := range strings.Split(out, "\n") {
			if f := strings.Fields(l); len(f) >= 2 && f[0] == "UdpNoPorts" {
				v, _ := strconv.ParseUint(f[1], 10, 64)
				return v
			}
		}
		return 0
	}
	before := noPorts()
	dst := &unix.SockaddrInet4{Port: 9, Addr: [4]byte{127, 0, 0, 1}}
	msg := []byte("x")
	b.ResetTimer()
	start := time.Now()
	for b.Loop() {
		if err := unix.Sendto(fd, msg, 0, dst); err != nil && err != unix.ECONNREFUSED {
			b.Fatal(err)
		}
	}
	elapsed := time.Since(start)
	b.StopTimer()
	kernel := noPorts() - before
	time.Sleep(1200 * time.Millisecond) // one drop-count sample after the storm
	unsent, _ := tr.probe.UnsentDropRecords()
	lost, _ := tr.probe.LostRecords()
	if err := tr.stop(); err != nil {
		b.Fatal(err)
	}
	var traced, records uint64
	last := map[uint64]uint64{}
	for _, ev := range tr.col.snapshot() {
		switch {
		case ev.Kind == kindDropCount && ev.Drop.NetNS == ns.Inode && names.Reason(ev.Drop.Reason) == "NO_SOCKET":
			last[ev.Drop.Location] = ev.Drop.Count
		case ev.Kind == kindDrop && ev.Drop.NetNS == ns.Inode:
			records++
		}
	}
	for _, n := range last {
		traced += n
	}
	if records+unsent+lost != traced {
		b.Errorf("%d records + %d unsent + %d lost != %d drops counted", records, unsent, lost, traced)
	}
	if traced != kernel {
		b.Errorf("tracer counted %d NO_SOCKET drops, UdpNoPorts rose by %d", traced, kernel)
	}
	b.ReportMetric(float64(kernel)/elapsed.Seconds(), "drops/s")
	b.ReportMetric(float64(records), "records")
	b.ReportMetric(float64(unsent), "unsent")
	b.ReportMetric(float64(lost), "lost")
}

const (
	kindDrop      = events.KindDrop
	kindDropCount = events.KindDropCount
)

// startTracingB is startTracing for benchmarks.
func startTracingB(b *testing.B, opts Options) *tracing {
	b.Helper()
	p, err := Open(opts)
	if err != nil {
		b.Fatalf("open probe: %+v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	col := &collector{}
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx, col) }()
	tr := &tracing{probe: p, col: col}
	var once sync.Once
	var runErr error
	tr.stop = func() error {
		once.Do(func() {
			cancel()
			runErr = <-done
			p.Close()
		})
		return runErr
	}
	b.Cleanup(func() { tr.stop() })
	return tr
}

func dropNamesB(b *testing.B) *events.DropNames {
	b.Helper()
	reasons, err := kernel.DropReasons()
	if err != nil {
		b.Fatal(err)
	}
	return events.NewDropNames(reasons, nil)
}

// BenchmarkChurnDropsHook measures what the drops hook adds to a
// connection-churn workload that drops nothing: paired runs with the
// tracer attached, without and with skb:kfree_skb, alternating which goes
// first; it reports the median ratio of the rates (1.0: no cost).
func BenchmarkChurnDropsHook(b *testing.B) {
	testenv.RequireRoot(b)
	const pairs, total = 5, 10000
	var ratios []float64
	for b.Loop() {
		for i := 0; i < pairs; i++ {
			var lost uint64
			without := func() testenv.ChurnResult { return churnWithDrops(b, total, false, &lost) }
			with := func() testenv.ChurnResult { return churnWithDrops(b, total, true, &lost) }
			var base, hooked testenv.ChurnResult
			if i%2 == 0 {
				base, hooked = without(), with()
			} else {
				hooked = with()
				base = without()
			}
			ratios = append(ratios, hooked.Rate()/base.Rate())
			b.Logf("pair %d: without drops %.0f conn/s, with %.0f conn/s", i, base.Rate(), hooked.Rate())
		}
	}
	slices.Sort(ratios)
	b.ReportMetric(ratios[len(ratios)/2], "median-ratio")
	b.ReportMetric(ratios[0], "min-ratio")
	b.ReportMetric(ratios[len(ratios)-1], "max-ratio")
}

func churnWithDrops(b *testing.B, total int, drops bool, lost *uint64) testenv.ChurnResult {
	ns := testenv.NewNetNS(b)
	opts := DefaultOptions()
	opts.Drops = drops
	p, err := Open(opts)
	if err != nil {
		b.Fatalf("open probe: %v", err)
	}
	defer p.Close()
	ctx, cancel := context.WithCancel(context.Background())
	h := &discardHandler{owners: events.NewOwners(), stream: export.NewStream(io.Discard, export.FormatJSON, func(ns uint64) time.Time { return time.Unix(0, int64(ns)) })}
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx, h) }()
	r := testenv.RunChurn(b, ns, 1, total)
	cancel()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	*lost += p.Stats().Lost
	return r
}
