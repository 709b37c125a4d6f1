package report

import "github.com/conntracer/conntracer/internal/events"

// recordedNames are the identities a recording carries (KindCgroupIdentity,
// written once per cgroup by the live tracer) and the cgroup of each
// process seen, so that a report names the containers and pods of its
// findings even when they are long gone.
type recordedNames struct {
	cgroups map[uint64]*events.CgroupInfo
	pids    map[uint32]uint64 // process -> its last cgroup id
	// netns names network namespaces (KindNetNSName): the last name
	// recorded for each inode.
	netns map[uint32]string
}

// note takes what an event says about names.
func (n *recordedNames) note(ev *events.Event) {
	var p *events.Process
	switch ev.Kind {
	case events.KindCgroupIdentity:
		if n.cgroups == nil {
			n.cgroups = map[uint64]*events.CgroupInfo{}
		}
		info := ev.Cgroup.Info
		n.cgroups[ev.Cgroup.ID] = &info
		return
	case events.KindNetNSName:
		if n.netns == nil {
			n.netns = map[uint32]string{}
		}
		n.netns[ev.NetNSName.Inode] = ev.NetNSName.Name
		return
	case events.KindConnClosed, events.KindConnExisting, events.KindSockOpen:
		p = &ev.Conn.Owner
	case events.KindConnect, events.KindUnixListener, events.KindUnixDgramSend:
		p = &ev.Connect.Owner
	default:
		return
	}
	if p.PID == 0 || p.CgroupID == 0 {
		return
	}
	if n.pids == nil {
		n.pids = map[uint32]uint64{}
	}
	n.pids[p.PID] = p.CgroupID
}

// lookup is an events.CgroupLookup over the recorded identities; nil
// when the recording names none (one of an older tracer, or of a host
// without containers), so that the views look as they did.
func (n *recordedNames) lookup() events.CgroupLookup {
	if len(n.cgroups) == 0 {
		return nil
	}
	return func(cg uint64) *events.CgroupInfo { return n.cgroups[cg] }
}

// netnsLookup is an events.NetNSLookup over the recorded namespace
// names; nil when the recording names none.
func (n *recordedNames) netnsLookup() events.NetNSLookup {
	if len(n.netns) == 0 {
		return nil
	}
	return func(ino uint32) string { return n.netns[ino] }
}

// workload names a process's container or pod as the recording does, ""
// when it does not.
func (n *recordedNames) workload(pid uint32) string {
	if info := n.cgroups[n.pids[pid]]; info != nil {
		return info.Workload
	}
	return ""
}

// owner names a finding's process: its comm, then its workload when the
// recording names its cgroup ("python3 shop/checkout-7d9f container api").
func (n *recordedNames) owner(pid uint32, comm string) string {
	if w := n.workload(pid); w != "" {
		return comm + " " + w
	}
	return comm
}
