package kernel

import (
	"io/fs"
	"path/filepath"
	"syscall"
)

// CgroupNames maps cgroup v2 ids (the directory inode, what the kernel
// reports as a task's cgroup id) to paths as /proc/PID/cgroup prints them
// ("/system.slice/nginx.service"). It walks the hierarchy once; call it
// again to pick up cgroups created since. Unreadable parts are skipped:
// their ids stay unnamed.
func CgroupNames() (map[uint64]string, error) {
	cg, err := loadCgroupFS(selfMountinfo)
	if err != nil {
		return nil, err
	}
	names := map[uint64]string{}
	err = filepath.WalkDir(cg.point, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil // a cgroup removed mid-walk, or not readable
		}
		if !d.IsDir() {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return nil
		}
		st, ok := info.Sys().(*syscall.Stat_t)
		if !ok {
			return nil
		}
		rel, err := filepath.Rel(cg.point, p)
		if err != nil {
			return nil
		}
		names[st.Ino] = filepath.Join(cg.root, rel)
		return nil
	})
	return names, err
}
