package identity

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/conntracer/conntracer/internal/events"
	"github.com/conntracer/conntracer/internal/testenv"
)

// podmanContainer runs a real podman container (an image of a static
// busybox, built from local files) sleeping, and returns its id and pid;
// both go with the test.
func podmanContainer(t *testing.T) (cid string, pid int) {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireTool(t, "podman")
	testenv.RequireTool(t, "runc")
	bb := testenv.StaticBusybox(t)
	run := func(args ...string) string {
		t.Helper()
		out, err := exec.Command("podman", args...).CombinedOutput()
		if err != nil {
			t.Fatalf("podman %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return strings.TrimSpace(string(out))
	}
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "rootfs", "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", bb, filepath.Join(dir, "rootfs", "bin", "busybox")).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	tarball := filepath.Join(dir, "rootfs.tar")
	if out, err := exec.Command("tar", "-C", filepath.Join(dir, "rootfs"), "-cf", tarball, ".").CombinedOutput(); err != nil {
		t.Fatalf("tar: %v %s", err, out)
	}
	image := fmt.Sprintf("localhost/conntracer-v1test:%d", os.Getpid())
	run("import", "--quiet", tarball, image)
	t.Cleanup(func() { exec.Command("podman", "rmi", "-f", image).Run() })
	// runc and cgroupfs: the CI's root has no systemd and no
	// CAP_SYS_RESOURCE (as cmd/tracer's podman test).
	cid = run("run", "-d", "--runtime", "runc", "--cgroup-manager", "cgroupfs", "--network", "host",
		"--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", image, "/bin/busybox", "sleep", "600")
	t.Cleanup(func() { exec.Command("podman", "rm", "-f", "-t", "0", cid).Run() })
	pid, err := strconv.Atoi(run("inspect", "-f", "{{.State.Pid}}", cid))
	if err != nil || pid == 0 {
		t.Fatalf("container %s pid: %v", cid, err)
	}
	return cid, pid
}

// On a cgroup v1-only host processes are named by pid from the v1 lines
// of /proc/PID/cgroup. This host is hybrid, so the test reads a real
// podman container's file with its unified line dropped, as RefreshByPID
// always does: what a v1-only host shows.
func TestRefreshByPIDNamesPodmanContainerFromV1Lines(t *testing.T) {
	cid, pid := podmanContainer(t)
	content, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	v1 := v1Lines(content)
	if !bytes.Contains(v1, []byte(cid)) {
		t.Skipf("the container's v1 cgroup lines do not name it (no v1 hierarchy mounted?):\n%s", content)
	}
	t.Logf("/proc/%d/cgroup:\n%s", pid, content)

	r, _ := NewResolver(Sources{})
	if err := r.RefreshByPID("/proc"); err != nil {
		t.Fatal(err)
	}
	cg := r.CgroupOfPID(uint32(pid))
	if cg == 0 {
		t.Fatalf("container process %d has no cgroup id", pid)
	}
	info := r.Lookup(cg)
	if info == nil || info.Identity.ContainerID != cid || info.Identity.Runtime != RuntimePodman {
		t.Fatalf("container process %d: %+v, want podman container %s", pid, info, cid)
	}
	// The path is one of the v1 lines', not the unified one.
	found := false
	for _, line := range strings.Split(string(v1), "\n") {
		if f := strings.SplitN(line, ":", 3); len(f) == 3 && f[2] == info.Path {
			found = true
		}
	}
	if !found {
		t.Errorf("path %q is none of the v1 lines:\n%s", info.Path, v1)
	}
	if info.Workload != "container "+cid[:12] {
		t.Errorf("workload %q, want the short id (no runtime asked)", info.Workload)
	}
	// The test's own process: no container.
	if self := r.Lookup(r.CgroupOfPID(uint32(os.Getpid()))); self != nil && self.Identity.ContainerID != "" {
		t.Errorf("the test process is named as a container: %+v", self)
	}
	if allocs := testing.AllocsPerRun(100, func() { r.CgroupOfPID(uint32(pid)) }); allocs != 0 {
		t.Errorf("CgroupOfPID allocates %.0f times, want none (the event loop calls it)", allocs)
	}

	// The event loop's part: owners get the id by pid.
	owners := events.NewOwners()
	owners.SetCgroupByPID(r.CgroupOfPID)
	ev := events.Event{Kind: events.KindConnClosed, Conn: events.Conn{Owner: events.Process{PID: uint32(pid), CgroupID: 1}}}
	owners.Apply(&ev)
	if ev.Conn.Owner.CgroupID != cg {
		t.Errorf("owner's cgroup id %d after Apply, want %d", ev.Conn.Owner.CgroupID, cg)
	}
}

func TestCgroupV2Mounted(t *testing.T) {
	dir := t.TempDir()
	for _, tt := range []struct {
		mountinfo string
		want      bool
	}{
		{"35 25 0:30 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755\n" +
			"36 35 0:31 / /sys/fs/cgroup/systemd rw shared:10 - cgroup cgroup rw,xattr,name=systemd\n" +
			"39 35 0:34 / /sys/fs/cgroup/cpu,cpuacct rw shared:14 - cgroup cgroup rw,cpu,cpuacct\n", false},
		{"35 25 0:30 / /sys/fs/cgroup rw shared:9 - tmpfs tmpfs ro,mode=755\n" +
			"36 35 0:31 / /sys/fs/cgroup/unified rw shared:10 - cgroup2 cgroup2 rw,nsdelegate\n", true},
		{"29 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n", true},
	} {
		p := filepath.Join(dir, "mountinfo")
		if err := os.WriteFile(p, []byte(tt.mountinfo), 0o644); err != nil {
			t.Fatal(err)
		}
		if got := CgroupV2Mounted(p); got != tt.want {
			t.Errorf("CgroupV2Mounted = %v, want %v for\n%s", got, tt.want, tt.mountinfo)
		}
	}
	if !CgroupV2Mounted("/proc/self/mountinfo") {
		t.Log("this host mounts cgroup v1 only")
	}
}
