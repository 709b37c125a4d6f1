package export

import (
	"strconv"

	"github.com/conntracer/conntracer/internal/aggregate"
	"github.com/conntracer/conntracer/internal/events"
)

// workload names a cgroup's container, pod or unit for the view, "" if
// unknown.
func (o *ViewOptions) workload(cgroupID uint64) string {
	if o.Identities == nil || cgroupID == 0 {
		return ""
	}
	if info := o.Identities(cgroupID); info != nil {
		return info.Workload
	}
	return ""
}

// findingOwner is a finding's owner as the view names it: the comm, then
// the workload of its process when known ("python3 shop/checkout-7d9f
// container api").
func (o *ViewOptions) findingOwner(s *aggregate.Snapshot, f *aggregate.Finding) string {
	if w := o.workload(processCgroup(s, f.PID)); w != "" {
		return f.Comm + " " + w
	}
	return f.Comm
}

// processCgroup returns the cgroup id of the snapshot's process pid, 0 if
// it has none. Findings name their process by pid.
func processCgroup(s *aggregate.Snapshot, pid uint32) uint64 {
	if pid == 0 {
		return 0
	}
	for i := range s.Processes {
		if p := &s.Processes[i]; p.PID == pid {
			return p.CgroupID
		}
	}
	return 0
}

// Name adds what lookup knows of each process's cgroup to the document:
// the identity's fields and workload on processes, the workload on
// findings. A nil lookup adds nothing.
func (d *Document) Name(s *aggregate.Snapshot, lookup events.CgroupLookup) {
	if lookup == nil {
		return
	}
	name := func(cg uint64) *events.CgroupInfo {
		if cg == 0 {
			return nil
		}
		return lookup(cg)
	}
	for i := range d.Processes {
		p := &d.Processes[i]
		if info := name(p.CgroupID); info != nil && !info.Identity.IsZero() {
			id := info.Identity
			p.Identity, p.Workload = &id, info.Workload
			if p.Cgroup == "" {
				p.Cgroup = info.Path
			}
		}
	}
	for i := range d.Findings {
		f := &d.Findings[i]
		if info := name(processCgroup(s, f.PID)); info != nil {
			f.Workload = info.Workload
		}
	}
}

// NameNetNS names the network namespaces the document mentions: each
// remote and finding gains netns_name, and netns_names maps every
// namespace of the document (remotes, findings, TIME_WAIT, ports,
// conntrack, counters, drops, connect failures) to its name. A nil lookup
// adds nothing.
func (d *Document) NameNetNS(lookup events.NetNSLookup) {
	if lookup == nil {
		return
	}
	names := map[string]string{}
	name := func(ino uint32) string {
		if ino == 0 {
			return ""
		}
		n := lookup(ino)
		if n != "" {
			names[strconv.FormatUint(uint64(ino), 10)] = n
		}
		return n
	}
	for i := range d.Processes {
		for j := range d.Processes[i].Remotes {
			r := &d.Processes[i].Remotes[j]
			r.NetNSName = name(r.NetNS)
		}
	}
	for i := range d.Findings {
		d.Findings[i].NetNSName = name(d.Findings[i].NetNS)
	}
	for _, n := range d.TimeWait.ByNetNS {
		name(n.NetNS)
	}
	for _, p := range d.Ports {
		name(p.NetNS)
	}
	for _, c := range d.Conntrack {
		name(c.NetNS)
	}
	for _, c := range d.KernelCounters {
		name(c.NetNS)
	}
	for _, dc := range d.Drops.ByReason {
		name(dc.NetNS)
	}
	for _, o := range d.Drops.ListenOverflows {
		name(o.NetNS)
	}
	for _, f := range d.ConnectFailures {
		name(f.NetNS)
	}
	if len(names) > 0 {
		d.NetNSNames = names
	}
}

// netnsName names a namespace for the view: its name, else its inode.
func (o *ViewOptions) netnsName(ino uint32) string {
	if o.NetNSNames != nil && ino != 0 {
		if n := o.NetNSNames(ino); n != "" {
			return n
		}
	}
	if ino == 0 {
		return "-"
	}
	return strconv.FormatUint(uint64(ino), 10)
}

// netnsWidth is the NETNS column's width: a pod's "namespace/name" is
// often longer, and pushes the WORKLOAD column right by what it exceeds.
const netnsWidth = 16

// processNetNS is a process row's NETNS: the namespace of its remotes when
// they share one, "*" when they are in several, "-" without remotes; ""
// when the column is off.
func (o *ViewOptions) processNetNS(p *aggregate.ProcessSnapshot) string {
	if o.NetNSNames == nil {
		return ""
	}
	var ino uint32
	for i := range p.Remotes {
		switch k := p.Remotes[i].Key.NetNS; {
		case ino == 0:
			ino = k
		case k != ino:
			return "*"
		}
	}
	return o.netnsName(ino)
}
