package identity

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/conntracer/conntracer/internal/events"
)

// NetNSResolver names network namespaces by inode, in this order of
// preference:
//
//  1. the Kubernetes pod whose sandbox owns it ("shop/checkout-7d9f"), or
//     the container whose processes live in it (its name, else its short
//     id): found by walking /proc (PID -> /proc/PID/ns/net, then the
//     process's cgroup, named by the cgroup Resolver);
//  2. its `ip netns` name (/run/netns bind mounts, as the caller read them);
//  3. "host" for the init namespace (kthreadd's, else PID 1's);
//  4. none: Lookup returns "" and outputs show the inode.
//
// Refresh rebuilds the table on one goroutine (the session's identity
// goroutine, after the cgroup Resolver's Refresh); Lookup reads it from any
// goroutine without allocating. A namespace that disappears stays
// goneKeep marked gone (late events and reports still name it), bounded
// by maxGone under churn.
type NetNSResolver struct {
	proc    string    // /proc
	cgroups *Resolver // names a process's cgroup; nil: pods and containers unnamed

	mu    sync.RWMutex
	table map[uint32]*NetNSInfo // replaced whole by Refresh, never mutated
	// gone holds when each vanished namespace was last seen; only Refresh
	// touches it.
	gone map[uint32]time.Time
}

// NetNSInfo is what is known of one network namespace.
type NetNSInfo struct {
	Name   string // "" when nothing names it
	Source string // events.NetNSBy*, "" with Name
	Gone   bool   // no process or bind mount holds it any more
}

// maxCgroupReadsPerNetNS bounds the /proc/PID/cgroup reads a refresh
// spends on one namespace that no pod has claimed yet: a busy container
// with thousands of threads costs a few reads, not thousands.
const maxCgroupReadsPerNetNS = 8

// NewNetNSResolver returns a resolver reading procRoot ("" : /proc) and
// naming pods and containers through cgroups (nil: by `ip netns` and host
// only).
func NewNetNSResolver(procRoot string, cgroups *Resolver) *NetNSResolver {
	if procRoot == "" {
		procRoot = "/proc"
	}
	return &NetNSResolver{proc: procRoot, cgroups: cgroups, table: map[uint32]*NetNSInfo{}, gone: map[uint32]time.Time{}}
}

// Refresh rebuilds the table: ipNetNS maps the inodes of the namespaces
// bind-mounted under /run/netns to their names (kernel.NetNSNames), the
// processes under /proc give the rest. Unreadable processes (gone
// mid-walk, or not permitted) are skipped: the table is as complete as
// /proc allows, never an error.
func (n *NetNSResolver) Refresh(ipNetNS map[uint32]string) {
	table := make(map[uint32]*NetNSInfo, len(ipNetNS)+8)
	host := n.hostInode()
	type owner struct {
		info  NetNSInfo
		score int // 2 pod, 1 container, 0 nothing yet
		reads int
	}
	owners := map[uint32]*owner{}
	byPath := n.cgroupsByPath()
	entries, _ := os.ReadDir(n.proc)
	for _, e := range entries {
		pid := e.Name()
		if pid == "" || pid[0] < '0' || pid[0] > '9' {
			continue
		}
		ino := nsInode(filepath.Join(n.proc, pid, "ns/net"))
		if ino == 0 || ino == host {
			continue
		}
		o := owners[ino]
		if o == nil {
			o = &owner{}
			owners[ino] = o
		}
		if o.score == 2 || o.reads >= maxCgroupReadsPerNetNS {
			continue
		}
		o.reads++
		b, err := os.ReadFile(filepath.Join(n.proc, pid, "cgroup"))
		if err != nil {
			continue
		}
		name, src, score := ownerName(b, byPath)
		// A pod beats a container; between containers the smaller name,
		// so that a namespace shared by several (a podman pod) is named
		// the same way every time.
		if score > o.score || score == o.score && score > 0 && name < o.info.Name {
			o.info, o.score = NetNSInfo{Name: name, Source: src}, score
		}
	}
	for ino, o := range owners {
		if o.score > 0 {
			table[ino] = &NetNSInfo{Name: o.info.Name, Source: o.info.Source}
		}
	}
	for ino, name := range ipNetNS {
		if _, ok := table[ino]; !ok && ino != host {
			table[ino] = &NetNSInfo{Name: name, Source: events.NetNSByIPNetNS}
		}
	}
	if host != 0 {
		table[host] = &NetNSInfo{Name: "host", Source: events.NetNSByHost}
	}
	// Namespaces held only by processes nothing names are present too
	// (unnamed), so that they are not carried over as gone.
	for ino := range owners {
		if _, ok := table[ino]; !ok {
			table[ino] = &NetNSInfo{}
		}
	}
	n.retire(table, time.Now())
	n.mu.Lock()
	n.table = table
	n.mu.Unlock()
}

// ownerName names a process's namespace by its cgroup: the pod (score 2)
// or the container (score 1), 0 when it is in neither.
func ownerName(procCgroup []byte, byPath map[string]*events.CgroupInfo) (name, source string, score int) {
	id, p := FromProcCgroup(procCgroup)
	if info := byPath[p]; info != nil {
		id = info.Identity // with the runtime's names
	}
	switch {
	case id.Pod != "":
		return id.Namespace + "/" + id.Pod, events.NetNSByPod, 2
	case id.PodUID != "":
		return "pod " + id.PodUID, events.NetNSByPod, 2
	case id.Container != "":
		return id.Container, events.NetNSByContainer, 1
	case id.ContainerID != "":
		return id.ShortID(), events.NetNSByContainer, 1
	}
	return "", "", 0
}

// cgroupsByPath indexes the cgroup Resolver's table by path, as
// /proc/PID/cgroup prints it.
func (n *NetNSResolver) cgroupsByPath() map[string]*events.CgroupInfo {
	if n.cgroups == nil {
		return nil
	}
	n.cgroups.mu.RLock()
	defer n.cgroups.mu.RUnlock()
	m := make(map[string]*events.CgroupInfo, len(n.cgroups.table))
	for _, info := range n.cgroups.table {
		if !info.Gone {
			m[info.Path] = info
		}
	}
	return m
}

// retire carries the namespaces that disappeared into the new table,
// marked Gone, for goneKeep; past maxGone the oldest go first. An inode
// back in use is another namespace, named afresh.
func (n *NetNSResolver) retire(table map[uint32]*NetNSInfo, now time.Time) {
	n.mu.RLock()
	old := n.table
	n.mu.RUnlock()
	retire(old, table, n.gone, now, func(info *NetNSInfo) *NetNSInfo {
		if info.Gone {
			return nil
		}
		g := *info
		g.Gone = true
		return &g
	})
}

// Lookup returns the namespace's name, "" when nothing names it. It
// allocates nothing; its method value is an events.NetNSLookup.
func (n *NetNSResolver) Lookup(inode uint32) string {
	n.mu.RLock()
	info := n.table[inode]
	n.mu.RUnlock()
	if info == nil {
		return ""
	}
	return info.Name
}

// Info returns what is known of the namespace, nil if nothing. The result
// is shared and must not be modified.
func (n *NetNSResolver) Info(inode uint32) *NetNSInfo {
	n.mu.RLock()
	defer n.mu.RUnlock()
	return n.table[inode]
}

// hostInode is the init network namespace's inode: kthreadd's (kernel
// threads run in init_net, and its namespace link is readable where
// PID 1's may not be: a PID 1 of another security context), else PID 1's.
// 0 when neither is readable, or /proc is not the initial PID namespace's.
func (n *NetNSResolver) hostInode() uint32 {
	if comm, err := os.ReadFile(filepath.Join(n.proc, "2/comm")); err == nil && string(comm) == "kthreadd\n" {
		if ino := nsInode(filepath.Join(n.proc, "2/ns/net")); ino != 0 {
			return ino
		}
	}
	return nsInode(filepath.Join(n.proc, "1/ns/net"))
}

// nsInode reads a namespace link ("net:[4026531840]") and returns its
// inode, 0 when it cannot be read.
func nsInode(link string) uint32 {
	s, err := os.Readlink(link)
	if err != nil {
		return 0
	}
	s, ok := strings.CutPrefix(s, "net:[")
	if !ok {
		return 0
	}
	v, err := strconv.ParseUint(strings.TrimSuffix(s, "]"), 10, 32)
	if err != nil {
		return 0
	}
	return uint32(v)
}
