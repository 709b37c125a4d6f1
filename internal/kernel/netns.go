package kernel

import (
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// netnsRunDir is where `ip netns add` bind-mounts named namespaces.
const netnsRunDir = "/run/netns"

// NetNSInode returns the inode number of the network namespace of process
// pid, the number BPF programs read from sk->__sk_common.skc_net.net->ns.inum.
func NetNSInode(pid int) (uint32, error) {
	p := filepath.Join("/proc", strconv.Itoa(pid), "ns", "net")
	ino, err := statInode(p)
	if err != nil {
		return 0, fmt.Errorf("network namespace of pid %d: %w", pid, err)
	}
	return ino, nil
}

// NetNSByName returns the inode number of a named network namespace, one
// made by `ip netns add NAME` and bind-mounted at /run/netns/NAME.
func NetNSByName(name string) (uint32, error) {
	if name == "" || name == "." || name == ".." || strings.ContainsRune(name, '/') {
		return 0, fmt.Errorf("invalid network namespace name %q", name)
	}
	p := filepath.Join(netnsRunDir, name)
	ino, err := nsfsInode(p)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, fmt.Errorf("network namespace %q not found in %s: list them with 'ip netns list'", name, netnsRunDir)
	}
	if err != nil {
		return 0, fmt.Errorf("network namespace %q: %w", name, err)
	}
	return ino, nil
}

// statInode returns the inode of the file p names, following links: for
// /proc/PID/ns/net that is the namespace itself.
func statInode(p string) (uint32, error) {
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		return 0, &fs.PathError{Op: "stat", Path: p, Err: err}
	}
	return nsInum(st.Ino, p)
}

// nsfsInode is statInode for a path that may not be a namespace at all: a
// file in /run/netns stays behind as an empty regular file when its bind
// mount is gone, and its inode would name nothing.
func nsfsInode(p string) (uint32, error) {
	ino, err := statInode(p)
	if err != nil {
		return 0, err
	}
	var sfs unix.Statfs_t
	if err := unix.Statfs(p, &sfs); err != nil {
		return 0, &fs.PathError{Op: "statfs", Path: p, Err: err}
	}
	if sfs.Type != unix.NSFS_MAGIC {
		return 0, fmt.Errorf("%s is not a namespace (no bind mount of one)", p)
	}
	return ino, nil
}

// nsInum narrows an inode to the 32 bits namespace inode numbers have
// (ns_common.inum is unsigned int), which is what events.Conn.NetNS holds.
func nsInum(ino uint64, p string) (uint32, error) {
	if ino > math.MaxUint32 {
		return 0, fmt.Errorf("%s: inode %d does not fit a namespace inode number", p, ino)
	}
	return uint32(ino), nil
}

// netnsCandidates maps each network namespace inode to the paths that lead
// to it. Several are kept because any one may vanish (its process exits)
// before the namespace is opened.
type netnsCandidates map[uint32][]string

func (c netnsCandidates) add(ino uint32, p string) { c[ino] = append(c[ino], p) }

// inodes returns the namespaces in increasing inode order, so that scans
// and their output are deterministic.
func (c netnsCandidates) inodes() []uint32 {
	return slices.Sorted(maps.Keys(c))
}

// listNetNS finds every network namespace reachable from this mount
// namespace: those of processes (/proc/PID/ns/net), those `ip netns add`
// pinned in /run/netns, and any other bind mount of one (container
// runtimes pin theirs elsewhere, e.g. /run/docker/netns), found in
// mountinfo. Namespaces kept alive only by an open fd or a socket are not
// reachable and are missed.
//
// Unreadable entries are reported in warnings; a process that exits during
// the scan is not a warning, because its namespace is either gone or
// reachable through another path.
func listNetNS(procDir string, pids []int, netnsDir, mountinfo string) (netnsCandidates, []error) {
	c := netnsCandidates{}
	var warnings []error
	var denied []int
	for _, pid := range pids {
		p := filepath.Join(procDir, strconv.Itoa(pid), "ns", "net")
		ino, err := statInode(p)
		switch {
		case err == nil:
			c.add(ino, p)
		case errors.Is(err, fs.ErrPermission):
			denied = append(denied, pid)
		case errors.Is(err, fs.ErrNotExist), errors.Is(err, unix.ESRCH):
			// exited
		default:
			warnings = append(warnings, fmt.Errorf("network namespace of pid %d: %w", pid, err))
		}
	}
	if len(denied) > 0 {
		warnings = append(warnings, deniedError(procDir, "network namespaces", "connections in a namespace only they are in are missed", denied))
	}

	return c, append(warnings, listPinnedNetNS(c, netnsDir, mountinfo)...)
}

// readDirNames lists a directory without sorting or stat-ing its entries,
// which matters for /proc and /proc/PID/fd on busy machines.
func readDirNames(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.Readdirnames(-1)
}

// listPIDs returns the processes (thread group leaders) in procDir.
func listPIDs(procDir string) ([]int, error) {
	names, err := readDirNames(procDir)
	if err != nil {
		return nil, err
	}
	pids := make([]int, 0, len(names))
	for _, n := range names {
		if n == "" || n[0] < '0' || n[0] > '9' {
			continue
		}
		pid, err := strconv.Atoi(n)
		if err != nil || pid <= 0 {
			continue
		}
		pids = append(pids, pid)
	}
	slices.Sort(pids)
	return pids, nil
}
