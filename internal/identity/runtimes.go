package identity

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Sources says where the runtimes keep what names a container. A field
// left empty is not consulted.
type Sources struct {
	// DockerSocket and PodmanSocket serve Docker's Engine API and
	// Podman's compatible one (GET /containers/{id}/json), HTTP+JSON over a
	// Unix socket: no client library.
	DockerSocket string
	PodmanSocket string
	// CRIOSocket is CRI-O's socket, which also serves HTTP info
	// (GET /containers/{id}) beside the CRI's gRPC.
	CRIOSocket string
	// ContainerdTasks is containerd's runtime v2 state directory,
	// <dir>/<namespace>/<id>/config.json for each running container.
	// containerd's CRI is gRPC; reading the OCI bundle it writes instead
	// keeps the tracer free of a gRPC/CRI dependency, needs no socket
	// access (a read-only mount), and names exactly the containers that
	// run: the CRI plugin copies the pod's name and namespace and the
	// container's name into the bundle's annotations.
	ContainerdTasks string
}

// DefaultSources are the runtimes' default locations.
func DefaultSources() Sources {
	return Sources{
		DockerSocket:    "/run/docker.sock",
		PodmanSocket:    "/run/podman/podman.sock",
		CRIOSocket:      "/run/crio/crio.sock",
		ContainerdTasks: "/run/containerd/io.containerd.runtime.v2.task",
	}
}

// The labels the kubelet sets on every container through the CRI (Docker
// via cri-dockerd and CRI-O keep them as container labels), and the
// annotations containerd's CRI plugin writes into the OCI bundle.
const (
	labelPodName       = "io.kubernetes.pod.name"
	labelPodNamespace  = "io.kubernetes.pod.namespace"
	labelContainerName = "io.kubernetes.container.name"

	annotSandboxName      = "io.kubernetes.cri.sandbox-name"
	annotSandboxNamespace = "io.kubernetes.cri.sandbox-namespace"
	annotContainerName    = "io.kubernetes.cri.container-name"
	annotContainerType    = "io.kubernetes.cri.container-type"
	annotNerdctlName      = "nerdctl/name"
)

// names is what a runtime says about one container.
type names struct {
	runtime                   string // who answered, "" if none did
	namespace, pod, container string
}

// errNotFound: the runtime does not know the container (gone, or another
// runtime's). Not retried.
var errNotFound = errors.New("no such container")

// lookupTimeout bounds one question to a runtime: lookups run on the
// sampler goroutine, which a hung daemon must not stall for long.
const lookupTimeout = 2 * time.Second

// unixHTTP is an HTTP client speaking to one Unix socket.
func unixHTTP(socket string) *http.Client {
	return &http.Client{
		Timeout: lookupTimeout,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", socket)
			},
			MaxIdleConns: 1,
		},
	}
}

// getJSON GETs path from the socket's HTTP server into v.
func getJSON(c *http.Client, path string, v any) error {
	resp, err := c.Get("http://localhost" + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return errNotFound
	case resp.StatusCode != http.StatusOK:
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 256))
		return fmt.Errorf("GET %s: %s: %s", path, resp.Status, strings.TrimSpace(string(b)))
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 4<<20)).Decode(v); err != nil {
		return fmt.Errorf("GET %s: decode: %w", path, err)
	}
	return nil
}

// engineNames asks Docker's Engine API, or Podman's compatible one.
func engineNames(c *http.Client, id string) (names, error) {
	var doc struct {
		Name   string
		Config struct{ Labels map[string]string }
	}
	if err := getJSON(c, "/containers/"+id+"/json", &doc); err != nil {
		return names{}, err
	}
	return fromLabels(doc.Config.Labels, strings.TrimPrefix(doc.Name, "/")), nil
}

// crioNames asks CRI-O's info endpoint.
func crioNames(c *http.Client, id string) (names, error) {
	var doc struct {
		Name        string            `json:"name"`
		Labels      map[string]string `json:"labels"`
		Annotations map[string]string `json:"annotations"`
	}
	if err := getJSON(c, "/containers/"+id, &doc); err != nil {
		return names{}, err
	}
	return fromLabels(doc.Labels, doc.Name), nil
}

// fromLabels names a container from the kubelet's labels when it has them,
// else by the runtime's name for it.
func fromLabels(labels map[string]string, name string) names {
	if pod := labels[labelPodName]; pod != "" {
		return names{namespace: labels[labelPodNamespace], pod: pod, container: labels[labelContainerName]}
	}
	return names{container: name}
}

// containerdNames reads the OCI bundle of a running containerd container,
// in whichever containerd namespace it runs (k8s.io for the CRI).
func containerdNames(tasks, id string) (names, error) {
	ns, err := os.ReadDir(tasks)
	if err != nil {
		return names{}, err
	}
	for _, n := range ns {
		b, err := os.ReadFile(filepath.Join(tasks, n.Name(), id, "config.json"))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return names{}, err
		}
		var spec struct {
			Annotations map[string]string `json:"annotations"`
		}
		if err := json.Unmarshal(b, &spec); err != nil {
			return names{}, fmt.Errorf("%s/%s/config.json: %w", n.Name(), id, err)
		}
		a := spec.Annotations
		if pod := a[annotSandboxName]; pod != "" {
			c := a[annotContainerName]
			if a[annotContainerType] == "sandbox" {
				c = "" // the pod's sandbox (pause) container
			}
			return names{namespace: a[annotSandboxNamespace], pod: pod, container: c}, nil
		}
		return names{container: a[annotNerdctlName]}, nil
	}
	return names{}, errNotFound
}
