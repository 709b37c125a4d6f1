package export

import (
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
