package kernel

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestNetNSInode(t *testing.T) {
	t.Parallel()
	got, err := NetNSInode(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if want := statIno(t, "/proc/self/ns/net"); uint64(got) != want {
		t.Errorf("NetNSInode(self) = %d, want %d", got, want)
	}
	if _, err := NetNSInode(1 << 30); err == nil {
		t.Error("NetNSInode of a pid that cannot exist succeeded")
	}
	for _, name := range []string{"", ".", "..", "a/b", "ctr-kern-does-not-exist"} {
		if _, err := NetNSByName(name); err == nil {
			t.Errorf("NetNSByName(%q) succeeded", name)
		}
	}
	_, err = NetNSByName("ctr-kern-does-not-exist")
	if err == nil || !strings.Contains(err.Error(), "not found in /run/netns") {
		t.Errorf("NetNSByName(missing): %v", err)
	}
}

func TestListNetNS(t *testing.T) {
	t.Parallel()
	self := uint32(statIno(t, "/proc/self/ns/net"))
	proc := t.TempDir()
	// Pid 10's ns/net leads to our namespace; pid 11 exited (its link
	// leads nowhere), which is not worth a warning.
	for pid, target := range map[int]string{10: "/proc/self/ns/net", 11: "/nonexistent/ns/net"} {
		dir := filepath.Join(proc, fmt.Sprint(pid), "ns")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(target, filepath.Join(dir, "net")); err != nil {
			t.Fatal(err)
		}
	}
	// A file left in /run/netns without its bind mount is reported.
	runDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(runDir, "stale"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	// A bind mount elsewhere, as container runtimes make, is found
	// through mountinfo.
	mountinfo := filepath.Join(t.TempDir(), "mountinfo")
	lines := fmt.Sprintf("612 25 0:4 net:[%d] /proc/self/ns/net rw - nsfs nsfs rw\n"+
		"613 25 0:4 mnt:[1] /proc/self/ns/mnt rw - nsfs nsfs rw\n"+
		"614 25 0:4 net:[2] /nonexistent rw - nsfs nsfs rw\n", self)
	if err := os.WriteFile(mountinfo, []byte(lines), 0o644); err != nil {
		t.Fatal(err)
	}

	got, warnings := listNetNS(proc, []int{10, 11}, runDir, mountinfo)
	want := netnsCandidates{self: {filepath.Join(proc, "10", "ns", "net"), "/proc/self/ns/net"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("candidates = %v, want %v", got, want)
	}
	if len(warnings) != 1 || !strings.Contains(warnings[0].Error(), `"stale"`) {
		t.Errorf("warnings = %v, want one about the stale file", warnings)
	}
	if ids := got.inodes(); len(ids) != 1 || ids[0] != self {
		t.Errorf("inodes = %v", ids)
	}
}
