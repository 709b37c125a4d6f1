package events

// Identity names what a process runs in: a container of a container
// runtime, a Kubernetes pod, or a systemd unit on a plain host. It is
// derived from the process's cgroup (runtime, container id, pod UID, unit)
// and, where a runtime answers, from the runtime's own records (the names).
// Every field may be empty; the zero Identity means "a process of the host
// outside any unit we recognise".
//
// Identities are resolved off the event loop (internal/identity) and handed
// to the outputs through a lookup by cgroup id: the event loop never builds
// one, so the hot path stays free of allocations.
type Identity struct {
	// Runtime: "containerd", "cri-o", "docker", "podman", or "" (not a
	// container).
	Runtime string `json:"runtime,omitempty"`
	// ContainerID is the runtime's full container id (64 hex digits).
	ContainerID string `json:"container_id,omitempty"`
	// PodUID is the Kubernetes pod UID, with dashes, as the kubelet names
	// the pod's cgroup.
	PodUID string `json:"pod_uid,omitempty"`
	// Namespace, Pod: the Kubernetes namespace and pod name, as the
	// kubelet gave them to the runtime (CRI labels/annotations).
	Namespace string `json:"namespace,omitempty"`
	Pod       string `json:"pod,omitempty"`
	// Container is the container's name: the Kubernetes container name on
	// a node, the runtime's name (docker ps, podman ps) elsewhere.
	Container string `json:"container,omitempty"`
	// Unit is the systemd unit the cgroup belongs to on a plain host
	// ("nginx.service", "session-3.scope"); empty for containers.
	Unit string `json:"unit,omitempty"`
}

// IsZero reports whether nothing is known.
func (id *Identity) IsZero() bool { return *id == Identity{} }

// ShortID returns the first 12 digits of the container id, as docker ps
// and crictl ps print it.
func (id *Identity) ShortID() string {
	if len(id.ContainerID) > 12 {
		return id.ContainerID[:12]
	}
	return id.ContainerID
}

// Workload is the one short name an operator knows the process by:
// "namespace/pod container NAME" on Kubernetes, "container NAME" (or the
// short id) for a plain container, the unit for a systemd service, "" when
// none is known. Findings and the text outputs print it.
func (id *Identity) Workload() string {
	name := id.Container
	if name == "" {
		name = id.ShortID()
	}
	switch {
	case id.Pod != "":
		s := id.Namespace + "/" + id.Pod
		if name != "" {
			s += " container " + name
		}
		return s
	case name != "":
		return "container " + name
	}
	return id.Unit
}

// CgroupInfo is what is known of one cgroup v2 id: its path as
// /proc/PID/cgroup prints it, the identity derived from it and the
// runtimes, and that identity's Workload, computed once so that outputs on
// the event loop print it without building a string.
type CgroupInfo struct {
	Path     string
	Identity Identity
	Workload string
	// Gone: the cgroup was removed (its container deleted). Kept a while
	// so that late readers still name it, and so that /metrics can retire
	// its series rather than hand its counts to another label set.
	Gone bool
}

// CgroupLookup returns what is known of a cgroup id, nil if nothing. The
// result is shared and immutable. Implementations must not allocate or
// block for long: the stream calls it on the event loop.
type CgroupLookup func(cgroupID uint64) *CgroupInfo

// WorkloadFilter selects owners by what they run in. Empty fields match
// anything; set ones must all match.
type WorkloadFilter struct {
	// Container: the container's name, or its id or an id prefix of at
	// least 4 digits (as docker ps and crictl ps show 12).
	Container string
	// Namespace, Pod: the Kubernetes namespace and pod name.
	Namespace, Pod string
}

// IsZero reports whether the filter selects everything.
func (w *WorkloadFilter) IsZero() bool { return *w == WorkloadFilter{} }

// match looks the owner's cgroup up. It allocates nothing: it runs on the
// event loop.
func (w *WorkloadFilter) match(lookup CgroupLookup, cgroupID uint64) bool {
	if lookup == nil || cgroupID == 0 {
		return false
	}
	info := lookup(cgroupID)
	if info == nil {
		return false
	}
	id := &info.Identity
	if w.Namespace != "" && id.Namespace != w.Namespace {
		return false
	}
	if w.Pod != "" && id.Pod != w.Pod {
		return false
	}
	if c := w.Container; c != "" && id.Container != c &&
		!(len(c) >= 4 && len(c) <= len(id.ContainerID) && id.ContainerID[:len(c)] == c) {
		return false
	}
	return true
}

// CgroupRecord is the payload of KindCgroupIdentity: what was known of
// cgroup ID when it was recorded.
type CgroupRecord struct {
	ID   uint64
	Info CgroupInfo
}

// NetNSLookup names a network namespace by its inode: the name an
// operator knows it by, "" if none is known (outputs then show the inode).
// The names, in the order the resolver (internal/identity) prefers them:
// the pod or container owning it ("shop/checkout-7d9f", "container web"),
// its `ip netns` name, "host" for the init namespace. The inode stays the
// namespace's identity (names are the user's and may change); the name is
// shown beside it. Names are printable ASCII without '"' or '\\'. Like
// CgroupLookup it must not allocate: the stream calls it on the event
// loop.
type NetNSLookup func(inode uint32) string

// NetNSRecord is the payload of KindNetNSName: the name namespace Inode
// had when it was recorded, and where the name came from (one of the
// NetNSBy* values).
type NetNSRecord struct {
	Inode  uint32
	Name   string
	Source string
}

// Where a network namespace's name comes from (NetNSRecord.Source).
const (
	NetNSByPod       = "pod"       // the Kubernetes pod whose sandbox owns it
	NetNSByContainer = "container" // the container whose processes live in it
	NetNSByIPNetNS   = "netns"     // its `ip netns` name (/run/netns)
	NetNSByHost      = "host"      // the init network namespace
)
