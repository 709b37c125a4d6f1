package kernel

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// A namespace made with `ip netns add` is named by its inode; a stale
// entry (a plain file left behind) and a missing directory name nothing.
func TestNetNSNames(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("privileged test: needs root to create a network namespace (CI runs it as root)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("ip not installed (apt-get install iproute2)")
	}
	name := "ctnames" + filepath.Base(t.TempDir())
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "delete", name).Run() })
	ino, err := NetNSByName(name)
	if err != nil {
		t.Fatal(err)
	}
	names, err := NetNSNames()
	if err != nil {
		t.Fatal(err)
	}
	if names[ino] != name {
		t.Errorf("NetNSNames()[%d] = %q, want %q", ino, names[ino], name)
	}

	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "stale"), nil, 0o644)
	if got, err := netnsNames(dir); err != nil || len(got) != 0 {
		t.Errorf("stale entry: %v, %v; want nothing", got, err)
	}
	if got, err := netnsNames(filepath.Join(dir, "absent")); err != nil || len(got) != 0 {
		t.Errorf("missing directory: %v, %v; want nothing, no error", got, err)
	}
}
