package aggregate

import (
	"github.com/conntracer/conntracer/internal/events"

	"fmt"
	"testing"
	"time"
)

// scenario is a small world of four processes, the incidents of the field
// notes plus a healthy pooled client, driven second by second.
type scenario struct {
	*fakeWorld
	leaker, cwServer, churner, pooled, fw2 events.Process
	open                                   map[*sock]events.TCPState
	port                                   int
}

func newScenario(t *testing.T, th Thresholds) *scenario {
	s := &scenario{
		fakeWorld: newFakeWorld(t, th),
		leaker:    proc(1001, "leaker"),
		cwServer:  proc(1002, "cw-server"),
		churner:   proc(1003, "churner"),
		pooled:    proc(1004, "pooled"),
		fw2:       proc(1005, "half-closer"),
		open:      map[*sock]events.TCPState{},
		port:      40000,
	}
	s.cwServer.Source = events.OwnerAccept
	return s
}

func (s *scenario) next() string {
	s.port++
	return fmt.Sprintf("10.0.0.1:%d", s.port)
}

func (s *scenario) connect(p events.Process, remote string, st events.TCPState) *sock {
	k := s.fakeWorld.open(p, s.next(), remote, events.RoleActive)
	s.advance(time.Microsecond)
	s.open[k] = st
	return k
}

// second plays one second of every behaviour, then samples.
func (s *scenario) second(i int) {
	// The leaker opens two connections to redis and never closes them.
	s.connect(s.leaker, "10.0.0.2:6379", events.TCPEstablished)
	s.connect(s.leaker, "10.0.0.2:6379", events.TCPEstablished)
	// The server's clients close; it never does: CLOSE_WAIT, one a second.
	k := s.fakeWorld.open(s.cwServer, "10.0.0.3:8080", fmt.Sprintf("10.0.0.9:%d", 50000+i), events.RolePassive)
	s.advance(time.Microsecond)
	s.open[k] = events.TCPCloseWait
	// The churner opens 30 short connections a second and closes first.
	for j := 0; j < 30; j++ {
		c := s.fakeWorld.open(s.churner, s.next(), "10.0.0.4:80", events.RoleActive)
		s.advance(2 * time.Millisecond)
		s.close(c, events.EndTimeWait)
	}
	// The pooled client keeps its 4 connections (opened in second 0).
	if i == 0 {
		for j := 0; j < 4; j++ {
			s.connect(s.pooled, "10.0.0.2:5432", events.TCPEstablished)
		}
		s.connect(s.fw2, "10.0.0.5:443", events.TCPFinWait2)
	}
	s.advance(time.Second - 62*time.Millisecond)
	s.sample(s.open)
}

func TestFindingsNameTheRightProcess(t *testing.T) {
	th := DefaultThresholds()
	th.TimeWaitCount = 100
	s := newScenario(t, th)
	for i := 0; i < 70; i++ {
		s.second(i)
	}
	snap := s.agg.Snapshot()
	want := map[string]struct {
		pid    uint32
		remote string
	}{
		FindingPoolLeak:       {1001, "10.0.0.2:6379"},
		FindingCloseWaitLeak:  {1002, "10.0.0.9:*"},
		FindingNoReuse:        {1003, "10.0.0.4:80"},
		FindingTimeWaitPileup: {1003, "10.0.0.4:80"},
		FindingFinWait2Stuck:  {1005, "10.0.0.5:443"},
	}
	for kind, w := range want {
		fs := findingsOf(snap, kind)
		if len(fs) != 1 {
			t.Errorf("%s: %d findings, want 1: %+v", kind, len(fs), fs)
			continue
		}
		f := fs[0]
		if f.PID != w.pid || f.Remote != w.remote || f.Message == "" || f.Remedy == "" || len(f.Evidence) == 0 || f.Since.IsZero() || f.Since.After(f.Last) {
			t.Errorf("%s: %+v, want pid %d remote %s with evidence", kind, f, w.pid, w.remote)
		}
	}
	for _, f := range snap.Findings {
		if f.PID == 1004 {
			t.Errorf("false finding about the pooled client: %+v", f)
		}
	}
	if f := findingsOf(snap, FindingPoolLeak); len(f) == 1 {
		if f[0].Evidence["growth"] < 100 || f[0].Evidence["closed_in_window"] != 0 {
			t.Errorf("pool_leak evidence %v", f[0].Evidence)
		}
	}
	if f := findingsOf(snap, FindingTimeWaitPileup); len(f) == 1 && f[0].Evidence["time_wait"] != 30*60 {
		// TIME_WAIT lasts 60 s: 30 a second for 60 s, the older ones expired.
		t.Logf("time_wait evidence %v (expiry sweeps run every 5 s)", f[0].Evidence)
	}
	p := findProc(snap, 1003)
	if p == nil || p.ShortLivedShare() != 1 || p.OpenRate[1] != 30 {
		t.Errorf("churner: %+v", p)
	}
}

func TestFindingSinceIsFirstSeen(t *testing.T) {
	th := DefaultThresholds()
	th.CloseWaitCount = 3
	s := newScenario(t, th)
	var first time.Time
	for i := 0; i < 10; i++ {
		s.second(i)
		if fs := findingsOf(s.agg.Snapshot(), FindingCloseWaitLeak); len(fs) == 1 && first.IsZero() {
			first = s.wall
			if i != 2 {
				t.Errorf("close_wait_leak first fired in second %d, want 2 (the third CLOSE_WAIT)", i)
			}
		}
	}
	fs := findingsOf(s.agg.Snapshot(), FindingCloseWaitLeak)
	if len(fs) != 1 || !fs[0].Since.Equal(first) || !fs[0].Last.Equal(s.wall) {
		t.Errorf("since %v last %v, want %v and %v", fs[0].Since, fs[0].Last, first, s.wall)
	}
	// Once the sockets are gone the finding clears.
	for k, st := range s.open {
		if st == events.TCPCloseWait {
			delete(s.open, k)
		}
	}
	s.advance(time.Second)
	s.sample(s.open)
	if fs := findingsOf(s.agg.Snapshot(), FindingCloseWaitLeak); len(fs) != 0 {
		t.Errorf("finding outlived its cause: %+v", fs)
	}
}

func TestPortExhaustionFinding(t *testing.T) {
	w := newFakeWorld(t, DefaultThresholds())
	w.agg.Apply(&events.Event{Kind: events.KindPortRange, Conn: events.Conn{NetNS: w.netns}, Sample: events.Sample{PortLow: 20000, PortHigh: 20099}}, w.wall)
	cl := proc(2001, "proxy")
	open := map[*sock]events.TCPState{}
	for i := 0; i < 79; i++ {
		open[w.open(cl, fmt.Sprintf("10.0.0.1:%d", 20000+i), "10.0.0.2:80", events.RoleActive)] = events.TCPEstablished
		w.advance(time.Microsecond)
	}
	// A server-side socket on a port outside the range holds no
	// ephemeral port.
	open[w.open(cl, "10.0.0.1:9000", "10.0.0.2:80", events.RoleActive)] = events.TCPEstablished
	w.sample(open)
	if fs := findingsOf(w.agg.Snapshot(), FindingPortExhaustion); len(fs) != 0 {
		t.Fatalf("fired at 79%%: %+v", fs)
	}
	// One more, in TIME_WAIT: 80 of 100.
	tw := w.open(cl, "10.0.0.1:20099", "10.0.0.2:80", events.RoleActive)
	w.close(tw, events.EndTimeWait)
	w.sample(open)
	snap := w.agg.Snapshot()
	fs := findingsOf(snap, FindingPortExhaustion)
	if len(fs) != 1 || fs[0].PID != 2001 || fs[0].Evidence["ports_used"] != 80 || fs[0].Evidence["range_size"] != 100 || fs[0].Evidence["time_wait"] != 1 {
		t.Fatalf("port_exhaustion: %+v", fs)
	}
	if len(snap.Ports) != 1 || snap.Ports[0].Used != 80 || snap.Ports[0].RangeSize != 100 {
		t.Errorf("ports %+v", snap.Ports)
	}
	if p := findProc(snap, 2001); p == nil || p.PortUse != 0.8 {
		t.Errorf("process port use %+v", p)
	}
}
