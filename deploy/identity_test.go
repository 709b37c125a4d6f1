package deploy

import (
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	"sigs.k8s.io/yaml"
)

// TestDaemonSetIdentityMounts: the DaemonSet mounts what the container
// and pod names are read from (containerd's bundles, CRI-O's socket), at
// the tracer's default paths, read-only.
func TestDaemonSetIdentityMounts(t *testing.T) {
	var ds *appsv1.DaemonSet
	for _, doc := range splitYAML(t, "kubernetes/conntracer.yaml") {
		var meta struct{ Kind string }
		if err := yaml.Unmarshal(doc, &meta); err != nil {
			t.Fatal(err)
		}
		if meta.Kind == "DaemonSet" {
			ds = &appsv1.DaemonSet{}
			if err := decodeStrict(doc, ds); err != nil {
				t.Fatal(err)
			}
		}
	}
	if ds == nil {
		t.Fatal("no DaemonSet")
	}
	c := ds.Spec.Template.Spec.Containers[0]
	hostPaths := map[string]string{}
	for _, v := range ds.Spec.Template.Spec.Volumes {
		if v.HostPath != nil {
			hostPaths[v.Name] = v.HostPath.Path
		}
	}
	want := map[string]bool{"/run/containerd/io.containerd.runtime.v2.task": false, "/run/crio": false}
	for _, m := range c.VolumeMounts {
		if _, ok := want[m.MountPath]; !ok {
			continue
		}
		want[m.MountPath] = true
		if !m.ReadOnly {
			t.Errorf("%s is mounted writable: the lookups only read", m.MountPath)
		}
		if hostPaths[m.Name] != m.MountPath {
			t.Errorf("%s mounts host path %q: the tracer's default is the host's own path", m.MountPath, hostPaths[m.Name])
		}
	}
	for p, ok := range want {
		if !ok {
			t.Errorf("no mount at %s", p)
		}
	}
}
