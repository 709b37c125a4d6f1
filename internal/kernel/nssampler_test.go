package kernel

import (
	"fmt"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/conntracer/conntracer/internal/events"
)

// addNetNS creates a named namespace with `ip netns add` and returns its
// inode; the caller deletes it (delNetNS), and so does the cleanup.
func addNetNS(t *testing.T, name string) uint32 {
	t.Helper()
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	ino, err := NetNSByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return ino
}

func delNetNS(t *testing.T, name string) {
	t.Helper()
	if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns del %s: %v: %s", name, err, out)
	}
}

// identityEvents returns the KindNetNSNew/Gone events of one round about
// namespace ino, in order, as "new"/"gone".
func identityEvents(t *testing.T, s *NetNSSampler, ino uint32) []string {
	t.Helper()
	evs, _ := s.Sample(1)
	var out []string
	for _, ev := range evs {
		if ev.Counters.NetNS != ino {
			continue
		}
		switch ev.Kind {
		case events.KindNetNSNew:
			out = append(out, "new")
		case events.KindNetNSGone:
			out = append(out, "gone")
		}
	}
	return out
}

// TestNetNSSamplerIdentity: a namespace created after the first round is
// reported new, one deleted is reported gone at the next round, and an
// inode the kernel hands to another namespace (inode numbers are reused
// once freed) is reported gone then new in one round, told apart by the
// netns cookie although the inode is the same.
func TestNetNSSamplerIdentity(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("privileged test: needs root to create network namespaces (CI runs it as root)")
	}
	s := NewNetNSSampler()
	s.Sample(1) // the first round: what exists is the baseline
	prefix := fmt.Sprintf("ctr-id-%d-", os.Getpid())

	a := addNetNS(t, prefix+"a")
	if got := identityEvents(t, s, a); fmt.Sprint(got) != "[new]" {
		t.Fatalf("namespace created after the first round: events %v, want [new]", got)
	}
	if got := identityEvents(t, s, a); len(got) != 0 {
		t.Fatalf("namespace unchanged: events %v, want none", got)
	}
	delNetNS(t, prefix+"a")
	if got := identityEvents(t, s, a); fmt.Sprint(got) != "[gone]" {
		t.Fatalf("namespace deleted: events %v, want [gone]", got)
	}

	// Reuse: delete a sampled namespace and create others until one gets
	// its inode. The kernel hands out the lowest free number once the old
	// namespace is freed (asynchronously, after an RCU grace period): the
	// namespaces made meanwhile are kept, filling the lower holes.
	b := addNetNS(t, prefix+"b")
	identityEvents(t, s, b)
	delNetNS(t, prefix+"b")
	for i := 0; ; i++ {
		if i == 300 {
			t.Fatalf("no new namespace reused inode %d in 300 tries", b)
		}
		if addNetNS(t, fmt.Sprintf("%sc%d", prefix, i)) == b {
			break
		}
		pids, err := listPIDs("/proc")
		if err != nil {
			t.Fatal(err)
		}
		// Ours is neither mounted nor entered by a process any more: one
		// listed under its inode is another process's.
		if cands, _ := listNetNS("/proc", pids, netnsRunDir, selfMountinfo); cands[b] != nil {
			t.Skipf("inode %d was taken by a namespace of another process (a test beside this one): reuse not observable in this run", b)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got := identityEvents(t, s, b); fmt.Sprint(got) != "[gone new]" {
		t.Fatalf("inode %d reused by another namespace: events %v, want [gone new]", b, got)
	}
}
