package events

import (
	"strings"
)

// Filter selects the events the user asked for. The zero Filter matches
// everything. The kernel applies the same filters where it can; applying
// them again here is cheap and covers what the kernel cannot decide
// (connections whose owner only user space knows).
type Filter struct {
	PID    uint32
	Comm   string // exact match against the 15-byte kernel comm
	Port   uint16 // local or remote
	NetNS  uint32
	Family Family
	// CgroupID with CgroupPath: the owner must be in this cgroup or below
	// it. Kernel-attributed events were already checked in the kernel
	// (bpf_get_current_ancestor_cgroup_id), and the kernel drops those
	// outside; owners found by a sampler are checked by path.
	CgroupID   uint64
	CgroupPath string
	// Workload filters (container, pod, namespace) and their lookup: see
	// identity.go.
	Workload WorkloadFilter
	// Identities names owners' cgroups for the workload filters; the
	// session sets it. Without it no owner matches a workload filter.
	Identities CgroupLookup
}

// Match reports whether ev passes the filter.
func (f *Filter) Match(ev *Event) bool {
	c := &ev.Conn
	if f.NetNS != 0 && c.NetNS != f.NetNS {
		return false
	}
	if f.Family != 0 && c.Family != f.Family {
		return false
	}
	if f.Port != 0 && c.Local.Port() != f.Port && c.Remote.Port() != f.Port {
		return false
	}
	return f.matchOwner(&c.Owner)
}

// matchOwner applies the owner filters (pid, comm, cgroup): an unknown
// owner passes only when there are none.
func (f *Filter) matchOwner(o *Process) bool {
	if f.PID == 0 && f.Comm == "" && f.CgroupID == 0 && f.Workload.IsZero() {
		return true
	}
	if !o.Known() {
		return false
	}
	if f.PID != 0 && o.PID != f.PID {
		return false
	}
	if f.Comm != "" && !commEqual(o.CommBytes(), f.Comm) {
		return false
	}
	if f.CgroupID != 0 && !f.inCgroup(o) {
		return false
	}
	return f.Workload.IsZero() || f.Workload.match(f.Identities, o.CgroupID)
}

func (f *Filter) inCgroup(o *Process) bool {
	if o.CgroupID == f.CgroupID {
		return true
	}
	if o.CgroupPath != "" {
		prefix := strings.TrimSuffix(f.CgroupPath, "/") + "/"
		return strings.HasPrefix(o.CgroupPath, prefix)
	}
	// Attributed in the kernel, which already dropped owners outside the
	// cgroup (their records never reach user space).
	return o.Source == OwnerConnect || o.Source == OwnerAccept || o.Source == OwnerListener
}

// commEqual compares like the kernel does: names are truncated to 15 bytes.
func commEqual(comm []byte, want string) bool {
	if len(want) > 15 {
		want = want[:15]
	}
	return string(comm) == want // compiled without a copy
}
