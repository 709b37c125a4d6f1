package record

import (
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/conntracer/conntracer/internal/aggregate"
	"github.com/conntracer/conntracer/internal/events"
)

// oldRecording was written by `tracer record` built at commit 0a55346,
// before the relayout into internal/probe, internal/aggregate...:
//
//	tracer record -o out.ctrec --duration 6s --netns ctrec-old \
//	    --conntrack-entries off --unix-interval 0
//
// while, in the fresh namespace ctrec-old (loopback only), a process
// named ctr-server accepted 5 connections on 127.0.0.1:8080, and a process
// named ctr-client made them one after the other (5 bytes sent, 10
// received, the client closing first, so its sockets went to TIME_WAIT and
// the server's closed from CLOSE_WAIT), then one connect to 127.0.0.1:8081,
// where nothing listens (refused).
const oldRecording = "testdata/tracer-0a55346.ctrec"

// Pids of the recording's processes.
const (
	oldClientPID = 14665
	oldServerPID = 14623
)

// readOld reads the recording's header, then its events as the tests of
// this package read every recording (readAll).
func readOld(t *testing.T) (Header, Stats, []stamped) {
	t.Helper()
	r, err := Open(oldRecording)
	if err != nil {
		t.Fatal(err)
	}
	h := r.Header()
	r.Close()
	b, err := os.ReadFile(oldRecording)
	if err != nil {
		t.Fatal(err)
	}
	evs, st, err := readAll(t, b)
	if err != nil {
		t.Fatalf("event %d: %v", len(evs), err)
	}
	return h, st, evs
}

// TestReadsRecordingOfOldTracer reads the recording as the current code
// does: its header, every block, and the events the traffic made.
func TestReadsRecordingOfOldTracer(t *testing.T) {
	h, st, evs := readOld(t)
	if h.Version != 1 || h.Host != "vm" || h.Kernel != "6.18.44-fc-v1300" || h.Tracer != "(devel)" ||
		!strings.Contains(h.Command, "record -o") || !strings.Contains(h.Command, "--netns ctrec-old") ||
		h.BootTimeNs == 0 || h.Created.IsZero() {
		t.Errorf("header %+v", h)
	}
	if st.Blocks != 5 || st.Events != 47 || st.LostBytes != 0 || st.LostBlocks != 0 || st.RoundsSkipped != 0 {
		t.Errorf("stats %+v, want 5 intact blocks of 47 events", st)
	}

	kinds := map[string]int{}
	for _, e := range evs {
		kinds[e.ev.Kind.String()]++
	}
	want := map[string]int{
		"conn_closed": 11, "connect": 1,
		"sock_sample_done": 6, "time_wait": 5, "time_wait_done": 4, "port_range": 2,
		"drop": 6, "drop_count": 7, "kernel_counters": 1, "tracer_counters": 4,
	}
	if len(kinds) != len(want) {
		t.Errorf("kinds %v, want %v", kinds, want)
	}
	for k, n := range want {
		if kinds[k] != n {
			t.Errorf("%d %s events, want %d (all: %v)", kinds[k], k, n, kinds)
		}
	}

	server := netip.MustParseAddrPort("127.0.0.1:8080")
	var clientTW, serverCW, refused int
	for _, e := range evs {
		c := &e.ev.Conn
		switch {
		case e.ev.Kind == events.KindConnClosed && string(c.Owner.CommBytes()) == "ctr-client" && c.Remote == server:
			if c.Owner.PID != oldClientPID || c.Role != events.RoleActive || c.EndState != events.EndTimeWait ||
				c.TxBytes != 5 || c.RxBytes != 10 || !c.SeenOpen || c.Local.Addr() != server.Addr() {
				t.Errorf("client connection %+v", c)
			}
			clientTW++
		case e.ev.Kind == events.KindConnClosed && string(c.Owner.CommBytes()) == "ctr-server":
			if c.Owner.PID != oldServerPID || c.Role != events.RolePassive || c.EndState != events.EndCloseWait ||
				c.TxBytes != 10 || c.RxBytes != 5 || c.Local != server {
				t.Errorf("server connection %+v", c)
			}
			serverCW++
		case e.ev.Kind == events.KindConnect:
			k := &e.ev.Connect
			if string(k.Owner.CommBytes()) != "ctr-client" || k.Owner.PID != oldClientPID || k.Errno != events.ErrnoECONNREFUSED ||
				k.Remote != netip.MustParseAddrPort("127.0.0.1:8081") {
				t.Errorf("connect %+v", k)
			}
			refused++
		}
	}
	if clientTW != 5 || serverCW != 5 || refused != 1 {
		t.Errorf("%d client closes into TIME_WAIT, %d server closes from CLOSE_WAIT, %d refused connects; want 5, 5, 1",
			clientTW, serverCW, refused)
	}
}

// TestReplaysRecordingOfOldTracer replays the recording through the
// aggregator, as `tracer report` does, and finds the traffic's
// connections per process, the client's TIME_WAIT sockets confirmed by the
// recorded dump, and the refused connect.
func TestReplaysRecordingOfOldTracer(t *testing.T) {
	_, _, evs := readOld(t)
	agg := aggregate.NewAggregator(aggregate.DefaultThresholds())
	agg.SetConnectRules(aggregate.DefaultConnectRules(), nil)
	for i := range evs {
		agg.Apply(&evs[i].ev, evs[i].now)
	}
	s := agg.Snapshot()

	procs := map[string]aggregate.ProcessSnapshot{}
	for _, p := range s.Processes {
		procs[p.Comm] = p
	}
	if len(procs) != 2 {
		t.Errorf("processes %+v, want ctr-client and ctr-server", s.Processes)
	}
	// The client: 5 connections to the server and the refused one, all
	// its own; its 5 closes into TIME_WAIT still hold their sockets.
	if c := procs["ctr-client"]; c.PID != oldClientPID || c.Closed != 6 || c.ClosedActive != 6 || c.ClosedPassive != 0 ||
		c.Opened != 6 || c.TimeWait != 5 || c.TxBytes != 25 || c.RxBytes != 50 ||
		c.Ends[events.EndTimeWait] != 5 || c.Ends[events.EndConnectFailed] != 1 {
		t.Errorf("ctr-client %+v", c)
	}
	if c := procs["ctr-server"]; c.PID != oldServerPID || c.Closed != 5 || c.ClosedPassive != 5 || c.ClosedActive != 0 ||
		c.TimeWait != 0 || c.TxBytes != 50 || c.RxBytes != 25 || c.Ends[events.EndCloseWait] != 5 {
		t.Errorf("ctr-server %+v", c)
	}
	if tw := s.TimeWait; tw.Total != 5 || tw.Unattributed != 0 || tw.Reconciliations != 2 {
		t.Errorf("TIME_WAIT census %+v, want the client's 5, attributed, after 2 dumps", tw)
	}
	if len(s.ConnectFailures) != 1 {
		t.Fatalf("connect failures %+v", s.ConnectFailures)
	}
	if f := s.ConnectFailures[0]; f.PID != oldClientPID || f.Comm != "ctr-client" || f.Destination != "127.0.0.1:8081" ||
		f.Total != 1 || f.Counts["ECONNREFUSED"] != 1 {
		t.Errorf("connect failure %+v", f)
	}
}
