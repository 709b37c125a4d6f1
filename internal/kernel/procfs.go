package kernel

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// userHZ is the unit of the times in /proc/PID/stat (sysconf(_SC_CLK_TCK)).
// It is USER_HZ, part of the kernel ABI and 100 on every architecture Linux
// supports, independent of the kernel's internal CONFIG_HZ; cgo would be
// needed to ask sysconf, for an answer that cannot differ.
const userHZ = 100

// nsPerTick converts /proc/PID/stat ticks to nanoseconds.
const nsPerTick = 1_000_000_000 / userHZ

// statStartTimeField is the 1-based field number of starttime in
// /proc/PID/stat (proc(5)).
const statStartTimeField = 22

// errNoCgroupV2 says a process is not in any cgroup v2 hierarchy (a cgroup v1
// only system). It is not a failure to read the file.
var errNoCgroupV2 = errors.New("no cgroup v2 (0::) entry")

// parseStatStartTime returns the start time of a task, in nanoseconds since
// boot, from the contents of /proc/PID/stat.
//
// The kernel computes starttime from task->start_boottime (CLOCK_BOOTTIME)
// rounded down to whole ticks, so the result is a multiple of 10ms and at
// most 10ms earlier than the value a BPF program reads from the task.
func parseStatStartTime(r io.Reader) (uint64, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return 0, err
	}
	// comm is field 2, in parentheses, and may itself contain spaces and
	// parentheses ("a) b (c"); the kernel does not escape it, so the only
	// reliable anchor is the last ')'.
	end := bytes.LastIndexByte(data, ')')
	if end < 0 {
		return 0, fmt.Errorf("stat line has no ')' after comm: %q", truncate(data))
	}
	fields := strings.Fields(string(data[end+1:]))
	// fields[0] is field 3 (state).
	i := statStartTimeField - 3
	if len(fields) <= i {
		return 0, fmt.Errorf("stat line has %d fields after comm, want at least %d", len(fields), i+1)
	}
	ticks, err := strconv.ParseUint(fields[i], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parse starttime: %w", err)
	}
	return ticks * nsPerTick, nil
}

// parseCgroupV2Path returns the cgroup v2 path ("/system.slice/x.service")
// from the contents of /proc/PID/cgroup: the "0::" line, which exists both on
// a pure cgroup v2 system and in hybrid mode. The path is relative to the
// reader's cgroup namespace root.
func parseCgroupV2Path(r io.Reader) (string, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if p, ok := strings.CutPrefix(sc.Text(), "0::"); ok {
			return p, nil
		}
	}
	if err := sc.Err(); err != nil {
		return "", err
	}
	return "", errNoCgroupV2
}

// mount is the part of a /proc/PID/mountinfo line this package needs.
type mount struct {
	root   string // path of the mount's root inside its filesystem
	point  string // mount point, relative to the process's root
	fstype string
}

// parseMountinfo parses /proc/PID/mountinfo (proc(5)).
func parseMountinfo(r io.Reader) ([]mount, error) {
	var mounts []mount
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if line == "" {
			continue
		}
		// The optional fields between field 6 and the separator vary in
		// number; the " - " separator is what delimits them.
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			return nil, fmt.Errorf("mountinfo line %d: no ' - ' separator", n)
		}
		f := strings.Fields(pre)
		g := strings.Fields(post)
		if len(f) < 5 || len(g) < 1 {
			return nil, fmt.Errorf("mountinfo line %d: too few fields", n)
		}
		mounts = append(mounts, mount{
			root:   unescapeMountinfo(f[3]),
			point:  unescapeMountinfo(f[4]),
			fstype: g[0],
		})
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return mounts, nil
}

// unescapeMountinfo undoes the kernel's octal escaping of ' ', '\t', '\n'
// and '\\' in mountinfo paths (fs/proc_namespace.c, mangle()).
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && isOctal(s[i+1]) && isOctal(s[i+2]) && isOctal(s[i+3]) {
			b.WriteByte((s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0'))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(c byte) bool { return c >= '0' && c <= '7' }

// parseSocketLink returns the inode of a "socket:[INODE]" fd link target.
func parseSocketLink(target []byte) (uint32, bool) {
	const prefix = "socket:["
	if len(target) < len(prefix)+2 || string(target[:len(prefix)]) != prefix || target[len(target)-1] != ']' {
		return 0, false
	}
	digits := target[len(prefix) : len(target)-1]
	var ino uint64
	for _, c := range digits {
		if c < '0' || c > '9' {
			return 0, false
		}
		ino = ino*10 + uint64(c-'0')
		if ino > 1<<32-1 {
			// sock_diag reports 32-bit inodes (idiag_inode is __u32);
			// a larger number could never match one of them.
			return 0, false
		}
	}
	return uint32(ino), true
}

func truncate(b []byte) []byte {
	if len(b) > 64 {
		return b[:64]
	}
	return b
}
