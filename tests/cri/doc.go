// Package cri holds the end-to-end test of pod and container names on a
// Kubernetes node: a real containerd with its CRI plugin, the test acting
// as the kubelet. It is a module of its own so that the tracer's module
// gains no gRPC or Kubernetes dependency: the tracer reads what
// containerd records on disk, only this test speaks the CRI.
package cri
