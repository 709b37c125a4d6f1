package main

import (
	"strings"

	"github.com/spf13/pflag"

	"github.com/conntracer/conntracer/internal/events"
	"github.com/conntracer/conntracer/internal/identity"
	"github.com/conntracer/conntracer/internal/session"
)

// addIdentityFlags defines where container names are read from, with the
// runtimes' default locations; "" turns a source off.
func addIdentityFlags(fs *pflag.FlagSet, cfg *session.IdentityConfig) {
	d := identity.DefaultSources()
	cfg.Sources = d
	fs.StringVar(&cfg.Sources.DockerSocket, "docker-socket", d.DockerSocket, "Docker Engine API socket, for container names (\"\": off)")
	fs.StringVar(&cfg.Sources.PodmanSocket, "podman-socket", d.PodmanSocket, "Podman API socket, for container names (\"\": off)")
	fs.StringVar(&cfg.Sources.CRIOSocket, "crio-socket", d.CRIOSocket, "CRI-O socket (its HTTP info endpoint), for pod and container names (\"\": off)")
	fs.StringVar(&cfg.Sources.ContainerdTasks, "containerd-state", d.ContainerdTasks, "containerd's runtime v2 task directory, whose OCI bundles name pods and containers (\"\": off)")
	fs.DurationVar(&cfg.Refresh, "identity-refresh", session.DefaultIdentityRefresh, "how often new cgroups are looked for and their containers named")
}

// workloadFlags are the stream's filters on what owners run in.
type workloadFlags struct{ container, pod, namespace string }

func addWorkloadFlags(fs *pflag.FlagSet) *workloadFlags {
	w := &workloadFlags{}
	fs.StringVar(&w.container, "container", "", "only processes in this container: its name (Kubernetes container name, docker/podman name) or id (at least 4 leading digits)")
	fs.StringVar(&w.pod, "pod", "", "only processes of this Kubernetes pod: NAME or NAMESPACE/NAME")
	fs.StringVar(&w.namespace, "k8s-namespace", "", "only processes of pods in this Kubernetes namespace")
	return w
}

// filter returns the workload filter the flags decide.
func (w *workloadFlags) filter() (events.WorkloadFilter, error) {
	f := events.WorkloadFilter{Container: w.container, Namespace: w.namespace, Pod: w.pod}
	if ns, pod, ok := strings.Cut(w.pod, "/"); ok {
		if ns == "" || pod == "" || strings.Contains(pod, "/") {
			return f, usagef("--pod %q: use NAME or NAMESPACE/NAME", w.pod)
		}
		if w.namespace != "" && w.namespace != ns {
			return f, usagef("--pod %q and --k8s-namespace %q name different namespaces", w.pod, w.namespace)
		}
		f.Namespace, f.Pod = ns, pod
	}
	return f, nil
}
