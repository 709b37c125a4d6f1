package deploy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/conntracer/conntracer/internal/testenv"
)

func TestMain(m *testing.M) {
	testenv.MaybeRunHelper() // the image test's clients and server
	os.Exit(m.Run())
}

// capNumbers are the capabilities the Dockerfile and the DaemonSet may
// name (linux/capability.h), by libcap's name without "cap_".
var capNumbers = map[string]uint{
	"dac_read_search": 2, "setpcap": 8, "net_admin": 12, "sys_ptrace": 19, "sys_admin": 21,
	"sys_resource": 24, "perfmon": 38, "bpf": 39,
}

// dockerfile is what the image test takes from deploy/Dockerfile.
type dockerfile struct {
	build     string   // the build stage's `go build` command
	setcap    []string // the capability names of its setcap, lower case, without cap_
	setcapArg string   // and its argument as written
	changes   []string // the final stage's USER, EXPOSE, ENTRYPOINT and CMD, for podman import
}

func readDockerfile(t *testing.T) dockerfile {
	t.Helper()
	f, err := os.Open("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var d dockerfile
	final := false
	var line string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// Join continuation lines.
		line += strings.TrimSpace(sc.Text())
		if strings.HasSuffix(line, `\`) {
			line = strings.TrimSuffix(line, `\`) + " "
			continue
		}
		l := line
		line = ""
		switch {
		case strings.HasPrefix(l, "FROM "):
			final = strings.HasPrefix(l, "FROM scratch")
		case strings.HasPrefix(l, "RUN ") && strings.Contains(l, " go build "):
			d.build = strings.TrimPrefix(l, "RUN ")
		case strings.HasPrefix(l, "RUN ") && strings.Contains(l, "setcap "):
			f := strings.Fields(l[strings.Index(l, "setcap ")+len("setcap "):])
			if len(f) < 2 || f[1] != "/tracer" {
				t.Fatalf("Dockerfile: setcap line not understood: %s", l)
			}
			d.setcapArg = f[0]
			caps, flags, _ := strings.Cut(f[0], "+")
			if flags != "p" {
				t.Fatalf("Dockerfile: setcap %s: with the effective bit, the image does not start where the runtime grants fewer capabilities (exec fails with EPERM); use +p", f[0])
			}
			for _, c := range strings.Split(caps, ",") {
				d.setcap = append(d.setcap, strings.TrimPrefix(strings.ToLower(c), "cap_"))
			}
		case final && (strings.HasPrefix(l, "USER ") || strings.HasPrefix(l, "EXPOSE ") ||
			strings.HasPrefix(l, "ENTRYPOINT ") || strings.HasPrefix(l, "CMD ")):
			d.changes = append(d.changes, l)
		}
	}
	if d.build == "" || d.setcap == nil || len(d.changes) != 4 {
		t.Fatalf("Dockerfile: build %q, setcap %v, final stage %q: not the shape this test knows", d.build, d.setcap, d.changes)
	}
	return d
}

// boundingSet returns this process's capability bounding set (CapBnd):
// a container can be given no capability outside it.
func boundingSet(t *testing.T) uint64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "CapBnd:"); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatal("no CapBnd in /proc/self/status")
	return 0
}

// TestDaemonSetImageRuns builds the image deploy/Dockerfile describes and
// runs it the way the DaemonSet does, then checks that it traces.
//
// The image: the Dockerfile's own `go build` command (the build stage's
// golang image cannot be pulled here: no registry is reachable, so the
// host's Go runs it), its setcap capabilities on the binary, and its final
// stage (scratch, USER, EXPOSE, ENTRYPOINT, CMD) through `podman import`.
// The container: the manifest's user, capabilities (drop ALL, add its
// list), read-only root, no seccomp, host PID and network, its hostPath
// mounts and its args, under rootful podman with runc. It must serve
// /metrics as uid 65534 and count, exactly, the connections made in a
// fresh namespace.
func TestDaemonSetImageRuns(t *testing.T) {
	testenv.RequireRoot(t)
	for _, tool := range []string{"podman", "runc", "setcap", "tar"} {
		testenv.RequireTool(t, tool)
	}
	d := readDockerfile(t)
	c, spec := daemonSetContainer(t)

	// What the host can grant: a capability outside this process's
	// bounding set (CAP_SYS_RESOURCE on the development machine) cannot be
	// added to the container. The image must start without it (its file
	// capabilities are permitted only, +p), as it must on a node whose
	// runtime does not grant it: the tracer needs it only to raise
	// RLIMIT_MEMLOCK on kernels that charge BPF memory to it (before 5.11).
	bnd := boundingSet(t)
	grantable := func(name string) bool {
		n, ok := capNumbers[name]
		if !ok {
			t.Fatalf("capability %q: unknown to this test (add it to capNumbers)", name)
		}
		return bnd&(1<<n) != 0
	}
	for _, name := range d.setcap {
		if !grantable(name) {
			t.Logf("CAP_%s is outside this host's bounding set: the container runs without it", strings.ToUpper(name))
		}
	}

	dir := t.TempDir()
	rootfs := filepath.Join(dir, "rootfs")
	if err := os.MkdirAll(rootfs, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(rootfs, "tracer")
	build := strings.Replace(d.build, "-o /tracer", "-o "+bin, 1)
	cmd := exec.Command("sh", "-c", build)
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), "VERSION=imagetest")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("the Dockerfile's build: %s: %v\n%s", build, err, out)
	}
	run(t, "setcap", d.setcapArg, bin)
	tarball := filepath.Join(dir, "image.tar")
	run(t, "tar", "--xattrs", "--xattrs-include=security.capability", "-C", rootfs, "-cf", tarball, ".")
	image := fmt.Sprintf("localhost/conntracer-imagetest:%d", os.Getpid())
	args := []string{"import", "--quiet"}
	for _, ch := range d.changes {
		args = append(args, "--change", ch)
	}
	run(t, "podman", append(args, tarball, image)...)
	t.Cleanup(func() { exec.Command("podman", "rmi", "-f", image).Run() })

	// The DaemonSet's pod spec as podman flags.
	sc := c.SecurityContext
	if sc == nil || sc.RunAsUser == nil || sc.RunAsGroup == nil || sc.Capabilities == nil {
		t.Fatal("the DaemonSet's container has no user or capabilities")
	}
	name := fmt.Sprintf("conntracer-imagetest-%d", os.Getpid())
	port := freePort(t)
	// The rlimits: podman raises the open-file and process limits by
	// default, which needs CAP_SYS_RESOURCE; lowering them does not.
	args = []string{"run", "-d", "--name", name, "--runtime", "runc", "--cgroup-manager", "cgroupfs",
		"--ulimit", "nofile=4096:4096", "--ulimit", "nproc=1024:1024"}
	args = append(args, "--user", fmt.Sprintf("%d:%d", *sc.RunAsUser, *sc.RunAsGroup))
	for _, d := range sc.Capabilities.Drop {
		args = append(args, "--cap-drop", string(d))
	}
	for _, a := range sc.Capabilities.Add {
		if grantable(strings.ToLower(string(a))) {
			args = append(args, "--cap-add", string(a))
		}
	}
	if sc.ReadOnlyRootFilesystem != nil && *sc.ReadOnlyRootFilesystem {
		args = append(args, "--read-only")
	}
	if sc.SeccompProfile != nil && sc.SeccompProfile.Type == corev1.SeccompProfileTypeUnconfined {
		args = append(args, "--security-opt", "seccomp=unconfined")
	}
	if sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation {
		args = append(args, "--security-opt", "no-new-privileges")
	}
	if spec.HostPID {
		args = append(args, "--pid", "host")
	}
	if spec.HostNetwork {
		args = append(args, "--network", "host")
	}
	hostPaths := map[string]string{}
	for _, v := range spec.Volumes {
		if v.HostPath != nil {
			hostPaths[v.Name] = v.HostPath.Path
		}
	}
	for _, m := range c.VolumeMounts {
		src := hostPaths[m.Name]
		if src == "" {
			t.Fatalf("volume mount %s: not a hostPath volume", m.Name)
		}
		if _, err := os.Stat(src); err != nil {
			if err := os.MkdirAll(src, 0o755); err != nil { // DirectoryOrCreate
				t.Fatal(err)
			}
		}
		opt := "rw"
		if m.ReadOnly {
			opt = "ro"
		}
		if m.MountPropagation != nil && *m.MountPropagation == corev1.MountPropagationHostToContainer {
			opt += ",rslave"
		}
		args = append(args, "-v", src+":"+m.MountPath+":"+opt)
	}
	// The manifest's args, with the node's address ($(NODE_IP)) this
	// host's loopback and the port a free one (another tracer may hold
	// 9477).
	args = append(args, image)
	for _, a := range c.Args {
		if strings.HasPrefix(a, "--web.listen-address=") {
			a = fmt.Sprintf("--web.listen-address=127.0.0.1:%d", port)
		}
		args = append(args, a)
	}
	run(t, "podman", args...)
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := exec.Command("podman", "logs", name).CombinedOutput()
			t.Logf("the container's output:\n%s", out)
		}
		exec.Command("podman", "rm", "-f", "-t", "0", name).Run()
	})

	addr := fmt.Sprintf("127.0.0.1:%d", port)
	testenv.WaitFor(t, 30*time.Second, "the container's /-/ready", func() (bool, string) {
		st, out := get(addr, "/-/ready")
		return st == http.StatusOK, fmt.Sprint(st, " ", out)
	})

	// It runs as the manifest's user, with the capabilities the tracer
	// keeps after attaching (README, "Privileges"): never all of them.
	pid := strings.TrimSpace(run(t, "podman", "inspect", "-f", "{{.State.Pid}}", name))
	status, err := os.ReadFile("/proc/" + pid + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(status), "\n") {
		f := strings.Fields(l)
		if len(f) >= 2 && (f[0] == "Uid:" || f[0] == "Gid:") {
			want := *sc.RunAsUser
			if f[0] == "Gid:" {
				want = *sc.RunAsGroup
			}
			if f[1] != strconv.FormatInt(want, 10) {
				t.Errorf("the tracer's %s %s, want %d", f[0], strings.Join(f[1:], " "), want)
			}
		}
		if len(f) == 2 && f[0] == "CapEff:" {
			eff, _ := strconv.ParseUint(f[1], 16, 64)
			if eff&(1<<capNumbers["bpf"]) != 0 || eff&(1<<capNumbers["setpcap"]) != 0 {
				t.Errorf("the tracer kept CAP_BPF or CAP_SETPCAP after attaching: CapEff %s", f[1])
			}
			t.Logf("the tracer runs with CapEff %s", f[1])
		}
	}

	// Connections in a fresh namespace, counted exactly.
	ns := testenv.NewNetNS(t)
	srv := testenv.StartServer(t, ns, "img-server")
	const n = 12
	var plan []testenv.Conn
	for range n {
		plan = append(plan, testenv.Conn{Addr: srv.Addr4(), Req: 10, Resp: 10, Mode: testenv.ClientCloses})
	}
	testenv.RunClient(t, ns, "img-client", plan)
	// The client's opens by its command name, and its TIME_WAIT sockets
	// in the namespace: the second needs the tracer to enter the
	// namespace (sock_diag), with the capabilities it kept.
	tw := fmt.Sprintf(`conntracer_time_wait_sockets{netns="%d",netns_name=%q} %d`, ns.Inode, ns.Name, n)
	testenv.WaitFor(t, 15*time.Second, fmt.Sprintf("%d opens by img-client and %q", n, tw), func() (bool, string) {
		_, body := get(addr, "/metrics")
		var seen []string
		var opened float64
		for _, l := range strings.Split(body, "\n") {
			if strings.HasPrefix(l, "conntracer_connections_opened_total{") && strings.Contains(l, `comm="img-client"`) && strings.Contains(l, `role="active"`) {
				v, _ := strconv.ParseFloat(l[strings.LastIndexByte(l, ' ')+1:], 64)
				opened += v
				seen = append(seen, l)
			}
			if strings.HasPrefix(l, "conntracer_time_wait_sockets{") {
				seen = append(seen, l)
			}
		}
		return opened == n && slices.Contains(seen, tw), strings.Join(seen, "\n")
	})
}

// daemonSetContainer returns the DaemonSet's tracer container and its pod
// spec.
func daemonSetContainer(t *testing.T) (corev1.Container, corev1.PodSpec) {
	t.Helper()
	for _, doc := range splitYAML(t, "kubernetes/conntracer.yaml") {
		var meta struct{ Kind string }
		if err := yaml.Unmarshal(doc, &meta); err != nil {
			t.Fatal(err)
		}
		if meta.Kind != "DaemonSet" {
			continue
		}
		var ds struct {
			Spec struct {
				Template struct {
					Spec corev1.PodSpec `json:"spec"`
				} `json:"template"`
			} `json:"spec"`
		}
		if err := yaml.Unmarshal(doc, &ds); err != nil {
			t.Fatal(err)
		}
		spec := ds.Spec.Template.Spec
		if len(spec.Containers) != 1 {
			t.Fatalf("the DaemonSet has %d containers, want the tracer alone", len(spec.Containers))
		}
		return spec.Containers[0], spec
	}
	t.Fatal("no DaemonSet in kubernetes/conntracer.yaml")
	return corev1.Container{}, corev1.PodSpec{}
}

// run runs a command and returns its standard output, failing the test
// with its output if it fails.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, out, stderr.String())
	}
	return string(out)
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func get(addr, path string) (int, string) {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + addr + path)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
