package identity

import (
	"bufio"
	"bytes"
	"hash/fnv"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Hosts that mount cgroup v1 alone.
//
// The kernel's cgroup id of a process (bpf_get_current_cgroup_id) is its
// cgroup in the unified (v2) hierarchy. Where no cgroup2 is mounted every
// process sits in that hierarchy's root, so the id names nothing: the
// identity must come from the process, by pid. RefreshByPID reads every
// process's /proc/PID/cgroup, whose v1 lines (name=systemd, cpu,cpuacct,
// pids...) carry the same container ids and pod UIDs as v2 paths do, and
// files each distinct cgroup path under an id of its own (v1ID); the event
// loop then puts that id in each owner (events.Owners.SetCgroupByPID), so
// that every output, which looks identities up by cgroup id, names them.

// CgroupV2Mounted reports whether mountinfo (/proc/self/mountinfo) lists a
// cgroup2 filesystem: false on a cgroup v1-only host. An unreadable file
// counts as mounted (the v2 lookups then say what failed).
func CgroupV2Mounted(mountinfo string) bool {
	b, err := os.ReadFile(mountinfo)
	if err != nil {
		return true
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		// ... optional fields - fstype source options
		_, after, ok := strings.Cut(sc.Text(), " - ")
		if ok && strings.HasPrefix(after, "cgroup2 ") {
			return true
		}
	}
	return false
}

// v1IDBit marks the ids v1ID makes. Real cgroup v2 ids are kernfs ids
// (inode | generation<<32, the generation counting from 1), never this
// high; on a v1-only host the only real id is the root's.
const v1IDBit = 1 << 63

// v1ID is the id under which the resolver files a v1 cgroup path: stable
// for a path, the same for every process in it.
func v1ID(path string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(path))
	return h.Sum64() | v1IDBit
}

// RefreshByPID rebuilds the table from the processes under procRoot
// (/proc), for cgroup v1-only hosts: each process's cgroup is the v1 path
// that names most (a container over a pod over a unit, as
// FromProcCgroup chooses), filed under v1ID. Containers are named by the
// runtimes as with Refresh. Processes that vanish mid-walk are skipped.
func (r *Resolver) RefreshByPID(procRoot string) error {
	entries, err := os.ReadDir(procRoot)
	if err != nil {
		return err
	}
	paths := map[uint64]string{}
	pids := make(map[uint32]uint64, len(entries))
	for _, e := range entries {
		pid, err := strconv.ParseUint(e.Name(), 10, 32)
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(procRoot, e.Name(), "cgroup"))
		if err != nil {
			continue
		}
		_, p := FromProcCgroup(v1Lines(b))
		if p == "" {
			continue
		}
		id := v1ID(p)
		paths[id] = p
		pids[uint32(pid)] = id
	}
	err = r.Refresh(paths)
	r.mu.Lock()
	r.pids = pids
	r.mu.Unlock()
	return err
}

// v1Lines drops the unified hierarchy's line ("0::/..."): on a v1-only
// host it says "/" for every process, and on a hybrid host (where tests
// run) it would hide the v1 lines this mode is about.
func v1Lines(content []byte) []byte {
	var out []byte
	for line := range bytes.Lines(content) {
		if bytes.HasPrefix(line, []byte("0::")) {
			continue
		}
		out = append(out, line...)
	}
	return out
}

// CgroupOfPID returns the id under which RefreshByPID filed the process's
// cgroup, 0 when it has none (not seen yet, or not in v1 mode). It
// allocates nothing: the event loop calls it per owner.
func (r *Resolver) CgroupOfPID(pid uint32) uint64 {
	r.mu.RLock()
	id := r.pids[pid]
	r.mu.RUnlock()
	return id
}
