package kernel

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// NetNSList is one listing of the network namespaces shared by every
// sampler of a tracer, kept up to date by change rather than rebuilt.
//
// Why: each sampler used to walk /proc/*/ns/net itself, every round: a
// stat per process, four samplers, most of an idle tracer's CPU time
// (pprof). Now the samplers due in the same pass share one listing
// (MaxAge), and a listing stats only the processes it has not seen
// before: /proc is read (one getdents pass), pids gone are dropped, new
// pids are stat-ed. Namespaces pinned in /run/netns or bind-mounted
// elsewhere (mountinfo) are read afresh each listing: they are few.
//
// What a listing by change could miss, and how it is bounded: a process
// that enters another namespace after it was first seen (setns,
// unshare). That happens almost always right after the process starts
// (`ip netns exec`, runc, CNI plugins), so a pid is stat-ed again on every
// listing while it is younger than youngFor; and every fullEvery every
// pid is stat-ed again. A namespace reachable only through such a process
// is then found at most fullEvery late, and an inode listed for a path
// that now leads elsewhere is caught by openNetNS, which checks it.
//
// Safe for concurrent use.
type NetNSList struct {
	// MaxAge: a listing younger than this is handed out again.
	MaxAge time.Duration

	procDir, runDir, mountinfo string
	youngFor, fullEvery        time.Duration

	mu       sync.Mutex
	at       time.Time // of the last listing; zero: none yet
	fullAt   time.Time // of the last listing that stat-ed every pid
	pids     map[int]pidNetNS
	cands    netnsCandidates
	warnings []error
	// Statistics, for tests and benchmarks: stats of /proc/PID/ns/net.
	stats int
}

// pidNetNS is what the last stat of /proc/PID/ns/net found.
type pidNetNS struct {
	ino    uint32 // 0: not readable (denied) or no namespace
	denied bool
	path   string    // /proc/PID/ns/net
	first  time.Time // when the pid was first listed
}

// Defaults of NewNetNSList.
const (
	netnsListMaxAge    = 500 * time.Millisecond
	netnsListYoungFor  = 5 * time.Second
	netnsListFullEvery = 30 * time.Second
)

// NewNetNSList returns an empty shared listing: the first call lists.
func NewNetNSList() *NetNSList {
	return newNetNSList("/proc", netnsRunDir, selfMountinfo)
}

func newNetNSList(procDir, runDir, mountinfo string) *NetNSList {
	return &NetNSList{MaxAge: netnsListMaxAge, procDir: procDir, runDir: runDir, mountinfo: mountinfo,
		youngFor: netnsListYoungFor, fullEvery: netnsListFullEvery, pids: map[int]pidNetNS{}}
}

// list returns the namespaces and the paths leading to each, and what
// could not be read. A nil list walks /proc afresh (the package's
// functions called without a shared listing). The result is shared:
// callers must not modify it.
func (l *NetNSList) list() (netnsCandidates, []error) {
	if l == nil {
		pids, err := listPIDs("/proc")
		if err != nil {
			return nil, []error{fmt.Errorf("list processes: %w", err)}
		}
		return listNetNS("/proc", pids, netnsRunDir, selfMountinfo)
	}
	return l.listAt(time.Now())
}

// listAt is list at the time now.
func (l *NetNSList) listAt(now time.Time) (netnsCandidates, []error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.at.IsZero() && now.Sub(l.at) >= 0 && now.Sub(l.at) < l.MaxAge {
		return l.cands, l.warnings
	}
	pids, err := listPIDs(l.procDir)
	if err != nil {
		// Keep the last listing: the caller's namespaces did not vanish
		// because /proc could not be read once.
		return l.cands, []error{fmt.Errorf("list processes: %w", err)}
	}
	full := l.fullAt.IsZero() || now.Sub(l.fullAt) >= l.fullEvery || now.Before(l.fullAt)
	if full {
		l.fullAt = now
	}
	next := make(map[int]pidNetNS, len(pids))
	c := netnsCandidates{}
	var warnings []error
	var denied []int
	for _, pid := range pids {
		e, known := l.pids[pid]
		if !known {
			e.first = now
			e.path = filepath.Join(l.procDir, strconv.Itoa(pid), "ns", "net")
		}
		if !known || full || now.Sub(e.first) < l.youngFor {
			e.ino, e.denied = 0, false
			ino, err := statInode(e.path)
			l.stats++
			switch {
			case err == nil:
				e.ino = ino
			case errors.Is(err, fs.ErrPermission):
				e.denied = true
			case errors.Is(err, fs.ErrNotExist), errors.Is(err, unix.ESRCH):
				continue // exited
			default:
				warnings = append(warnings, fmt.Errorf("network namespace of pid %d: %w", pid, err))
				continue
			}
		}
		next[pid] = e
		if e.denied {
			denied = append(denied, pid)
		}
		if e.ino != 0 {
			c.add(e.ino, e.path)
		}
	}
	l.pids = next
	if len(denied) > 0 {
		warnings = append(warnings, l.deniedWarning(denied))
	}
	warnings = append(warnings, listPinnedNetNS(c, l.runDir, l.mountinfo)...)
	l.cands, l.warnings, l.at = c, warnings, now
	return c, warnings
}

// deniedWarning is the warning about the processes whose namespace could
// not be read; its text is built again only when the set changed (it
// reads their comm).
func (l *NetNSList) deniedWarning(denied []int) error {
	for _, w := range l.warnings {
		var d *deniedPIDs
		if errors.As(w, &d) && slices.Equal(d.pids, denied) {
			return d
		}
	}
	return &deniedPIDs{pids: denied, err: deniedError(l.procDir, "network namespaces", "connections in a namespace only they are in are missed", denied)}
}

// deniedPIDs is a denied warning with the pids it names.
type deniedPIDs struct {
	pids []int
	err  error
}

func (d *deniedPIDs) Error() string { return d.err.Error() }
func (d *deniedPIDs) Unwrap() error { return d.err }

// PIDs returns the processes of the last listing (listing first if there
// is none younger than MaxAge), in increasing order.
func (l *NetNSList) PIDs() ([]int, error) {
	if l == nil {
		return listPIDs("/proc")
	}
	l.listAt(time.Now())
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.at.IsZero() {
		return listPIDs(l.procDir)
	}
	pids := make([]int, 0, len(l.pids))
	for pid := range l.pids {
		pids = append(pids, pid)
	}
	slices.Sort(pids)
	return pids, nil
}

// listPinnedNetNS adds to c the namespaces pinned in runDir (`ip netns
// add`) and bind-mounted elsewhere (mountinfo), and returns what could not
// be read.
func listPinnedNetNS(c netnsCandidates, netnsDir, mountinfo string) []error {
	var warnings []error
	names, err := readDirNames(netnsDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		warnings = append(warnings, fmt.Errorf("list named network namespaces: %w", err))
	}
	for _, name := range names {
		p := filepath.Join(netnsDir, name)
		ino, err := nsfsInode(p)
		if err != nil {
			warnings = append(warnings, fmt.Errorf("named network namespace %q: %w", name, err))
			continue
		}
		c.add(ino, p)
	}

	f, err := os.Open(mountinfo)
	if err != nil {
		return append(warnings, fmt.Errorf("list bind-mounted network namespaces: %w", err))
	}
	defer f.Close()
	mounts, err := parseMountinfo(f)
	if err != nil {
		return append(warnings, fmt.Errorf("list bind-mounted network namespaces: parse %s: %w", mountinfo, err))
	}
	for _, m := range mounts {
		if m.fstype != "nsfs" || !strings.HasPrefix(m.root, "net:[") {
			continue
		}
		if strings.HasPrefix(m.point, netnsDir+"/") {
			continue // already seen, and a failure there is already reported
		}
		ino, err := nsfsInode(m.point)
		if err != nil {
			// A mount we cannot see through (overmounted, or in a
			// directory we may not search); not worth a warning when
			// the namespace is reachable some other way.
			continue
		}
		c.add(ino, m.point)
	}
	return warnings
}
