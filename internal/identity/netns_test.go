package identity

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/conntracer/conntracer/internal/events"
	"github.com/conntracer/conntracer/internal/kernel"
	"github.com/conntracer/conntracer/internal/testenv"
)

// containerCgroup creates a cgroup v2 directory named as podman names a
// container's ("libpod-<id>.scope") under the cgroup2 mount, and removes
// it after the test. It returns the directory, the path as
// /proc/PID/cgroup prints it, its id and the container id.
func containerCgroup(t *testing.T) (dir, path string, cgid uint64, cid string) {
	t.Helper()
	root := "/sys/fs/cgroup/unified" // hybrid hosts
	if _, err := os.Stat(filepath.Join(root, "cgroup.procs")); err != nil {
		root = "/sys/fs/cgroup"
	}
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	cid = hex.EncodeToString(b[:])
	parent := filepath.Join(root, "ctr-test-"+cid[:8])
	dir = filepath.Join(parent, "libpod-"+cid+".scope")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatalf("create cgroup: %v", err)
	}
	t.Cleanup(func() {
		os.Remove(dir)
		os.Remove(parent)
	})
	var st syscall.Stat_t
	if err := syscall.Stat(dir, &st); err != nil {
		t.Fatal(err)
	}
	rel, _ := filepath.Rel(root, dir)
	return dir, "/" + rel, st.Ino, cid
}

// A namespace is named by the container whose process lives in it over
// its `ip netns` name, by its `ip netns` name when no container is in it,
// the init namespace "host"; a namespace that went stays named, marked
// gone. Real namespaces (ip netns add), a real process and cgroup.
func TestNetNSNames(t *testing.T) {
	testenv.RequireRoot(t)
	named := testenv.NewNetNS(t) // only an `ip netns` name
	inCtr := testenv.NewNetNS(t) // a "container" lives in it
	dir, path, cgid, cid := containerCgroup(t)

	sleeper := inCtr.Command("sleep", "600")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { sleeper.Process.Kill(); sleeper.Wait() }()
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(sleeper.Process.Pid)), 0o644); err != nil {
		t.Fatalf("move the process into the container's cgroup: %v", err)
	}
	// ip netns exec execs sleep in place: the pid is the sleeper's once
	// it has switched namespaces.
	deadline := time.Now().Add(30 * time.Second)
	for nsInode(fmt.Sprintf("/proc/%d/ns/net", sleeper.Process.Pid)) != inCtr.Inode {
		if time.Now().After(deadline) {
			t.Fatal("the process never entered its namespace")
		}
		time.Sleep(10 * time.Millisecond)
	}

	res, _ := NewResolver(Sources{})
	if err := res.Refresh(map[uint64]string{cgid: path}); err != nil {
		t.Fatal(err)
	}
	nets := NewNetNSResolver("", res)
	refresh := func() {
		ip, err := kernel.NetNSNames()
		if err != nil {
			t.Fatal(err)
		}
		nets.Refresh(ip)
	}
	refresh()

	host := nets.hostInode()
	if host == 0 {
		t.Fatal("the init namespace's inode is not readable (neither kthreadd's nor PID 1's)")
	}
	for _, tt := range []struct {
		ino          uint32
		name, source string
	}{
		{named.Inode, named.Name, events.NetNSByIPNetNS},
		{inCtr.Inode, cid[:12], events.NetNSByContainer}, // no runtime answers: the short id
		{host, "host", events.NetNSByHost},
	} {
		info := nets.Info(tt.ino)
		if info == nil || info.Name != tt.name || info.Source != tt.source || info.Gone {
			t.Errorf("netns %d: %+v, want %q by %s", tt.ino, info, tt.name, tt.source)
		}
		if got := nets.Lookup(tt.ino); got != tt.name {
			t.Errorf("Lookup(%d) = %q, want %q", tt.ino, got, tt.name)
		}
	}
	if allocs := testing.AllocsPerRun(100, func() { nets.Lookup(inCtr.Inode) }); allocs != 0 {
		t.Errorf("Lookup allocates %.0f times, want none (the stream calls it on the event loop)", allocs)
	}

	// The namespaces go: deleted, their last process killed.
	named.Delete(t)
	sleeper.Process.Kill()
	sleeper.Wait()
	inCtr.Delete(t)
	refresh()
	for _, ino := range []uint32{named.Inode, inCtr.Inode} {
		if info := nets.Info(ino); info == nil || !info.Gone || info.Name == "" {
			t.Errorf("netns %d gone: %+v, want its name kept, marked gone", ino, info)
		}
	}
}

// A process of a Kubernetes pod names its namespace by the pod, over a
// plain container; the runtime's names when the cgroup resolver has them,
// the pod UID otherwise.
func TestNetNSOwnerName(t *testing.T) {
	const uid = "7c2f1d3e-8a9b-4c5d-9e0f-1a2b3c4d5e6f"
	cid := "4be1" + fmt.Sprintf("%060d", 7)
	podPath := "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod7c2f1d3e_8a9b_4c5d_9e0f_1a2b3c4d5e6f.slice/cri-containerd-" + cid + ".scope"
	proc := []byte("12:pids:/kubepods.slice\n1:name=systemd:" + podPath + "\n0::" + podPath + "\n")
	named := map[string]*events.CgroupInfo{podPath: {Path: podPath, Identity: events.Identity{
		Runtime: RuntimeContainerd, ContainerID: cid, PodUID: uid, Namespace: "shop", Pod: "checkout-7d9f"}}}
	for _, tt := range []struct {
		byPath       map[string]*events.CgroupInfo
		proc         []byte
		name, source string
		score        int
	}{
		{named, proc, "shop/checkout-7d9f", events.NetNSByPod, 2},
		{nil, proc, "pod " + uid, events.NetNSByPod, 2},
		{nil, []byte("0::/machine.slice/libpod-" + cid + ".scope\n"), cid[:12], events.NetNSByContainer, 1},
		{nil, []byte("0::/user.slice/user-0.slice/session-3.scope\n"), "", "", 0},
	} {
		name, source, score := ownerName(tt.proc, tt.byPath)
		if name != tt.name || source != tt.source || score != tt.score {
			t.Errorf("%q: %q by %q (%d), want %q by %q (%d)", tt.proc, name, source, score, tt.name, tt.source, tt.score)
		}
	}
}

// BenchmarkNetNSRefresh: one refresh of the namespace names on this host
// (a walk of /proc, a cgroup read per unnamed namespace), as the identity
// goroutine does every --identity-refresh.
func BenchmarkNetNSRefresh(b *testing.B) {
	res, _ := NewResolver(Sources{})
	nets := NewNetNSResolver("", res)
	ip, _ := kernel.NetNSNames()
	for b.Loop() {
		nets.Refresh(ip)
	}
}
