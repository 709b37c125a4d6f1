package kernel

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

// TestNetNSListByChange: a listing stats the processes it has not seen,
// and the young ones again; the others only every fullEvery; a process
// gone drops out at once; samplers asking within MaxAge share a listing.
func TestNetNSListByChange(t *testing.T) {
	t.Parallel()
	self := uint32(statIno(t, "/proc/self/ns/net"))
	proc := t.TempDir()
	addPID := func(pid int) {
		dir := filepath.Join(proc, fmt.Sprint(pid), "ns")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink("/proc/self/ns/net", filepath.Join(dir, "net")); err != nil {
			t.Fatal(err)
		}
	}
	mountinfo := filepath.Join(t.TempDir(), "mountinfo")
	if err := os.WriteFile(mountinfo, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	addPID(10)
	addPID(11)
	l := newNetNSList(proc, t.TempDir(), mountinfo)
	t0 := time.Unix(1_700_000_000, 0)
	path := func(pid int) string { return filepath.Join(proc, fmt.Sprint(pid), "ns", "net") }

	got, warnings := l.listAt(t0)
	if want := (netnsCandidates{self: {path(10), path(11)}}); !reflect.DeepEqual(got, want) || len(warnings) != 0 {
		t.Fatalf("first listing: %v %v, want %v", got, warnings, want)
	}
	if l.stats != 2 {
		t.Errorf("first listing: %d stats, want 2", l.stats)
	}
	// Within MaxAge: the same listing, no stat, even though pid 12 came.
	addPID(12)
	if got, _ := l.listAt(t0.Add(l.MaxAge / 2)); len(got[self]) != 2 || l.stats != 2 {
		t.Errorf("within MaxAge: %v, %d stats", got, l.stats)
	}
	// Past youngFor: only the new pid is stat-ed; a gone one drops out.
	if err := os.RemoveAll(filepath.Join(proc, "11")); err != nil {
		t.Fatal(err)
	}
	now := t0.Add(l.youngFor + time.Second)
	got, _ = l.listAt(now)
	if want := (netnsCandidates{self: {path(10), path(12)}}); !reflect.DeepEqual(got, want) {
		t.Errorf("after a change: %v, want %v", got, want)
	}
	if l.stats != 3 {
		t.Errorf("after a change: %d stats, want 3 (only the new pid)", l.stats)
	}
	// Pid 12 is young: stat-ed again next time, pid 10 is not.
	now = now.Add(time.Second)
	l.listAt(now)
	if l.stats != 4 {
		t.Errorf("young pid: %d stats, want 4", l.stats)
	}
	// Every fullEvery, every pid again.
	l.listAt(t0.Add(l.fullEvery))
	if l.stats != 6 {
		t.Errorf("full round: %d stats, want 6", l.stats)
	}
	if pids, err := l.PIDs(); err != nil || !reflect.DeepEqual(pids, []int{10, 12}) {
		t.Errorf("PIDs = %v, %v", pids, err)
	}
}
