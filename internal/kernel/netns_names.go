package kernel

import (
	"os"
	"path/filepath"
)

// NetNSNames maps the inode of every network namespace named with `ip
// netns add` to its name, as `ip netns list` shows them. A missing
// /run/netns is no error (no namespace is named); names of entries that
// are no longer namespaces (their bind mount is gone) are left out, as
// are names that would need escaping (outside printable ASCII, or with a
// quote or backslash): they are shown by inode.
func NetNSNames() (map[uint32]string, error) {
	return netnsNames(netnsRunDir)
}

func netnsNames(dir string) (map[uint32]string, error) {
	names := map[uint32]string{}
	entries, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		return names, nil
	}
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		if !plainName(e.Name()) {
			continue
		}
		ino, err := nsfsInode(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		if _, dup := names[ino]; !dup { // ReadDir sorts: the first name wins
			names[ino] = e.Name()
		}
	}
	return names, nil
}

func plainName(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x21 || c >= 0x7f || c == '"' || c == '\\' {
			return false
		}
	}
	return s != ""
}
