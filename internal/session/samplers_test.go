package session

import (
	"testing"
	"time"

	"github.com/conntracer/conntracer/internal/aggregate"
)

// TestTimeWaitGate: a namespace is dumped the first time, whenever its
// sockstat count differs from what the tracer holds there or is unknown,
// and at least every fullDumpRounds intervals; never outside --netns.
func TestTimeWaitGate(t *testing.T) {
	snap := &aggregate.Snapshot{TimeWait: aggregate.TimeWaitSnapshot{Sockets: map[uint32]uint32{1: 5}}}
	g := timeWaitGate{every: time.Minute, published: func() *aggregate.Snapshot { return snap }}
	t0 := time.Unix(1_700_000_000, 0)
	steps := []struct {
		at   time.Duration
		ino  uint32
		tw   int
		want bool
		why  string
	}{
		{0, 1, 5, true, "never dumped"},
		{5 * time.Second, 1, 5, false, "agrees"},
		{10 * time.Second, 1, 6, true, "differs"},
		{15 * time.Second, 1, 5, false, "agrees again"},
		{20 * time.Second, 1, -1, true, "sockstat unreadable"},
		{30 * time.Second, 1, 5, false, "agrees, dumped 10 s ago"},
		{80 * time.Second, 1, 5, true, "a minute since the last dump"},
	}
	for _, s := range steps {
		if got := g.round(t0.Add(s.at))(s.ino, s.tw); got != s.want {
			t.Errorf("at %v, netns %d, sockstat tw %d (%s): dump %v, want %v", s.at, s.ino, s.tw, s.why, got, s.want)
		}
	}
	// A socket pending in substate FIN_WAIT2 needs a dump, counts agreeing.
	snap = &aggregate.Snapshot{TimeWait: aggregate.TimeWaitSnapshot{Sockets: map[uint32]uint32{1: 5}, Pending: map[uint32]uint32{1: 1}}}
	if !g.round(t0.Add(82*time.Second))(1, 5) {
		t.Errorf("netns 1 with a pending socket: not dumped")
	}
	snap = &aggregate.Snapshot{TimeWait: aggregate.TimeWaitSnapshot{Sockets: map[uint32]uint32{1: 5}}}
	// Both namespaces in one round: the new one is dumped, the other not.
	need := g.round(t0.Add(85 * time.Second))
	if need(1, 5) || !need(2, 0) {
		t.Errorf("netns 1 agreeing, dumped 5 s ago: %v (want false); netns 2, new: %v (want true)", need(1, 5), need(2, 0))
	}
	only := timeWaitGate{only: 7, every: time.Minute, published: func() *aggregate.Snapshot { return snap }}
	need = only.round(t0)
	if need(1, 3) || !need(7, 0) {
		t.Errorf("--netns 7: dumps netns 1 %v (want false), netns 7 %v (want true)", need(1, 3), need(7, 0))
	}
}
