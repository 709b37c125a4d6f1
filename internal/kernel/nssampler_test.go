package kernel

import (
	"fmt"
	"os"
	"os/exec"
	"testing"

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
// reported new, one deleted is reported gone at the next round; each
// namespace has a netns cookie of its own that does not change, and an
// inode seen with another namespace's cookie (inode numbers are reused
// once freed) is reported gone then new.
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

	// Reuse. The kernel gives a freed inode number to the next namespace,
	// but when is not the test's to choose (every tracer running beside it
	// holds ctnetlink sockets that keep namespaces alive a while): the
	// cookies are read from two real namespaces, and the sampler is shown
	// the second under the first's inode, as a reuse would show it.
	cookie := func(name string) uint64 {
		t.Helper()
		f, err := os.Open("/run/netns/" + name)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		p, err := ReadNetNSProc(int(f.Fd()))
		if err != nil {
			t.Fatal(err)
		}
		return p.Cookie
	}
	if netnsCookie() == 0 {
		t.Skip("the rest tells a reused inode by its netns cookie (SO_NETNS_COOKIE, Linux 5.14+), which this kernel lacks: namespaces are told by inode only")
	}
	b := addNetNS(t, prefix+"b")
	addNetNS(t, prefix+"c")
	cb, cc := cookie(prefix+"b"), cookie(prefix+"c")
	if cb == 0 || cc == 0 || cb == cc || cookie(prefix+"b") != cb {
		t.Fatalf("netns cookies %d (again %d) and %d: want two distinct stable non-zero ones (SO_NETNS_COOKIE, Linux 5.14+)", cb, cookie(prefix+"b"), cc)
	}
	if got := identityEvents(t, s, b); fmt.Sprint(got) != "[new]" {
		t.Fatalf("namespace b: events %v, want [new]", got)
	}
	if got := s.identity(b, cc, 1); len(got) != 2 || got[0].Kind != events.KindNetNSGone || got[1].Kind != events.KindNetNSNew {
		t.Fatalf("inode %d now with namespace c's cookie: events %v, want gone then new", b, got)
	}
	if got := s.identity(b, cc, 1); len(got) != 0 {
		t.Fatalf("same namespace again: events %v, want none", got)
	}
}
