package testenv

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"
)

// NewCgroup creates a cgroup v2 directory under root (the cgroup2 mount)
// with a child, and removes both after the test. It returns the parent and
// the child's paths.
func NewCgroup(t testing.TB, root string) (parent, child string) {
	t.Helper()
	// Unique across processes: test binaries of other packages (and other
	// checkouts) create cgroups beside this one at the same time.
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	parent = filepath.Join(root, "ctr-test-"+hex.EncodeToString(b[:]))
	child = filepath.Join(parent, "inner")
	if err := os.MkdirAll(child, 0o755); err != nil {
		t.Fatalf("create cgroup: %v", err)
	}
	t.Cleanup(func() {
		// Processes have exited by now; empty cgroups can be removed.
		if err := os.Remove(child); err != nil {
			t.Errorf("remove cgroup: %v", err)
		}
		if err := os.Remove(parent); err != nil {
			t.Errorf("remove cgroup: %v", err)
		}
	})
	return parent, child
}
