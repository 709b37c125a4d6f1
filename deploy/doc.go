// Package deploy holds the fleet deployment of conntracer: Kubernetes
// manifests (kubernetes/), Prometheus alert rules (prometheus/), a
// Grafana dashboard (grafana/) and a Dockerfile. It has no Go code; its
// tests check the files against the Kubernetes API types, promtool and
// the metrics the exporter really exports.
package deploy
