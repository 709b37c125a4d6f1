package export

// The labels a Prometheus user expects of a container's series, beside
// comm and cgroup: namespace, pod and container, the names the kubelet
// gives them (kube-state-metrics and cAdvisor use the same three), so
// that the tracer's series join theirs. On a plain container host pod and
// namespace stay empty and container holds the runtime's name.
//
// They are part of a process group's label set, so today's top-K folding
// bounds them: K groups have series of their own, the rest are summed
// into comm="other" (all names empty). A container that is gone takes its
// names with it (the resolver drops its cgroup), so its series disappear
// at the next scrape (retired, below).
//
// The three are there when the collector is given names
// (MetricsOptions.Identities), as the tracer always is.
func processLabels(named bool) []string {
	if named {
		return []string{"comm", "cgroup", "namespace", "pod", "container"}
	}
	return []string{"comm", "cgroup"}
}

// retired reports whether a cgroup's container is gone: its processes'
// series are no longer exported. Counting them under the label set that
// remains (the same comm without names) would add a deleted pod's history
// to another series in one step, which rate() reads as a burst; dropping
// them ends the pod's series, which Prometheus handles (a series that
// stops), and leaves "other" monotonic (the fold keeps what a forgotten
// group added to it).
func (c *Collector) retired(cgroupID uint64) bool {
	if c.opts.Identities == nil || cgroupID == 0 {
		return false
	}
	info := c.opts.Identities(cgroupID)
	return info != nil && info.Gone
}

// identityLabels fills in l's names for the cgroup id.
func (c *Collector) identityLabels(l *groupLabels, cgroupID uint64) {
	if c.opts.Identities == nil || cgroupID == 0 {
		return
	}
	if info := c.opts.Identities(cgroupID); info != nil {
		id := &info.Identity
		l.namespace, l.pod, l.container = id.Namespace, id.Pod, id.Container
		if l.container == "" {
			// A container the runtime did not name: its short id, as
			// docker ps shows it, rather than nothing.
			l.container = id.ShortID()
		}
	}
}

// labels returns a group's label values, in processLabels' order,
// followed by extra.
func (c *Collector) labels(g *procGroup, extra ...string) []string {
	if c.opts.Identities == nil {
		return append([]string{g.comm, g.cgroup}, extra...)
	}
	return append([]string{g.comm, g.cgroup, g.namespace, g.pod, g.container}, extra...)
}
