// Package testenv gives the privileged tests real surroundings: a fresh
// network namespace per test, and client and server processes in it that
// make connections with known sizes and known close order.
//
// The processes are the test binary itself, re-executed in helper mode
// under a chosen name (a symlink), so that each side has its own pid and
// comm. A test package enables this by calling MaybeRunHelper from TestMain.
package testenv

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/conntracer/conntracer/internal/kernel"
)

// RequireRoot skips the test, saying why, unless it runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("privileged test: needs root to load BPF programs and create network namespaces (CI runs it as root)")
	}
}

// NetNS is a network namespace created for one test and deleted after it.
type NetNS struct {
	Name    string
	Inode   uint32
	deleted bool
}

// NewNetNS creates a namespace with a unique name and loopback up, and
// deletes it when the test ends, pass or fail.
func NewNetNS(t testing.TB) *NetNS {
	t.Helper()
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	name := "ctr-test-" + hex.EncodeToString(b[:])
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	n := &NetNS{Name: name}
	t.Cleanup(func() {
		if n.deleted {
			return
		}
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	if out, err := exec.Command("ip", "-n", name, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("bring up lo in %s: %v: %s", name, err, out)
	}
	ino, err := kernel.NetNSByName(name)
	if err != nil {
		t.Fatal(err)
	}
	n.Inode = ino
	return n
}

// Delete deletes the namespace now (it goes once no process is left in
// it), for tests of what happens when namespaces go.
func (n *NetNS) Delete(t testing.TB) {
	t.Helper()
	if out, err := exec.Command("ip", "netns", "del", n.Name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns del %s: %v: %s", n.Name, err, out)
	}
	n.deleted = true
}

// Command returns a command that runs inside the namespace.
func (n *NetNS) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
}

// Output runs a command inside the namespace and returns its stdout.
func (n *NetNS) Output(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := n.Command(name, args...).Output()
	if err != nil {
		t.Fatalf("%s %s in %s: %v", name, strings.Join(args, " "), n.Name, err)
	}
	return string(out)
}

// helperBinary returns the path of the test binary under the given name:
// the kernel takes a process's comm from the file it executes.
func helperBinary(t testing.TB, comm string) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), comm)
	if err := os.Symlink(self, path); err != nil {
		t.Fatal(err)
	}
	return path
}
