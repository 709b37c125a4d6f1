package aggregate

import (
	"github.com/conntracer/conntracer/internal/events"

	"fmt"
	"testing"
	"time"
)

// TestDepartedTotals: a process that closes connections and then expires
// leaves its counters in its group's departed totals, keyed by comm and
// cgroup, and they stay after every process of the group is gone.
func TestDepartedTotals(t *testing.T) {
	w := newFakeWorld(t, DefaultThresholds())
	a, b := proc(100, "curl"), proc(101, "curl")
	other := proc(102, "curl")
	other.CgroupID = 88 // same comm, another cgroup: another group
	for i := range 3 {
		s := w.open(a, fmt.Sprintf("10.0.0.1:%d", 40000+i), "10.0.0.2:80", events.RoleActive)
		w.advance(time.Millisecond)
		w.close(s, events.EndTimeWait)
	}
	s := w.open(other, "10.0.0.1:41000", "10.0.0.2:80", events.RoleActive)
	w.close(s, events.EndReset)
	w.sample(nil)

	// b stays busy while a and other go idle for longer than IdleExpiry.
	for range 3 {
		w.advance(time.Minute)
		s := w.open(b, "10.0.0.1:42000", "10.0.0.2:80", events.RoleActive)
		w.close(s, events.EndTimeWait)
		w.sample(nil)
	}
	snap := w.agg.Snapshot()
	if findProc(snap, 100) != nil || findProc(snap, 102) != nil || findProc(snap, 101) == nil {
		t.Fatalf("processes %v: want only pid 101 live", pids(snap))
	}
	want := []DepartedGroup{
		{Comm: "curl", CgroupID: 77, ConnTotals: ConnTotals{OpenedActive: 3, ClosedActive: 3}},
		{Comm: "curl", CgroupID: 88, ConnTotals: ConnTotals{OpenedActive: 1, ClosedActive: 1}},
	}
	if got := snap.Departed.Groups; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("departed %+v, want %+v", got, want)
	}

	// b goes too: its group's departed totals add up.
	w.advance(3 * time.Minute)
	w.sample(nil) // its TIME_WAIT sockets expire
	w.sample(nil)
	snap = w.agg.Snapshot()
	if len(snap.Processes) != 0 {
		t.Fatalf("processes %v: want none", pids(snap))
	}
	want[0].OpenedActive, want[0].ClosedActive = 6, 6
	if got := snap.Departed.Groups; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("departed %+v, want %+v", got, want)
	}
}

// TestDepartedBound: beyond MaxDepartedGroups, the longest departed groups
// are evicted into one sum, never a group with a live process.
func TestDepartedBound(t *testing.T) {
	w := newFakeWorld(t, DefaultThresholds())
	keep := proc(99, "job-0") // job-0 departs first, but a live process holds its group
	n := MaxDepartedGroups + 5
	for i := range n {
		p := proc(uint32(1000+i), fmt.Sprintf("job-%d", i))
		s := w.open(p, "10.0.0.1:40000", "10.0.0.2:80", events.RoleActive)
		w.close(s, events.EndTimeWait)
		w.sample(nil)
		w.advance(time.Second)
	}
	w.advance(3 * time.Minute)
	for range 2 { // a live process of job-0, and the rest expire
		s := w.open(keep, "10.0.0.1:40001", "10.0.0.2:80", events.RoleActive)
		w.close(s, events.EndTimeWait)
		w.sample(nil)
	}
	snap := w.agg.Snapshot()
	d := snap.Departed
	if len(d.Groups) != MaxDepartedGroups {
		t.Fatalf("%d departed groups, want %d", len(d.Groups), MaxDepartedGroups)
	}
	// job-0 kept (live), job-1..job-5 (the oldest others) evicted.
	if d.Evicted != (ConnTotals{OpenedActive: 5, ClosedActive: 5}) {
		t.Fatalf("evicted %+v, want 5 opened and closed", d.Evicted)
	}
	names := map[string]bool{}
	for _, g := range d.Groups {
		names[g.Comm] = true
	}
	for i := range 7 {
		name := fmt.Sprintf("job-%d", i)
		if wantKept := i == 0 || i > 5; names[name] != wantKept {
			t.Errorf("group %s kept %v, want %v", name, names[name], wantKept)
		}
	}
}

func pids(s *Snapshot) []uint32 {
	var out []uint32
	for _, p := range s.Processes {
		out = append(out, p.PID)
	}
	return out
}
