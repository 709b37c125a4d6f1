package testenv

import (
	"os"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

const conntrackMaxPath = "/proc/sys/net/netfilter/nf_conntrack_max"

// conntrackMaxLock serialises, across processes, the windows in which a
// test lowers nf_conntrack_max: two test binaries lowering it at once
// (two checkouts' suites on one machine) would otherwise each save the
// other's lowered value, and the last to restore would leave it lowered.
const conntrackMaxLock = "/run/conntracer-test-nf_conntrack_max.lock"

// LowerConntrackMax sets the global nf_conntrack_max and returns a function
// that restores it; t.Cleanup restores it too, even on failure. Other
// tests' namespaces share the limit: keep the window short. The window
// holds conntrackMaxLock, so the value saved is never another test's.
func LowerConntrackMax(t testing.TB, v int) (restore func()) {
	t.Helper()
	lock, err := os.OpenFile(conntrackMaxLock, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatalf("open %s: %v", conntrackMaxLock, err)
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		lock.Close()
		t.Fatalf("lock %s: %v", conntrackMaxLock, err)
	}
	old, err := os.ReadFile(conntrackMaxPath)
	if err != nil {
		lock.Close()
		t.Skipf("nf_conntrack not loaded: %v", err)
	}
	done := false
	restore = func() {
		if done {
			return
		}
		done = true
		if err := os.WriteFile(conntrackMaxPath, old, 0o644); err != nil {
			t.Errorf("restore nf_conntrack_max to %s: %v", strings.TrimSpace(string(old)), err)
		}
		lock.Close() // releases the flock
	}
	t.Cleanup(restore)
	if err := os.WriteFile(conntrackMaxPath, []byte(strconv.Itoa(v)), 0o644); err != nil {
		t.Fatalf("lower nf_conntrack_max: %v", err)
	}
	return restore
}
