package kernel

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func bootTimeNs(t *testing.T) uint64 {
	t.Helper()
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		t.Fatal(err)
	}
	return uint64(ts.Nano())
}

func statIno(t *testing.T, p string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// kernelCgroupID asks the kernel for a cgroup's id through a file handle
// (kernfs encodes the 64-bit node id in it), independently of the inode
// number ResolveCgroup uses.
func kernelCgroupID(t *testing.T, dir string) (uint64, bool) {
	t.Helper()
	h, _, err := unix.NameToHandleAt(unix.AT_FDCWD, dir, 0)
	if err != nil {
		t.Logf("name_to_handle_at %s: %v; not cross-checking the id", dir, err)
		return 0, false
	}
	b := h.Bytes()
	if len(b) != 8 {
		t.Logf("file handle of %s is %d bytes, not a kernfs id; not cross-checking", dir, len(b))
		return 0, false
	}
	return binary.NativeEndian.Uint64(b), true
}

func cgroupOrSkip(t *testing.T) cgroupFS {
	t.Helper()
	cg, err := loadCgroupFS(selfMountinfo)
	if err != nil {
		t.Skipf("no cgroup v2 here: %v", err)
	}
	return cg
}

func ownCgroup(t *testing.T) string {
	t.Helper()
	f, err := os.Open("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p, err := parseCgroupV2Path(f)
	if err != nil {
		t.Skipf("own cgroup v2 path: %v", err)
	}
	return p
}

func TestResolveCgroup(t *testing.T) {
	t.Parallel()
	cg := cgroupOrSkip(t)
	rootID := statIno(t, cg.point)
	own := ownCgroup(t)
	ownDir, err := cg.dirFor(own)
	if err != nil {
		t.Fatal(err)
	}

	type resolveCase struct {
		in        string
		wantID    uint64
		wantLevel int
	}
	cases := []resolveCase{
		{cg.point, rootID, depth(cg.root)},
		{"/", rootID, depth(cg.root)},
		{ownDir, statIno(t, ownDir), depth(own)},
		{own, statIno(t, ownDir), depth(own)},
	}
	if own != "/" {
		// Relative, as a user would type it ("" is refused, not the root).
		cases = append(cases, resolveCase{strings.TrimPrefix(own, "/"), statIno(t, ownDir), depth(own)})
	}
	for _, tt := range cases {
		id, level, err := ResolveCgroup(tt.in)
		if err != nil {
			t.Errorf("ResolveCgroup(%q): %v", tt.in, err)
			continue
		}
		if id != tt.wantID || level != tt.wantLevel {
			t.Errorf("ResolveCgroup(%q) = %d, %d; want %d, %d", tt.in, id, level, tt.wantID, tt.wantLevel)
		}
	}
	if kid, ok := kernelCgroupID(t, ownDir); ok {
		if id, _, _ := ResolveCgroup(own); id != kid {
			t.Errorf("ResolveCgroup(%q) = %d, kernel's cgroup id %d", own, id, kid)
		}
	}

	for _, tt := range []struct{ in, wantErr string }{
		{"/no-such-cgroup-ctr-kern/x.service", "not found under " + cg.point + ": pass a cgroup v2 path such as"},
		{filepath.Join(cg.point, "no-such-cgroup-ctr-kern"), "not found under"},
		{filepath.Join(cg.point, "cgroup.procs"), "not found under"}, // a file, not a cgroup
		{"", "empty cgroup path"},
	} {
		_, _, err := ResolveCgroup(tt.in)
		if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("ResolveCgroup(%q): err = %v, want %q", tt.in, err, tt.wantErr)
		}
	}
	if cg.point != cgroupMountPoint {
		// Hybrid mode: the v1 hierarchies are refused.
		_, _, err := ResolveCgroup(cgroupMountPoint)
		if err == nil || !strings.Contains(err.Error(), "not on the cgroup v2 hierarchy") {
			t.Errorf("ResolveCgroup(%q) in hybrid mode: err = %v", cgroupMountPoint, err)
		}
	}
}

// newCgroup creates a cgroup two levels below the root, removed at cleanup.
func newCgroup(t *testing.T, cg cgroupFS) (rel string) {
	t.Helper()
	top := fmt.Sprintf("ctr-kern-%d-%x", os.Getpid(), rand.Uint32())
	rel = top + "/sub"
	if err := os.MkdirAll(filepath.Join(cg.point, rel), 0o755); err != nil {
		t.Skipf("cannot create a cgroup (%v): cgroup fs read-only here?", err)
	}
	t.Cleanup(func() {
		for _, d := range []string{rel, top} {
			// A cgroup whose last task was just reaped can be busy for a
			// moment; retry a bounded number of times.
			var err error
			for i := 0; i < 50; i++ {
				if err = os.Remove(filepath.Join(cg.point, d)); err == nil || errors.Is(err, os.ErrNotExist) {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			if err != nil && !errors.Is(err, os.ErrNotExist) {
				t.Errorf("remove cgroup %s: %v", d, err)
			}
		}
	})
	return rel
}

func TestResolveCgroupCreated(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a cgroup")
	}
	cg := cgroupOrSkip(t)
	rel := newCgroup(t, cg)
	dir := filepath.Join(cg.point, rel)
	want := statIno(t, dir)
	for _, in := range []string{dir, rel, "/" + rel, dir + "/"} {
		id, level, err := ResolveCgroup(in)
		if err != nil {
			t.Fatalf("ResolveCgroup(%q): %v", in, err)
		}
		if id != want || level != depth(cg.root)+2 {
			t.Errorf("ResolveCgroup(%q) = %d, %d; want %d, %d", in, id, level, want, depth(cg.root)+2)
		}
	}
	if kid, ok := kernelCgroupID(t, dir); ok && kid != want {
		t.Errorf("inode %d, kernel's cgroup id %d", want, kid)
	}
}

// readCgroupOf returns the cgroup v2 path of pid.
func readCgroupOf(t *testing.T, pid int) string {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p, err := parseCgroupV2Path(bufio.NewReader(f))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCgroupProcPath(t *testing.T) {
	cg, err := loadCgroupFS(selfMountinfo)
	if err != nil {
		t.Skipf("no cgroup v2 hierarchy here: %v", err)
	}
	want := path.Join(cg.root, "a/b")
	for _, in := range []string{"a/b", "/a/b", filepath.Join(cg.point, "a/b")} {
		got, err := CgroupProcPath(in)
		if err != nil || got != want {
			t.Errorf("CgroupProcPath(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}
