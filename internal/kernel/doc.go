// Package kernel reads the kernel's own view of TCP sockets and of the
// processes and cgroups around them, and turns it into events.Events.
//
// It is the tracer's start-up sampler: the eBPF programs only see connections
// that change state after they are attached, so ExistingConnections asks the
// kernel (sock_diag over netlink, in every network namespace) which
// connections are already open and finds their owners in /proc. It also
// resolves the identifiers the BPF side filters on: cgroup v2 ids and levels
// (ResolveCgroup) and network namespace inodes (NetNSInode, NetNSByName).
//
// Everything here is a cold path run once at start-up or on a flag; none of
// it is on the per-event hot path. The package holds no state between calls.
package kernel
