package probe

import (
	"testing"
	"time"

	"github.com/conntracer/conntracer/internal/events"
	"github.com/conntracer/conntracer/internal/testenv"
)

// TestDetachReattach: with its hooks detached the probe sees no connection
// at all, and once attached again it sees every one, exactly, with the
// same maps and reader (what BenchmarkChurnOverhead relies on).
func TestDetachReattach(t *testing.T) {
	testenv.RequireRoot(t)
	ns := testenv.NewNetNS(t)
	opts := DefaultOptions()
	opts.Filter.NetNS = ns.Inode // other tests' traffic stays out
	tr := startTracing(t, opts)
	closed := func() int {
		n := 0
		for _, ev := range tr.col.snapshot() {
			if ev.Kind == events.KindConnClosed {
				n++
			}
		}
		return n
	}

	if err := tr.probe.detach(); err != nil {
		t.Fatal(err)
	}
	testenv.RunChurn(t, ns, 1, 50)
	time.Sleep(4 * tr.probe.opts.PollInterval)
	if n := closed(); n != 0 {
		t.Fatalf("detached: %d connection records, want none", n)
	}

	if err := tr.probe.reattach(); err != nil {
		t.Fatal(err)
	}
	const conns = 60
	r := testenv.RunChurn(t, ns, 1, conns)
	tr.col.waitFor(t, 2*r.Conns) // a record per side of each connection
	if n := closed(); n != 2*conns {
		t.Errorf("attached again: %d connection records, want %d (both sides of %d connections)", n, 2*conns, conns)
	}
	if err := tr.stop(); err != nil {
		t.Fatal(err)
	}
	if st := tr.probe.Stats(); st.Lost != 0 || st.BadRecords != 0 {
		t.Errorf("lost %d, undecodable %d", st.Lost, st.BadRecords)
	}
}
