package deploy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/conntracer/conntracer/internal/export"
)

// splitYAML splits a multi-document YAML file.
func splitYAML(t *testing.T, path string) [][]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var docs [][]byte
	for _, d := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(b), -1) {
		if strings.TrimSpace(regexp.MustCompile(`(?m)^#.*$`).ReplaceAllString(d, "")) != "" {
			docs = append(docs, []byte(d))
		}
	}
	return docs
}

// TestKubernetesManifests decodes every object strictly into its
// Kubernetes API type (an unknown or misspelt field fails) and checks
// what the issue asks of the DaemonSet: no privileged mode, only the
// capabilities it needs, host PID and network, the kernel mounts,
// resource limits, scrape annotations matching the container port.
func TestKubernetesManifests(t *testing.T) {
	var ds *appsv1.DaemonSet
	kinds := map[string]int{}
	for _, doc := range splitYAML(t, "kubernetes/conntracer.yaml") {
		var meta struct{ APIVersion, Kind string }
		if err := yaml.Unmarshal(doc, &meta); err != nil {
			t.Fatal(err)
		}
		var obj any
		switch meta.APIVersion + "/" + meta.Kind {
		case "v1/Namespace":
			obj = &corev1.Namespace{}
		case "v1/ServiceAccount":
			obj = &corev1.ServiceAccount{}
		case "apps/v1/DaemonSet":
			ds = &appsv1.DaemonSet{}
			obj = ds
		default:
			t.Fatalf("unexpected object %s %s", meta.APIVersion, meta.Kind)
		}
		if err := decodeStrict(doc, obj); err != nil {
			t.Fatalf("%s: %v", meta.Kind, err)
		}
		kinds[meta.Kind]++
	}
	if ds == nil || kinds["ServiceAccount"] != 1 || kinds["Namespace"] != 1 {
		t.Fatalf("want a Namespace, a ServiceAccount and a DaemonSet, got %v", kinds)
	}
	spec := ds.Spec.Template.Spec
	if !spec.HostPID || !spec.HostNetwork {
		t.Error("the tracer needs the host's PID and network namespaces")
	}
	if spec.ServiceAccountName != "conntracer" || spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		t.Error("service account conntracer, without a token (the tracer never calls the API)")
	}
	if sel := ds.Spec.Selector.MatchLabels; sel["app.kubernetes.io/name"] != ds.Spec.Template.Labels["app.kubernetes.io/name"] {
		t.Error("selector does not match the pod labels")
	}
	if len(spec.Containers) != 1 {
		t.Fatalf("%d containers", len(spec.Containers))
	}
	c := spec.Containers[0]
	sc := c.SecurityContext
	if sc == nil || sc.Privileged == nil || *sc.Privileged || sc.Capabilities == nil {
		t.Fatal("the container must not be privileged and must list its capabilities")
	}
	if !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("drop ALL capabilities first, got %v", sc.Capabilities.Drop)
	}
	allowed := []corev1.Capability{"BPF", "PERFMON", "NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE", "DAC_READ_SEARCH", "SYS_RESOURCE", "SETPCAP"}
	for _, cp := range sc.Capabilities.Add {
		if !slices.Contains(allowed, cp) {
			t.Errorf("capability %s is not one the tracer needs", cp)
		}
	}
	// Non-root with file capabilities: the tracer drops what it no longer
	// needs itself once attached (internal/privdrop).
	if sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.RunAsUser == nil || *sc.RunAsUser == 0 {
		t.Error("the tracer runs as a non-root user with file capabilities")
	}
	if sc.AllowPrivilegeEscalation == nil || !*sc.AllowPrivilegeEscalation {
		t.Error("allowPrivilegeEscalation false sets no_new_privs before exec: the kernel would ignore the binary's file capabilities")
	}
	if !slices.Contains(c.Args, "--web.listen-address=$(NODE_IP):9477") {
		t.Errorf("on the host network the metrics port binds the node's address, not every interface: args %v", c.Args)
	}
	if c.Resources.Limits.Cpu().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Error("resource limits missing")
	}
	mounts := map[string]bool{}
	for _, m := range c.VolumeMounts {
		mounts[m.MountPath] = true
	}
	for _, p := range []string{"/sys/kernel/btf", "/sys/kernel/tracing", "/sys/fs/cgroup"} {
		if !mounts[p] {
			t.Errorf("no mount at %s", p)
		}
	}
	ann := ds.Spec.Template.Annotations
	if ann["prometheus.io/scrape"] != "true" || ann["prometheus.io/port"] != "9477" {
		t.Errorf("scrape annotations: %v", ann)
	}
	if len(c.Ports) != 1 || c.Ports[0].ContainerPort != 9477 || !slices.Contains(c.Args, "serve") {
		t.Errorf("container must run `tracer serve` on 9477: args %v ports %v", c.Args, c.Ports)
	}
}

// TestAlertRules runs promtool's unit tests of the alert rules.
func TestAlertRules(t *testing.T) {
	if _, err := exec.LookPath("promtool"); err != nil {
		t.Skip("promtool not installed (apt-get install prometheus; CI installs it through make test-deps)")
	}
	out, err := exec.Command("promtool", "test", "rules", "prometheus/alerts_test.yml").CombinedOutput()
	if err != nil {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}
	out, err = exec.Command("promtool", "check", "rules", "prometheus/alerts.yml").CombinedOutput()
	if err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
}

// exported is every metric name the exporter serves: the collector's
// and the self-metrics', with the series names of histograms.
func exported(t *testing.T) map[string]bool {
	t.Helper()
	names := map[string]bool{}
	for _, n := range export.MetricNames() {
		names[n] = true
		if strings.HasSuffix(n, "_seconds") || strings.HasSuffix(n, "_bytes") && !strings.HasSuffix(n, "_total") {
			for _, s := range []string{"_bucket", "_sum", "_count"} {
				names[n+s] = true
			}
		}
	}
	reg := prometheus.NewRegistry()
	if _, err := export.NewHealth(reg, map[string]string{"h": "tp_btf"}); err != nil {
		t.Fatal(err)
	}
	reg.MustRegister(export.NewBuildInfo("v", "r", "go")) // registered beside them by cmd/tracer
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		names[mf.GetName()] = true
	}
	return names
}

var metricRef = regexp.MustCompile(`\bconntracer_[a-z0-9_]+`)

func checkNames(t *testing.T, where, expr string, names map[string]bool) int {
	t.Helper()
	refs := metricRef.FindAllString(expr, -1)
	for _, r := range refs {
		if !names[r] {
			t.Errorf("%s: %s is not a metric the exporter exports (in %q)", where, r, expr)
		}
	}
	return len(refs)
}

// TestDashboardMetrics: every query of the Grafana dashboard uses metric
// names the exporter really exports, and every row has panels.
func TestDashboardMetrics(t *testing.T) {
	b, err := os.ReadFile("grafana/conntracer-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Type, Title string
			Targets     []struct{ Expr string }
		}
		Templating struct{ List []struct{ Query any } }
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&dash); err != nil {
		t.Fatal(err)
	}
	names := exported(t)
	queries, rows := 0, 0
	for _, p := range dash.Panels {
		if p.Type == "row" {
			rows++
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			if checkNames(t, p.Title, tg.Expr, names) == 0 {
				t.Errorf("panel %q: query %q uses no conntracer metric", p.Title, tg.Expr)
			}
			queries++
		}
	}
	for _, v := range dash.Templating.List {
		if q, ok := v.Query.(string); ok {
			checkNames(t, "templating", q, names)
		}
	}
	if rows < 6 || queries < 15 {
		t.Errorf("%d rows, %d queries: want one row per incident type", rows, queries)
	}
}

// TestAlertMetrics: the alert rules use exported metric names only.
func TestAlertMetrics(t *testing.T) {
	var rules struct {
		Groups []struct {
			Rules []struct{ Alert, Expr string }
		}
	}
	b, err := os.ReadFile("prometheus/alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, &rules); err != nil {
		t.Fatal(err)
	}
	names := exported(t)
	n := 0
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			checkNames(t, r.Alert, r.Expr, names)
			n++
		}
	}
	if n < 10 {
		t.Errorf("%d alert rules", n)
	}
}

// TestAlertRunbooks: every alert links its runbook, a section of
// prometheus/runbooks.md, and every section is an alert's.
func TestAlertRunbooks(t *testing.T) {
	var rules struct {
		Groups []struct {
			Rules []struct {
				Alert       string
				Annotations map[string]string
			}
		}
	}
	b, err := os.ReadFile("prometheus/alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, &rules); err != nil {
		t.Fatal(err)
	}
	md, err := os.ReadFile("prometheus/runbooks.md")
	if err != nil {
		t.Fatal(err)
	}
	sections := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^## (\w+)$`).FindAllStringSubmatch(string(md), -1) {
		sections[m[1]] = true
	}
	const prefix = "https://github.com/conntracer/conntracer/blob/main/deploy/prometheus/runbooks.md#"
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if want := prefix + strings.ToLower(r.Alert); r.Annotations["runbook_url"] != want {
				t.Errorf("%s: runbook_url %q, want %q", r.Alert, r.Annotations["runbook_url"], want)
			}
			if !sections[r.Alert] {
				t.Errorf("%s: no section \"## %s\" in prometheus/runbooks.md", r.Alert, r.Alert)
			}
			delete(sections, r.Alert)
		}
	}
	for s := range sections {
		t.Errorf("runbooks.md: section %s is no alert's", s)
	}
}

// TestStrictDecodeCatchesTypos: the manifest check would catch a
// misspelt field (hostPid for hostPID), which Kubernetes would ignore.
func TestStrictDecodeCatchesTypos(t *testing.T) {
	doc := []byte("apiVersion: apps/v1\nkind: DaemonSet\nspec:\n  template:\n    spec:\n      hostPid: true\n")
	if err := decodeStrict(doc, &appsv1.DaemonSet{}); err == nil {
		t.Fatal("hostPid accepted")
	}
	doc = []byte("apiVersion: apps/v1\nkind: DaemonSet\nspec:\n  template:\n    spec:\n      hostPIDs: true\n")
	if err := decodeStrict(doc, &appsv1.DaemonSet{}); err == nil {
		t.Fatal("hostPIDs accepted")
	}
}

// decodeStrict decodes YAML into a Kubernetes API type as the API server
// would: unknown fields fail (sigs.k8s.io/yaml's strict mode) and so do
// fields in the wrong case, which encoding/json would match silently
// while the API server ignores them.
func decodeStrict(doc []byte, obj any) error {
	if err := yaml.UnmarshalStrict(doc, obj); err != nil {
		return err
	}
	js, err := yaml.YAMLToJSON(doc)
	if err != nil {
		return err
	}
	var orig, back any
	if err := json.Unmarshal(js, &orig); err != nil {
		return err
	}
	re, err := json.Marshal(obj)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(re, &back); err != nil {
		return err
	}
	return sameCase("", orig, back)
}

// sameCase reports a key of orig that the decoded object spells
// differently. Keys missing from back were zero values (omitempty).
func sameCase(path string, orig, back any) error {
	switch o := orig.(type) {
	case map[string]any:
		b, _ := back.(map[string]any)
		for k, v := range o {
			if bv, ok := b[k]; ok {
				if err := sameCase(path+"."+k, v, bv); err != nil {
					return err
				}
				continue
			}
			for bk := range b {
				if strings.EqualFold(bk, k) {
					return fmt.Errorf("%s.%s: the API field is spelt %s", path, k, bk)
				}
			}
		}
	case []any:
		b, _ := back.([]any)
		for i := range min(len(o), len(b)) {
			if err := sameCase(fmt.Sprintf("%s[%d]", path, i), o[i], b[i]); err != nil {
				return err
			}
		}
	}
	return nil
}
