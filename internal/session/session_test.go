package session

import (
	"bytes"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/conntracer/conntracer/internal/events"
	"github.com/conntracer/conntracer/internal/export"
	"github.com/conntracer/conntracer/internal/record"
)

// oldConn is a connection open before tracing: the start-up scan's event
// (KindConnExisting, with its owner) and the kernel's close record (no
// owner; its sent bytes count the SYN).
func oldConn() (existing, closed events.Event) {
	owner := events.Process{PID: 4242, TID: 4242, StartNs: 1_000_000, Source: events.OwnerSnapshot}
	owner.SetComm("ctoold")
	c := events.Conn{Cookie: 77, NetNS: 4026531840, Family: events.FamilyIPv4,
		Local:  netip.MustParseAddrPort("10.0.0.1:40000"),
		Remote: netip.MustParseAddrPort("10.0.0.2:6379"),
		Role:   events.RoleActive, Owner: owner, LastState: events.TCPEstablished}
	existing = events.Event{Kind: events.KindConnExisting, Conn: c}
	c.Owner, c.Role = events.Process{}, events.RoleUnknown
	c.CloseNs, c.TxBytes, c.RxBytes, c.EndState = 5_000_000_000, 101, 200, events.EndTimeWait
	closed = events.Event{Kind: events.KindConnClosed, Conn: c}
	return existing, closed
}

func testSession(t *testing.T, out *bytes.Buffer) (*Printer, *loop, sink) {
	t.Helper()
	cfg := DefaultConfig()
	owners, drops := events.NewOwners(), events.NewDropNames(nil, nil)
	p := NewPrinter(export.NewStream(out, export.FormatJSON, func(ns uint64) time.Time { return time.Unix(0, int64(ns)).UTC() }), events.Filter{})
	p.owners, p.drops = owners, drops
	l := newLoop(&cfg, owners, drops)
	return p, l, tee{p, l}
}

// TestTeeAttributesOnce: the stream with /metrics is one pipeline. The
// start-up scan reaches the printer and the aggregator through one owners
// table; the close of an old connection is attributed once (the SYN taken
// out of its sent bytes once) and both stages see the same owner.
func TestTeeAttributesOnce(t *testing.T) {
	var out bytes.Buffer
	p, l, h := testSession(t, &out)
	existing, closed := oldConn()
	h.applyAt(&existing, time.Now())
	l.agg.Apply(&events.Event{Kind: events.KindSockSampleDone}, time.Now())
	snap := l.agg.Snapshot()
	if len(snap.Processes) != 1 || snap.Processes[0].Comm != "ctoold" ||
		snap.Processes[0].States[events.TCPEstablished].Count != 1 {
		t.Fatalf("the aggregator does not count the old connection as open under its owner: %+v", snap.Processes)
	}

	h.HandleEvent(&closed)
	h.Drained()
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if closed.Conn.TxBytes != 100 || closed.Conn.Owner.PID != 4242 || closed.Conn.Role != events.RoleActive {
		t.Errorf("close attributed wrongly: %+v", closed.Conn)
	}
	if !strings.Contains(out.String(), `"comm":"ctoold"`) || !strings.Contains(out.String(), `"tx_bytes":100,`) {
		t.Errorf("stream line: %s", out.String())
	}
	if n := p.Counts().Connections; n != 1 {
		t.Errorf("%d connections printed, want 1", n)
	}
	snap = l.agg.Snapshot()
	if len(snap.Processes) != 1 || snap.Processes[0].Closed != 1 || snap.Processes[0].TxBytes != 100 {
		t.Errorf("the aggregator's close: %+v", snap.Processes)
	}
}

// TestPrinterDoesNotAllocate: the stream's stage of the event loop, owners
// table included, allocates nothing per connection, nor per Unix connect
// count, held, merged and printed in time order.
func TestPrinterDoesNotAllocate(t *testing.T) {
	var out bytes.Buffer
	p, _, _ := testSession(t, &out)
	_, closed := oldConn()
	closed.Conn.Cookie = 0
	unixFail := events.Event{Kind: events.KindConnect, Connect: events.Connect{Owner: closed.Conn.Owner,
		Family: events.FamilyUnix, Errno: events.ErrnoEAGAIN, Count: 3, EndNs: 4_000_000_000}}
	unixFail.Connect.Path.Set([]byte("/run/php/fpm.sock"))
	now := uint64(4_500_000_000) // both held: under holdNs old
	p.now = func() uint64 { return now }
	run := func() {
		ev := closed
		p.HandleEvent(&ev)
		ev = unixFail
		p.HandleEvent(&ev) // a second count of the same key merges into the line
		p.HandleEvent(&ev)
		p.Drained()
		now += 2_000_000_000
		p.Drained() // old enough now: printed
		now -= 2_000_000_000
		if out.Len() > 1<<20 {
			out.Reset()
		}
	}
	run() // the held lines' slice grows once
	if !strings.Contains(out.String(), `"count":6`) || strings.Index(out.String(), "connect_failed") > strings.Index(out.String(), "conn_closed") {
		t.Fatalf("the Unix counts are not one line before the later close:\n%s", out.String())
	}
	allocs := testing.AllocsPerRun(1000, run)
	if allocs != 0 {
		t.Errorf("%v allocations per event", allocs)
	}
}

// TestFlightRingKeepsTheWindow: the flight recorder keeps the header and
// the blocks of the last window, and its dump reads as a recording.
func TestFlightRingKeepsTheWindow(t *testing.T) {
	ring := &flightRing{window: 2 * time.Second}
	w, err := record.NewWriter(ring, record.Options{Header: record.Header{Tracer: "test"}, KeyframeEvery: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Unix(1_700_000_000, 0)
	_, closed := oldConn()
	for i := range 10 {
		now := start.Add(time.Duration(i) * time.Second)
		if err := w.Write(&closed, now); err != nil {
			t.Fatal(err)
		}
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(ring.blocks); n < 2 || n > 4 {
		t.Errorf("%d blocks kept of a 2 s window of one block a second", n)
	}
	path := filepath.Join(t.TempDir(), "flight.ctrec")
	if err := ring.dump(path); err != nil {
		t.Fatal(err)
	}
	r, err := record.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var ev events.Event
	first, err := r.Next(&ev)
	if err != nil {
		t.Fatal(err)
	}
	if first.Before(start.Add(6 * time.Second)) {
		t.Errorf("the dump starts at %s, older than the window", first.Sub(start))
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("dump mode: %v %v", fi, err)
	}
}

// TestFlightDumpFailureIsAFailure: a flight recorder dump that cannot be
// written is reported at once, naming the file, and makes the recorder's
// error (the exit status) non-nil; recording goes on.
func TestFlightDumpFailureIsAFailure(t *testing.T) {
	var stderr bytes.Buffer
	dir := filepath.Join(t.TempDir(), "gone")
	r, err := newRecorder(RecordConfig{Flight: time.Minute, FlightDir: dir}, &stderr)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	_, closed := oldConn()
	now := time.Unix(1_700_000_000, 0)
	r.Record(&closed, now)
	r.dump(now, "SIGUSR1")
	if r.Err() == nil || !strings.Contains(stderr.String(), "tracer: ERROR: flight recorder: SIGUSR1") || !strings.Contains(stderr.String(), dir) {
		t.Fatalf("err %v, stderr %q", r.Err(), stderr.String())
	}
	// Still recording: the next event is taken without a new error.
	r.Record(&closed, now.Add(time.Second))
	if n := strings.Count(stderr.String(), "tracer: ERROR:"); n != 2 {
		t.Fatalf("%d error lines, want the 2 of the one failure: %s", n, stderr.String())
	}
	if err := r.Close(); err == nil {
		t.Fatal("Close forgot the failure")
	}
}
