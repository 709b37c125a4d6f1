package cri

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// The names the test, as the kubelet, gives the pod and its container.
const (
	podNamespace  = "shop"
	podName       = "checkout-7d9f"
	podUID        = "7c2f1d3e-8a9b-4c5d-9e0f-1a2b3c4d5e6f"
	containerName = "api"
	workload      = podNamespace + "/" + podName + " container " + containerName
	// A second pod, with a network namespace of its own (CNI: a bridge),
	// whose namespace the tracer must name by the pod, not by the
	// `ip netns` name containerd gives it (cni-<uuid>).
	netPodName = "cart-5c8b"
	netPodUID  = "9d3e2f1a-0b1c-4d2e-8f3a-4b5c6d7e8f90"
	leaked     = 40 // connections the container opens, one every 500 ms, and never closes
)

func requireTools(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("privileged test: needs root to run containerd and load BPF programs (CI runs it as root)")
	}
	for _, tool := range []string{"containerd", "ctr", "podman", "runc"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (make test-deps installs containerd, podman and runc)", tool)
		}
	}
	bb, err := exec.LookPath("busybox")
	if err != nil {
		t.Skip("busybox not installed (apt-get install busybox-static): it is the image's one binary")
	}
	f, err := elf.Open(bb)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Skipf("%s is dynamically linked: the image needs busybox-static", bb)
		}
	}
	return bb
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s: %s", what, state)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// image builds an image of two static binaries, busybox (sleeping by
// default: the image serves as the pod's sandbox image too) and the
// leaker, and imports it into containerd's k8s.io namespace, the one the
// CRI plugin uses.
func image(t *testing.T, dir, busybox, sock string) string {
	t.Helper()
	rootfs := filepath.Join(dir, "rootfs")
	os.MkdirAll(filepath.Join(rootfs, "bin"), 0o755)
	run(t, "cp", busybox, filepath.Join(rootfs, "bin", "busybox"))
	build := exec.Command("go", "build", "-o", filepath.Join(rootfs, "bin", "leaker"), "./leaker")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./leaker: %v\n%s", err, out)
	}
	run(t, "tar", "-C", rootfs, "-cf", filepath.Join(dir, "rootfs.tar"), ".")
	ref := fmt.Sprintf("localhost/conntracer-cri:%d", os.Getpid())
	run(t, "podman", "import", "--quiet", "--change", `CMD ["/bin/busybox","sleep","100000"]`, filepath.Join(dir, "rootfs.tar"), ref)
	t.Cleanup(func() { exec.Command("podman", "rmi", "-f", ref).Run() })
	archive := filepath.Join(dir, "image.tar")
	run(t, "podman", "save", "--format", "docker-archive", "-o", archive, ref)
	run(t, "ctr", "--address", sock, "-n", "k8s.io", "images", "import", archive)
	return ref
}

// startContainerd runs containerd with its CRI plugin, all of its state
// in dir, cgroupfs and runc (the CI host's cgroups are hybrid).
func startContainerd(t *testing.T, dir string) (sock, tasks string) {
	t.Helper()
	sock = filepath.Join(dir, "containerd.sock")
	state := filepath.Join(dir, "state")
	config := fmt.Sprintf(`version = 2
root = %q
state = %q
[grpc]
  address = %q
[ttrpc]
  address = %q
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/conntracer-cri:%d"
  # The sandbox's oom_score_adj (-998) needs CAP_SYS_RESOURCE, which CI's
  # root lacks: keep it at containerd's own.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = %q
`, filepath.Join(dir, "root"), state, sock, filepath.Join(dir, "ttrpc.sock"), os.Getpid(), cniConfig(t, dir))
	cfg := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfg, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer
	cmd := exec.Command("containerd", "--config", cfg)
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("containerd log (tail):\n%s", tail(log.String(), 3000))
		}
	})
	waitFor(t, 30*time.Second, "containerd's socket", func() (bool, string) {
		c, err := net.Dial("unix", sock)
		if err != nil {
			return false, err.Error()
		}
		c.Close()
		return true, ""
	})
	return sock, filepath.Join(state, "io.containerd.runtime.v2.task")
}

// cniConfig writes a CNI network for the pods that have a network
// namespace of their own: a bridge of this test's (no gateway, no
// masquerade, removed after the test) with addresses from a range of
// 10.233.0.0/16, the plugins from Debian's containernetworking-plugins.
func cniConfig(t *testing.T, dir string) string {
	t.Helper()
	confDir := filepath.Join(dir, "cni")
	if err := os.MkdirAll(confDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat("/usr/lib/cni/bridge"); err != nil {
		t.Skip("CNI plugins not installed (make test-deps installs containernetworking-plugins)")
	}
	pid := os.Getpid()
	bridge := fmt.Sprintf("ctcri%d", pid%100000)
	conf := fmt.Sprintf(`{"cniVersion":"0.4.0","name":"ctcri","plugins":[{"type":"bridge","bridge":%q,
  "ipam":{"type":"host-local","ranges":[[{"subnet":"10.233.%d.0/24"}]],"dataDir":%q}}]}`,
		bridge, pid%250+1, filepath.Join(dir, "cni-ipam"))
	if err := os.WriteFile(filepath.Join(confDir, "10-ctcri.conflist"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { exec.Command("ip", "link", "del", bridge).Run() })
	return confDir
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// holdServer accepts connections and keeps them open: the other side of
// a leaking pool.
func holdServer(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return l.Addr().String()
}

// tracer runs the tracer binary built from this checkout; its stderr goes
// to a file the test reads while it runs.
type tracer struct {
	cmd    *exec.Cmd
	stdout bytes.Buffer
	errLog string
}

func (tr *tracer) stderr() string {
	b, _ := os.ReadFile(tr.errLog)
	return string(b)
}

func startTracer(t *testing.T, dir, bin string, args ...string) *tracer {
	t.Helper()
	f, err := os.CreateTemp(dir, "tracer-stderr")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := &tracer{cmd: exec.Command(bin, args...), errLog: f.Name()}
	tr.cmd.Stdout, tr.cmd.Stderr = &tr.stdout, f
	if err := tr.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, "the tracer to trace", func() (bool, string) {
		return strings.Contains(tr.stderr(), "tracing TCP connections"), tr.stderr()
	})
	return tr
}

// TestCRIPodNamed: containerd's CRI plugin runs a pod the test creates as
// the kubelet does; the pod's container opens connections and never
// closes them. tracer top names the process by the pod's namespace, pod
// and container name exactly as the test gave them, its pool_leak
// finding names the pod, /metrics carries them as labels, and a
// recording reported after the pod is deleted still names it.
func TestCRIPodNamed(t *testing.T) {
	busybox := requireTools(t)
	dir, err := os.MkdirTemp("", "ctcri")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	bin := filepath.Join(dir, "tracer")
	build := exec.Command("go", "build", "-o", bin, "./cmd/tracer")
	build.Dir = "../.." // the tracer's own module
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/tracer: %v\n%s", err, out)
	}

	sock, tasks := startContainerd(t, dir)
	ref := image(t, dir, busybox, sock)
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cri := runtimeapi.NewRuntimeServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if _, err := cri.Version(ctx, &runtimeapi.VersionRequest{}); err != nil {
		t.Fatalf("CRI Version: %v", err)
	}

	addr := holdServer(t)
	port := strings.Split(addr, ":")[1]
	sources := []string{"--containerd-state", tasks, "--docker-socket", "", "--podman-socket", "", "--crio-socket", "", "--identity-refresh", "200ms"}
	rec := filepath.Join(dir, "rec.ctrec")
	top := startTracer(t, dir, bin, append([]string{"top", "--once", "--output", "json", "--interval", "12s", "--record", rec,
		"--finding.pool-leak-window", "4s", "--finding.pool-leak-growth", "5"}, sources...)...)
	serve := startTracer(t, dir, bin, append([]string{"--output", "json", "--port", port, "--web.listen-address", "127.0.0.1:0"}, sources...)...)
	defer func() {
		serve.cmd.Process.Signal(os.Interrupt)
		serve.cmd.Wait()
	}()
	if !strings.Contains(top.stderr(), "container names from containerd ("+tasks+")") {
		t.Errorf("start-up notes do not name the containerd source:\n%s", top.stderr())
	}
	m := regexp.MustCompile(`serving metrics on (http://\S+)/metrics`).FindStringSubmatch(serve.stderr())
	if m == nil {
		t.Fatalf("no metrics address: %s", serve.stderr())
	}
	metrics := m[1] + "/metrics"

	// The kubelet's part: a host-network pod under a kubepods cgroup,
	// one container.
	sandbox := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: podName, Namespace: podNamespace, Uid: podUID},
		LogDirectory: filepath.Join(dir, "logs"),
		Linux: &runtimeapi.LinuxPodSandboxConfig{
			CgroupParent: "/kubepods/besteffort/pod" + podUID,
			SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
				NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE},
			},
		},
	}
	pod, err := cri.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: sandbox})
	if err != nil {
		t.Fatalf("RunPodSandbox: %v", err)
	}
	podGone := false
	removePod := func() {
		if podGone {
			return
		}
		podGone = true
		cri.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: pod.PodSandboxId})
		if _, err := cri.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: pod.PodSandboxId}); err != nil {
			t.Errorf("RemovePodSandbox: %v", err)
		}
	}
	defer removePod()
	// A pool that leaks: a connection every 500 ms for 20 s (still
	// growing when top prints, 12 s after it started), none closed.
	ctr, err := cri.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
		PodSandboxId: pod.PodSandboxId,
		Config: &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: containerName},
			Image:    &runtimeapi.ImageSpec{Image: ref},
			Command:  []string{"/bin/leaker", addr, fmt.Sprint(leaked), "500ms"},
			LogPath:  containerName + ".log",
		},
		SandboxConfig: sandbox,
	})
	if err != nil {
		t.Fatalf("CreateContainer: %v", err)
	}
	if _, err := cri.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: ctr.ContainerId}); err != nil {
		t.Fatalf("StartContainer: %v", err)
	}

	// The second pod: a sandbox alone, in a network namespace of its own.
	netPodConfig := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: netPodName, Namespace: podNamespace, Uid: netPodUID},
		LogDirectory: filepath.Join(dir, "logs2"),
		Linux: &runtimeapi.LinuxPodSandboxConfig{
			CgroupParent: "/kubepods/besteffort/pod" + netPodUID,
			SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
				NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_POD},
			},
		},
	}
	netPod, err := cri.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: netPodConfig})
	if err != nil {
		t.Fatalf("RunPodSandbox (own network namespace): %v", err)
	}
	netPodGone := false
	removeNetPod := func() {
		if netPodGone {
			return
		}
		netPodGone = true
		cri.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: netPod.PodSandboxId})
		if _, err := cri.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: netPod.PodSandboxId}); err != nil {
			t.Errorf("RemovePodSandbox: %v", err)
		}
	}
	defer removeNetPod()

	// /metrics: the pod's sockets, labelled by namespace, pod, container.
	labels := fmt.Sprintf(`container=%q,namespace=%q,pod=%q,state="ESTABLISHED"`, containerName, podNamespace, podName)
	waitFor(t, 30*time.Second, "the pod's labels in /metrics", func() (bool, string) {
		resp, err := http.Get(metrics)
		if err != nil {
			return false, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return bytes.Contains(b, []byte(labels)), grep(string(b), "conntracer_sockets")
	})

	// tracer top: the process under the pod, and the finding.
	if err := top.cmd.Wait(); err != nil {
		t.Fatalf("tracer top: %v\n%s", err, top.stderr())
	}
	var doc struct {
		Processes []struct {
			PID       uint32 `json:"pid"`
			Comm      string `json:"comm"`
			Cgroup    string `json:"cgroup"`
			Namespace string `json:"namespace"`
			Pod       string `json:"pod"`
			Container string `json:"container"`
			PodUID    string `json:"pod_uid"`
			Runtime   string `json:"runtime"`
			Workload  string `json:"workload"`
		} `json:"processes"`
		Findings []struct {
			Kind     string `json:"kind"`
			Remote   string `json:"remote"`
			Workload string `json:"workload"`
		} `json:"findings"`
		NetNSNames map[string]string `json:"netns_names"`
	}
	if err := json.Unmarshal(top.stdout.Bytes(), &doc); err != nil {
		t.Fatalf("tracer top's document: %v\n%s", err, top.stdout.String())
	}
	// The second pod's namespace (its counters are sampled like every
	// namespace's) is named by the pod, not cni-<uuid>.
	netPodNS := ""
	for ino, name := range doc.NetNSNames {
		if name == podNamespace+"/"+netPodName {
			netPodNS = ino
		}
	}
	t.Logf("netns_names: %v", doc.NetNSNames)
	if netPodNS == "" {
		t.Errorf("tracer top names no network namespace %s/%s: netns_names %v", podNamespace, netPodName, doc.NetNSNames)
	}
	named := 0
	for _, p := range doc.Processes {
		if p.Pod == podName && p.Namespace == podNamespace && p.Container == containerName {
			named++
			if p.PodUID != podUID || p.Runtime != "containerd" || p.Workload != workload {
				t.Errorf("process %d: pod_uid %q runtime %q workload %q", p.PID, p.PodUID, p.Runtime, p.Workload)
			}
		}
	}
	if named == 0 {
		t.Errorf("tracer top lists no process under %s:\n%s", workload, top.stdout.String())
	}
	leak := false
	for _, f := range doc.Findings {
		if f.Kind == "pool_leak" && f.Remote == addr && f.Workload == workload {
			leak = true
		}
	}
	if !leak {
		t.Errorf("no pool_leak finding naming %s -> %s: %+v", workload, addr, doc.Findings)
	}

	// Deleted, then reported: the recording still names the pod, and the
	// second pod's network namespace.
	removePod()
	removeNetPod()
	if netPodNS != "" {
		out, err := exec.Command(bin, "report", "--output", "json", rec).Output()
		if err != nil {
			t.Fatalf("tracer report --output json: %v", err)
		}
		var rep struct {
			Final struct {
				NetNSNames map[string]string `json:"netns_names"`
			} `json:"final"`
		}
		if err := json.Unmarshal(out, &rep); err != nil {
			t.Fatalf("tracer report's document: %v", err)
		}
		if got := rep.Final.NetNSNames[netPodNS]; got != podNamespace+"/"+netPodName {
			t.Errorf("the report names the deleted pod's namespace %s %q, want %s/%s", netPodNS, got, podNamespace, netPodName)
		}
	}
	out, err := exec.Command(bin, "report", rec).CombinedOutput()
	if err != nil {
		t.Fatalf("tracer report: %v\n%s", err, out)
	}
	found := false
	for _, line := range strings.Split(string(out), "\n") {
		found = found || strings.Contains(line, "pool_leak") && strings.Contains(line, workload)
	}
	if !found {
		t.Errorf("the report of the deleted pod has no pool_leak line naming it:\n%s", out)
	}
}

func grep(s, prefix string) string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), prefix) {
			out = append(out, sc.Text())
		}
	}
	return strings.Join(out, "\n")
}
