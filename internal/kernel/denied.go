package kernel

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// capSysPtrace is CAP_SYS_PTRACE's bit in /proc/PID/status's Cap* masks.
const capSysPtrace = 19

// deniedError reports the processes whose /proc entries the kernel would
// not show (what, e.g. "network namespaces"), saying why and whether
// anything helps. /proc/PID/ns/* and /proc/PID/fd pass the kernel's ptrace
// access check (ptrace_may_access, PTRACE_MODE_READ_FSCREDS): without
// CAP_SYS_PTRACE, running as root with it helps; with it, the refusal
// comes from something this process cannot change (measured: a VM's init,
// pid 1, stayed unreadable to root holding CAP_SYS_PTRACE, while a
// process holding capabilities the reader lacked was readable), and
// advising CAP_SYS_PTRACE was wrong. procDir is /proc in production.
func deniedError(procDir, what, consequence string, pids []int) error {
	var names []string
	for _, pid := range pids[:min(len(pids), 3)] {
		comm, _ := os.ReadFile(filepath.Join(procDir, strconv.Itoa(pid), "comm"))
		names = append(names, fmt.Sprintf("%d (%s)", pid, strings.TrimSpace(string(comm))))
	}
	list := strings.Join(names, ", ")
	if len(pids) > 3 {
		list += fmt.Sprintf(" and %d more", len(pids)-3)
	}
	why := "run as root with CAP_SYS_PTRACE"
	if hasCap(filepath.Join(procDir, "self", "status"), capSysPtrace) {
		why = "the kernel refused although this process has CAP_SYS_PTRACE, so no privilege of the tracer helps (seen for a VM's init)"
	}
	return fmt.Errorf("%s of %d processes not readable (%w): pid %s; %s; %s", what, len(pids), fs.ErrPermission, list, consequence, why)
}

// hasCap reports whether the effective capabilities in a status file hold
// capability bit c.
func hasCap(status string, c uint) bool {
	b, err := os.ReadFile(status)
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "CapEff:"); ok {
			mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && mask&(1<<c) != 0
		}
	}
	return false
}
