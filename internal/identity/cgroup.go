// Package identity names the container, the Kubernetes pod or the systemd
// unit a process runs in.
//
// Two sources, in this order:
//   - the cgroup path alone (FromCgroupPath): every runtime names its
//     containers' cgroups after the container id, and the kubelet names the
//     pod's cgroup after the pod UID; systemd names units. This needs
//     nothing but /proc or the cgroup tree and works for every layout the
//     runtimes use: systemd (*.slice/*.scope) and cgroupfs, cgroup v2 and
//     v1 (FromProcCgroup picks the line that says most);
//   - the runtime's own records for the names (runtimes.go): Docker's and
//     Podman's HTTP APIs on their Unix sockets, CRI-O's HTTP info
//     endpoint, and for containerd the OCI bundle it writes for each
//     container (config.json, whose annotations the CRI plugin fills with
//     the pod's namespace and name and the container's name).
//
// The Resolver (resolver.go) caches one Identity per cgroup id and is
// refreshed on a goroutine of its own (the session's sampler goroutine),
// never on the event loop.
//
// May import: the standard library and internal/events.
package identity

import (
	"bufio"
	"bytes"
	"path"
	"strings"

	"github.com/conntracer/conntracer/internal/events"
)

// Runtime names, as events.Identity.Runtime holds them.
const (
	RuntimeContainerd = "containerd"
	RuntimeCRIO       = "cri-o"
	RuntimeDocker     = "docker"
	RuntimePodman     = "podman"
)

// scopePrefixes are the systemd scope names runtimes give a container's
// cgroup ("<prefix><id>.scope"), and which runtime each means. Longer
// prefixes first: "crio-conmon-" is the conmon monitor of a CRI-O
// container, whose id it names.
var scopePrefixes = []struct{ prefix, runtime string }{
	{"cri-containerd-", RuntimeContainerd},
	{"crio-conmon-", RuntimeCRIO},
	{"crio-", RuntimeCRIO},
	{"docker-", RuntimeDocker},
	{"libpod-conmon-", RuntimePodman},
	{"libpod-", RuntimePodman},
	{"nerdctl-", RuntimeContainerd},
}

// FromCgroupPath derives what a cgroup path alone says: the runtime and
// container id, the Kubernetes pod UID, or the systemd unit. p is a path
// as /proc/PID/cgroup prints it ("/system.slice/docker-<id>.scope"); a
// path under a cgroup mount point works too. Unknown shapes give a zero
// Identity, never an error: the cgroup path is then all there is.
func FromCgroupPath(p string) events.Identity {
	var id events.Identity
	parts := strings.Split(strings.Trim(path.Clean("/"+p), "/"), "/")
	// A pod's cgroup sits above its containers', so walking down the last
	// container id found wins (kind and other nested nodes run a whole
	// node, with its own kubepods tree, inside one container).
	inKubepods := false
	for i, part := range parts {
		if part == "" {
			continue
		}
		if strings.Contains(part, "kubepods") {
			inKubepods = true
		}
		if uid, ok := podUID(part); ok && inKubepods {
			id.PodUID = uid
			// What is below a pod cgroup is one of its containers
			// (cgroupfs: the bare id; systemd: a runtime scope).
			id.Runtime, id.ContainerID, id.Unit = "", "", ""
			continue
		}
		if rt, cid, ok := containerScope(part); ok {
			id.Runtime, id.ContainerID, id.Unit = rt, cid, ""
			continue
		}
		if isContainerID(part) && i > 0 {
			// cgroupfs layouts: /docker/<id>, /kubepods/<qos>/pod<uid>/<id>,
			// /libpod_parent/libpod-<id> (handled above), /<ns>/<id> of ctr.
			switch {
			case parts[i-1] == "docker":
				id.Runtime = RuntimeDocker
			case id.PodUID != "":
				// The kubelet's cgroupfs layout does not say which
				// runtime; the runtime lookups fill it in.
				id.Runtime = ""
			}
			id.ContainerID, id.Unit = part, ""
			continue
		}
		if id.ContainerID == "" && (strings.HasSuffix(part, ".service") || strings.HasSuffix(part, ".scope")) {
			// The innermost unit: user@1000.service contains session
			// scopes and user services.
			id.Unit = part
		}
	}
	if id.PodUID != "" && id.ContainerID == "" {
		// The pod's own cgroup (processes are not put there, but a
		// cgroup id may name it): no unit.
		id.Unit = ""
	}
	return id
}

// containerScope parses "<runtime prefix><64 hex>.scope", and the cgroupfs
// forms "libpod-<id>" and "crio-<id>" (no suffix).
func containerScope(part string) (runtime, id string, ok bool) {
	name := strings.TrimSuffix(part, ".scope")
	for _, sp := range scopePrefixes {
		if rest, found := strings.CutPrefix(name, sp.prefix); found && isContainerID(rest) {
			return sp.runtime, rest, true
		}
	}
	return "", "", false
}

// podUID parses the kubelet's pod cgroup names: "pod<uid>" (cgroupfs, the
// UID with dashes) and "kubepods-<qos>-pod<uid>.slice" or
// "kubepods-pod<uid>.slice" (systemd, dashes turned into underscores
// because a dash separates slice levels; a kubelet configured with a
// parent slice prefixes it: "kubelet-kubepods-besteffort-pod<uid>.slice").
func podUID(part string) (string, bool) {
	name := strings.TrimSuffix(part, ".slice")
	i := strings.LastIndex(name, "pod")
	if i < 0 {
		return "", false
	}
	if i > 0 && name[i-1] != '-' {
		return "", false
	}
	if i > 0 && !strings.Contains(name, "kubepods") {
		return "", false
	}
	uid := strings.ReplaceAll(name[i+3:], "_", "-")
	if !isUID(uid) {
		return "", false
	}
	return uid, true
}

// isUID reports whether s is a UUID in its textual form (8-4-4-4-12 hex).
func isUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		switch i {
		case 8, 13, 18, 23:
			if s[i] != '-' {
				return false
			}
		default:
			if !isHex(s[i]) {
				return false
			}
		}
	}
	return true
}

// isContainerID reports whether s is a full container id: 64 lower-case
// hex digits, what every runtime here uses.
func isContainerID(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isHex(s[i]) {
			return false
		}
	}
	return true
}

func isHex(c byte) bool { return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' }

// FromProcCgroup derives the identity from the contents of /proc/PID/cgroup,
// whatever the host's cgroup mode: the unified line ("0::/...") on cgroup
// v2 and hybrid hosts, the v1 controller lines otherwise. The line that
// names a container wins; else the one that names a systemd unit (v1's
// name=systemd line carries it on v1 hosts); it also returns the path it
// chose, the one to show when nothing is recognised.
func FromProcCgroup(content []byte) (events.Identity, string) {
	var best events.Identity
	bestPath, bestScore := "", -1
	sc := bufio.NewScanner(bytes.NewReader(content))
	for sc.Scan() {
		// hierarchy-ID:controller-list:cgroup-path; the path may hold ':'.
		f := strings.SplitN(sc.Text(), ":", 3)
		if len(f) != 3 {
			continue
		}
		p := f[2]
		id := FromCgroupPath(p)
		score := 0
		switch {
		case id.ContainerID != "":
			score = 3
		case id.PodUID != "":
			score = 2
		case id.Unit != "":
			score = 1
		}
		// On a tie the unified hierarchy (0::) wins: it is the one the
		// kernel's cgroup id refers to.
		if score > bestScore || score == bestScore && f[0] == "0" && f[1] == "" {
			best, bestPath, bestScore = id, p, score
		}
	}
	return best, bestPath
}
