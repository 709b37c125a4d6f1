package identity

import (
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/conntracer/conntracer/internal/events"
)

// serveUnix serves h on a Unix socket in a temporary directory.
func serveUnix(t *testing.T, h http.Handler) string {
	t.Helper()
	return serveUnixAt(t, filepath.Join(t.TempDir(), "api.sock"), h)
}

// serveUnixAt serves h on the Unix socket sock.
func serveUnixAt(t *testing.T, sock string, h http.Handler) string {
	t.Helper()
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return sock
}

// engineAPI answers like Docker's Engine API for the containers given, by
// id, counting the inspections.
func engineAPI(containers map[string]any, asked *int) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /_ping", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("OK")) })
	mux.HandleFunc("GET /containers/{id}/json", func(w http.ResponseWriter, r *http.Request) {
		*asked++
		c, ok := containers[r.PathValue("id")]
		if !ok {
			http.Error(w, `{"message":"No such container"}`, http.StatusNotFound)
			return
		}
		json.NewEncoder(w).Encode(c)
	})
	return mux
}

func TestResolverDockerAndKubernetesLabels(t *testing.T) {
	other := strings.Repeat("ab", 32)
	gone := strings.Repeat("cd", 32)
	asked := 0
	sock := serveUnix(t, engineAPI(map[string]any{
		cid: map[string]any{"Name": "/web", "Config": map[string]any{"Labels": map[string]string{}}},
		other: map[string]any{"Name": "/k8s_api_checkout-7d9f_shop_x_0", "Config": map[string]any{"Labels": map[string]string{
			labelPodName: "checkout-7d9f", labelPodNamespace: "shop", labelContainerName: "api"}}},
	}, &asked))
	r, note := NewResolver(Sources{DockerSocket: sock, PodmanSocket: filepath.Join(t.TempDir(), "absent.sock")})
	if !strings.Contains(note, "docker ("+sock+")") || strings.Contains(note, "podman") {
		t.Errorf("note %q: want docker named as the one source", note)
	}
	paths := map[uint64]string{
		10: "/system.slice/docker-" + cid + ".scope",
		11: "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidU + ".slice/docker-" + other + ".scope",
		12: "/docker/" + gone,
		13: "/system.slice/nginx.service",
	}
	if err := r.Refresh(paths); err != nil {
		t.Fatal(err)
	}
	want := map[uint64]events.Identity{
		10: {Runtime: RuntimeDocker, ContainerID: cid, Container: "web"},
		11: {Runtime: RuntimeDocker, ContainerID: other, PodUID: uid, Namespace: "shop", Pod: "checkout-7d9f", Container: "api"},
		12: {Runtime: RuntimeDocker, ContainerID: gone},
		13: {Unit: "nginx.service"},
	}
	for cg, w := range want {
		got := r.Lookup(cg)
		if got == nil || got.Identity != w || got.Path != paths[cg] {
			t.Errorf("Lookup(%d) = %+v, want %+v at %s", cg, got, w, paths[cg])
		}
	}
	if r.Lookup(99) != nil {
		t.Error("Lookup of an unknown cgroup id: want nil")
	}
	// Cached per container: a second refresh asks nothing, including
	// about the container the runtime did not know.
	if asked != 3 {
		t.Errorf("runtime asked %d times, want 3 (one per container)", asked)
	}
	delete(paths, 10)
	if err := r.Refresh(paths); err != nil {
		t.Fatal(err)
	}
	if asked != 3 {
		t.Errorf("runtime asked %d times after a second refresh, want still 3", asked)
	}
	// A removed container's names leave the cache; its cgroup stays a
	// while, marked Gone and still named.
	if g := r.Lookup(10); g == nil || !g.Gone || g.Identity.Container != "web" || r.Len() != 4 || len(r.names) != 2 {
		t.Errorf("after removal: Lookup(10)=%+v, %d cgroups, %d names; want gone web, 4, 2", g, r.Len(), len(r.names))
	}
	// ... until goneKeep has passed.
	r.gone[10] = r.gone[10].Add(-goneKeep)
	if err := r.Refresh(paths); err != nil {
		t.Fatal(err)
	}
	if r.Lookup(10) != nil || r.Len() != 3 {
		t.Errorf("after goneKeep: Lookup(10)=%+v, %d cgroups; want nil, 3", r.Lookup(10), r.Len())
	}
}

func TestResolverContainerdBundle(t *testing.T) {
	tasks := t.TempDir()
	sandbox := strings.Repeat("5a", 32)
	write := func(id string, annotations map[string]string) {
		dir := filepath.Join(tasks, "k8s.io", id)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(map[string]any{"ociVersion": "1.0.2", "annotations": annotations})
		if err := os.WriteFile(filepath.Join(dir, "config.json"), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(cid, map[string]string{annotContainerType: "container", annotSandboxName: "checkout-7d9f",
		annotSandboxNamespace: "shop", annotContainerName: "api"})
	write(sandbox, map[string]string{annotContainerType: "sandbox", annotSandboxName: "checkout-7d9f",
		annotSandboxNamespace: "shop"})
	r, note := NewResolver(Sources{ContainerdTasks: tasks})
	if note != "container names from containerd ("+tasks+")" {
		t.Errorf("note %q", note)
	}
	pod := "/kubepods/burstable/pod" + uid + "/"
	if err := r.Refresh(map[uint64]string{1: pod + cid, 2: pod + sandbox}); err != nil {
		t.Fatal(err)
	}
	if got, w := r.Lookup(1).Identity, (events.Identity{Runtime: RuntimeContainerd, ContainerID: cid, PodUID: uid,
		Namespace: "shop", Pod: "checkout-7d9f", Container: "api"}); got != w {
		t.Errorf("container: got %+v, want %+v", got, w)
	}
	if got, w := r.Lookup(2).Identity, (events.Identity{Runtime: RuntimeContainerd, ContainerID: sandbox, PodUID: uid,
		Namespace: "shop", Pod: "checkout-7d9f"}); got != w {
		t.Errorf("sandbox: got %+v, want %+v", got, w)
	}
}

func TestResolverCRIO(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /info", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte(`{"storage_driver":"overlay"}`)) })
	mux.HandleFunc("GET /containers/{id}", func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("id") != cid {
			http.NotFound(w, r)
			return
		}
		json.NewEncoder(w).Encode(map[string]any{"name": "k8s_api_checkout", "labels": map[string]string{
			labelPodName: "checkout-7d9f", labelPodNamespace: "shop", labelContainerName: "api"}})
	})
	r, _ := NewResolver(Sources{CRIOSocket: serveUnix(t, mux)})
	if err := r.Refresh(map[uint64]string{1: "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidU + ".slice/crio-" + cid + ".scope"}); err != nil {
		t.Fatal(err)
	}
	if got := r.Lookup(1).Identity; got.Workload() != "shop/checkout-7d9f container api" || got.Runtime != RuntimeCRIO {
		t.Errorf("got %+v", got)
	}
}

// With no runtime reachable: the cgroup path's identity, a note, no error.
func TestResolverNoRuntime(t *testing.T) {
	dir := t.TempDir()
	r, note := NewResolver(Sources{DockerSocket: filepath.Join(dir, "d.sock"), PodmanSocket: filepath.Join(dir, "p.sock"),
		CRIOSocket: filepath.Join(dir, "c.sock"), ContainerdTasks: filepath.Join(dir, "tasks")})
	if !strings.HasPrefix(note, "no container runtime reachable (podman, docker, cri-o, containerd)") {
		t.Errorf("note %q", note)
	}
	if err := r.Refresh(map[uint64]string{1: "/libpod_parent/libpod-" + cid}); err != nil {
		t.Errorf("Refresh without runtimes: %v", err)
	}
	if got := r.Lookup(1).Identity; got != (events.Identity{Runtime: RuntimePodman, ContainerID: cid}) {
		t.Errorf("got %+v", got)
	}
}

// A runtime that fails is reported, and asked again next time.
func TestResolverRuntimeError(t *testing.T) {
	fail := true
	mux := http.NewServeMux()
	mux.HandleFunc("GET /_ping", func(w http.ResponseWriter, _ *http.Request) {})
	mux.HandleFunc("GET /containers/{id}/json", func(w http.ResponseWriter, r *http.Request) {
		if fail {
			http.Error(w, "daemon busy", http.StatusInternalServerError)
			return
		}
		w.Write([]byte(`{"Name":"/web","Config":{"Labels":null}}`))
	})
	r, _ := NewResolver(Sources{DockerSocket: serveUnix(t, mux)})
	paths := map[uint64]string{1: "/docker/" + cid}
	if err := r.Refresh(paths); err == nil || !strings.Contains(err.Error(), "daemon busy") {
		t.Errorf("Refresh with a failing runtime: err %v, want the daemon's answer", err)
	}
	fail = false
	if err := r.Refresh(paths); err != nil || r.Lookup(1).Identity.Container != "web" {
		t.Errorf("retry: err %v, identity %+v", err, r.Lookup(1).Identity)
	}
}

func BenchmarkLookup(b *testing.B) {
	r, _ := NewResolver(Sources{})
	r.Refresh(map[uint64]string{1: "/docker/" + cid})
	b.ReportAllocs()
	for b.Loop() {
		if r.Lookup(1) == nil {
			b.Fatal("missing")
		}
	}
}

// Names reach terminals, JSON and label values unescaped: anything but
// printable ASCII without quotes and backslashes is replaced.
func TestResolverCleansNames(t *testing.T) {
	asked := 0
	sock := serveUnix(t, engineAPI(map[string]any{
		cid: map[string]any{"Name": "/we\"b\x1b[2J\\é", "Config": map[string]any{}},
	}, &asked))
	r, _ := NewResolver(Sources{DockerSocket: sock})
	if err := r.Refresh(map[uint64]string{1: "/docker/" + cid, 2: `/system.slice/run-r\x2d1.scope`}); err != nil {
		t.Fatal(err)
	}
	if got := r.Lookup(1); got.Identity.Container != `we?b?[2J???` || got.Workload != `container we?b?[2J???` {
		t.Errorf("container name %q, workload %q", got.Identity.Container, got.Workload)
	}
	if got := r.Lookup(2).Identity.Unit; got != `run-r?x2d1.scope` {
		t.Errorf("unit %q", got)
	}
}
