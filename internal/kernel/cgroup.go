package kernel

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Where cgroup v2 is looked for. A pure cgroup v2 system mounts it at
// /sys/fs/cgroup; systemd's hybrid mode mounts v1 controllers there and the
// v2 hierarchy (the one bpf_get_current_cgroup_id reports) at
// /sys/fs/cgroup/unified.
const (
	cgroupMountPoint       = "/sys/fs/cgroup"
	cgroupHybridMountPoint = "/sys/fs/cgroup/unified"
	selfMountinfo          = "/proc/self/mountinfo"
)

// cgroupFS locates the cgroup v2 hierarchy in this mount namespace.
type cgroupFS struct {
	point string // where it is mounted, e.g. /sys/fs/cgroup
	// root is the mount's root inside the hierarchy, relative to this
	// process's cgroup namespace: "/" unless a subtree was bind-mounted (a
	// container without its own cgroup namespace).
	root string
}

// findCgroup2 picks the cgroup v2 mount at /sys/fs/cgroup, or at
// /sys/fs/cgroup/unified in hybrid mode.
func findCgroup2(mounts []mount) (cgroupFS, error) {
	var found [2]*mount
	for i := range mounts {
		m := &mounts[i]
		if m.fstype != "cgroup2" {
			continue
		}
		// Later lines are mounted on top of earlier ones at the same
		// point, so the last match is the one that is visible.
		switch m.point {
		case cgroupMountPoint:
			found[0] = m
		case cgroupHybridMountPoint:
			found[1] = m
		}
	}
	for _, m := range found {
		if m != nil {
			return cgroupFS{point: m.point, root: m.root}, nil
		}
	}
	return cgroupFS{}, fmt.Errorf("cgroup v2 is not mounted at %s (nor at %s, as in hybrid mode): mount it with 'mount -t cgroup2 none %s'",
		cgroupMountPoint, cgroupHybridMountPoint, cgroupMountPoint)
}

// loadCgroupFS finds the cgroup v2 mount in mountinfo.
func loadCgroupFS(mountinfo string) (cgroupFS, error) {
	f, err := os.Open(mountinfo)
	if err != nil {
		return cgroupFS{}, fmt.Errorf("find cgroup v2 mount: %w", err)
	}
	defer f.Close()
	mounts, err := parseMountinfo(f)
	if err != nil {
		return cgroupFS{}, fmt.Errorf("find cgroup v2 mount: parse %s: %w", mountinfo, err)
	}
	return findCgroup2(mounts)
}

// ResolveCgroup returns the id and level of a cgroup v2 cgroup, the two
// numbers the BPF side filters on.
//
// path is either a directory under the cgroup v2 mount
// ("/sys/fs/cgroup/system.slice/nginx.service") or a path relative to the
// cgroup root, with or without a leading slash ("system.slice/nginx.service",
// "/system.slice/nginx.service", as /proc/PID/cgroup prints it).
//
// id is the cgroup directory's inode number: cgroup v2 ids are kernfs node
// ids, and since Linux 5.5 a kernfs inode number is that id on 64-bit
// machines, so it equals what bpf_get_current_cgroup_id returns.
//
// level is the cgroup's depth below the root (root = 0, "system.slice" = 1,
// "system.slice/x.service" = 2), the argument bpf_get_current_ancestor_cgroup_id
// needs to test whether a task is inside this cgroup. The kernel counts from
// the real root; this equals the depth seen here when the tracer runs in the
// initial cgroup namespace, as a tracer normally does.
func ResolveCgroup(path string) (id uint64, level int, err error) {
	cg, err := loadCgroupFS(selfMountinfo)
	if err != nil {
		return 0, 0, fmt.Errorf("resolve cgroup %q: %w", path, err)
	}
	return cg.resolve(path)
}

func (c cgroupFS) resolve(p string) (id uint64, level int, err error) {
	rel, err := c.relative(p)
	if err != nil {
		return 0, 0, err
	}
	dir := filepath.Join(c.point, rel)
	id, err = c.dirID(dir)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ENOTDIR) {
		return 0, 0, fmt.Errorf("cgroup %q not found under %s: pass a cgroup v2 path such as %s/system.slice/nginx.service",
			p, c.point, c.point)
	}
	if err != nil {
		return 0, 0, fmt.Errorf("resolve cgroup %q: %w", p, err)
	}
	return id, depth(path.Join(c.root, rel)), nil
}

// relative turns a user's cgroup path into a path relative to the mount
// point, without "..": a relative path can name nothing outside the
// hierarchy.
func (c cgroupFS) relative(p string) (string, error) {
	if p == "" {
		return "", errors.New("empty cgroup path: pass a cgroup v2 path such as " + c.point + "/system.slice/nginx.service")
	}
	clean := filepath.Clean(p)
	if rel, ok := underDir(clean, c.point); ok {
		return rel, nil
	}
	if _, ok := underDir(clean, cgroupMountPoint); ok {
		// A filesystem path, but not on the v2 hierarchy: in hybrid mode
		// /sys/fs/cgroup/<controller>/... is a cgroup v1 directory, whose
		// inode is not an id the BPF helpers know.
		return "", fmt.Errorf("cgroup %q is not on the cgroup v2 hierarchy mounted at %s: pass a cgroup v2 path such as %s/system.slice/nginx.service",
			p, c.point, c.point)
	}
	return strings.TrimPrefix(path.Clean("/"+p), "/"), nil
}

// dirFor returns the directory of a cgroup path read from /proc/PID/cgroup.
func (c cgroupFS) dirFor(procPath string) (string, error) {
	rel, ok := underDir(path.Clean(procPath), c.root)
	if !ok {
		return "", fmt.Errorf("cgroup %q is outside the part of the hierarchy mounted at %s", procPath, c.point)
	}
	return filepath.Join(c.point, rel), nil
}

// dirID returns the inode of a directory on the cgroup v2 filesystem.
func (c cgroupFS) dirID(dir string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return 0, &fs.PathError{Op: "stat", Path: dir, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return 0, &fs.PathError{Op: "stat", Path: dir, Err: unix.ENOTDIR}
	}
	var sfs unix.Statfs_t
	if err := unix.Statfs(dir, &sfs); err != nil {
		return 0, &fs.PathError{Op: "statfs", Path: dir, Err: err}
	}
	if sfs.Type != unix.CGROUP2_SUPER_MAGIC {
		return 0, fmt.Errorf("%s is not on a cgroup v2 filesystem", dir)
	}
	return st.Ino, nil
}

// underDir reports whether p is dir or below it, and returns the rest of p
// without a leading slash. Both must be clean.
func underDir(p, dir string) (string, bool) {
	if p == dir {
		return "", true
	}
	if dir == "/" {
		return strings.TrimPrefix(p, "/"), strings.HasPrefix(p, "/")
	}
	rest, ok := strings.CutPrefix(p, dir+"/")
	return rest, ok
}

// depth counts the components of a slash-separated path.
func depth(p string) int {
	n := 0
	for _, c := range strings.Split(p, "/") {
		if c != "" {
			n++
		}
	}
	return n
}

// CgroupProcPath returns a cgroup v2 path in the form /proc/PID/cgroup
// prints it ("/system.slice/nginx.service"), whatever form the user gave,
// so that owners found through /proc can be matched against it.
func CgroupProcPath(p string) (string, error) {
	cg, err := loadCgroupFS(selfMountinfo)
	if err != nil {
		return "", fmt.Errorf("resolve cgroup %q: %w", p, err)
	}
	rel, err := cg.relative(p)
	if err != nil {
		return "", err
	}
	return path.Join(cg.root, rel), nil
}

// Cgroup2Mount returns where the cgroup v2 hierarchy is mounted
// (/sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid systems).
func Cgroup2Mount() (string, error) {
	cg, err := loadCgroupFS(selfMountinfo)
	if err != nil {
		return "", err
	}
	return cg.point, nil
}
