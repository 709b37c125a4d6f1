package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/conntracer/conntracer/internal/testenv"
)

// podmanEnv is a rootful podman with an image built from local files (no
// registry is reachable) and its API served on a socket of the test's.
type podmanEnv struct {
	image, socket string
}

// runArgs are what podman needs on hosts like the CI's: runc (crun
// refuses hybrid cgroups), cgroupfs, rlimits within the hard limits (no
// CAP_SYS_RESOURCE), the host's network (the container talks to the
// test's server on loopback).
var podmanRunArgs = []string{"run", "-d", "--runtime", "runc", "--cgroup-manager", "cgroupfs",
	"--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", "--network", "host"}

func podman(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("podman", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("podman %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// newPodman imports a one-binary image (a static busybox) and starts the
// API service; both go with the test.
func newPodman(t *testing.T) *podmanEnv {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireTool(t, "podman")
	testenv.RequireTool(t, "runc")
	bb := testenv.StaticBusybox(t)
	dir := t.TempDir()
	rootfs := filepath.Join(dir, "rootfs")
	if err := os.MkdirAll(filepath.Join(rootfs, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", bb, filepath.Join(rootfs, "bin", "busybox")).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	tarball := filepath.Join(dir, "rootfs.tar")
	if out, err := exec.Command("tar", "-C", rootfs, "-cf", tarball, ".").CombinedOutput(); err != nil {
		t.Fatalf("tar: %v %s", err, out)
	}
	env := &podmanEnv{image: fmt.Sprintf("localhost/conntracer-idtest:%d", os.Getpid()), socket: filepath.Join(dir, "podman.sock")}
	podman(t, "import", "--quiet", tarball, env.image)
	t.Cleanup(func() { exec.Command("podman", "rmi", "-f", env.image).Run() })

	svc := exec.Command("podman", "system", "service", "--time=0", "unix://"+env.socket)
	if err := svc.Start(); err != nil {
		t.Fatalf("podman system service: %v", err)
	}
	t.Cleanup(func() {
		svc.Process.Kill()
		svc.Wait()
	})
	testenv.WaitFor(t, 20*time.Second, "podman API socket", func() (bool, string) {
		c, err := net.Dial("unix", env.socket)
		if err != nil {
			return false, err.Error()
		}
		c.Close()
		return true, ""
	})
	return env
}

// httpServer serves a few bytes on loopback of the host namespace, where
// a --network host container reaches it.
func httpServer(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Connection", "close")
		io.WriteString(w, "hello\n")
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Addr().String()
}

// TestPodmanContainerNamed: a podman container makes connections; the
// stream (filtered with --container), /metrics and tracer top name it;
// once it is removed its series go away.
func TestPodmanContainerNamed(t *testing.T) {
	env := newPodman(t)
	addr := httpServer(t)
	name := fmt.Sprintf("ct-id-%d", os.Getpid())
	const n = 5

	var stdout lockedBuffer
	metrics, stderr := startStream(t, &stdout, "--output", "json", "--container", name, "--port", strings.Split(addr, ":")[1],
		"--podman-socket", env.socket, "--docker-socket", "", "--identity-refresh", "200ms")
	if !strings.Contains(stderr.String(), "container names from podman ("+env.socket+")") {
		t.Errorf("start-up notes do not name the podman source:\n%s", stderr)
	}

	// tracer top watches while the container runs.
	top := startTop(t, "--interval", "6s", "--podman-socket", env.socket, "--docker-socket", "")

	// The container waits a moment before connecting: names are resolved
	// off the event loop, within --identity-refresh of its start.
	script := fmt.Sprintf("sleep 1; i=0; while [ $i -lt %d ]; do wget -q -O /dev/null http://%s/; i=$((i+1)); done; sleep 600", n, addr)
	cid := podman(t, append(podmanRunArgs, "--name", name, env.image, "/bin/busybox", "sh", "-c", script)...)
	removed := false
	t.Cleanup(func() {
		if !removed {
			exec.Command("podman", "rm", "-f", "-t", "0", name).Run()
		}
	})

	// The stream: n lines, each naming the container (the filter passes
	// no others).
	testenv.WaitFor(t, 20*time.Second, "stream lines naming the container", func() (bool, string) {
		return strings.Count(stdout.String(), `"container":"`+name+`"`) >= n, stdout.String()
	})
	for _, line := range strings.Split(strings.TrimSpace(stdout.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("not JSON: %v\n%s", err, line)
		}
		if m["container"] != name || m["container_id"] != cid || m["runtime"] != "podman" {
			t.Errorf("line does not name container %s (%s, podman): %s", name, cid, line)
		}
	}

	// /metrics: the container label, n active closes.
	waitForMetric(t, metrics, "conntracer_connections_closed_total",
		fmt.Sprintf(`container=%q,namespace="",pod="",role="active"} %d`, name, n))

	// tracer top names it too, in its JSON document.
	doc := top.wait(t)
	found := false
	for _, p := range doc.Processes {
		if p.Identity != nil && p.Identity.Container == name {
			found = true
			if p.Workload != "container "+name || p.Identity.ContainerID != cid || !strings.Contains(p.Cgroup, "libpod-"+cid) {
				t.Errorf("top's process %d: workload %q, id %q, cgroup %q", p.PID, p.Workload, p.Identity.ContainerID, p.Cgroup)
			}
		}
	}
	if !found {
		var procs bytes.Buffer
		for _, p := range doc.Processes {
			fmt.Fprintf(&procs, "%d %s %s\n", p.PID, p.Comm, p.Cgroup)
		}
		t.Errorf("tracer top names no process as container %s:\n%s", name, procs.String())
	}

	// Removed: its series leave /metrics.
	podman(t, "rm", "-f", "-t", "0", name)
	removed = true
	testenv.WaitFor(t, 20*time.Second, "the removed container's series to go", func() (bool, string) {
		resp, err := http.Get("http://" + metrics + "/metrics")
		if err != nil {
			return false, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return !bytes.Contains(b, []byte(fmt.Sprintf(`container=%q`, name))), string(metricLines(b, "conntracer_connections_closed_total"))
	})
}

// TestStreamNamesNetNS: JSON lines carry the namespace's `ip netns` name
// beside its inode.
func TestStreamNamesNetNS(t *testing.T) {
	testenv.RequireRoot(t)
	ns := testenv.NewNetNS(t)
	var stdout lockedBuffer
	startStream(t, &stdout, "--output", "json", "--netns", ns.Name)
	srv := testenv.StartServer(t, ns, "ctnnsrv")
	testenv.RunClient(t, ns, "ctnncli", []testenv.Conn{{Addr: srv.Addr4(), Req: 10, Resp: 10, Mode: testenv.ClientCloses}})
	testenv.WaitFor(t, 10*time.Second, "the client's line", func() (bool, string) {
		return strings.Contains(stdout.String(), `"comm":"ctnncli"`), stdout.String()
	})
	for _, line := range strings.Split(strings.TrimSpace(stdout.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("not JSON: %v\n%s", err, line)
		}
		if m["netns"] != float64(ns.Inode) || m["netns_name"] != ns.Name {
			t.Errorf("line names netns %v %v, want %d %q: %s", m["netns"], m["netns_name"], ns.Inode, ns.Name, line)
		}
	}
}
