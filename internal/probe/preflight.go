package probe

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Paths the tracer depends on.
const (
	vmlinuxBTFPath = "/sys/kernel/btf/vmlinux"
	tracefsPath    = "/sys/kernel/tracing"
)

// ErrNoPrivileges means the process may not load BPF programs.
var ErrNoPrivileges = errors.New("insufficient privileges: run as root, or grant CAP_BPF and CAP_PERFMON (plus CAP_NET_ADMIN and CAP_SYS_RESOURCE on kernels before 5.11)")

// ErrNoBTF means the kernel does not describe its own types, which CO-RE needs.
var ErrNoBTF = errors.New("kernel BTF not found at " + vmlinuxBTFPath + ": boot a kernel built with CONFIG_DEBUG_INFO_BTF=y (most distributions since 2021: Debian 11+, Ubuntu 20.10+, RHEL 8.2+)")

// Capability numbers from linux/capability.h.
const (
	capSysAdmin = 21
	capPerfmon  = 38
	capBPF      = 39
)

// CheckPrivileges returns ErrNoPrivileges unless the process holds
// CAP_SYS_ADMIN, or both CAP_BPF and CAP_PERFMON, in its effective set.
func CheckPrivileges() error {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return fmt.Errorf("read capabilities: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		hex, ok := strings.CutPrefix(sc.Text(), "CapEff:")
		if !ok {
			continue
		}
		caps, err := strconv.ParseUint(strings.TrimSpace(hex), 16, 64)
		if err != nil {
			return fmt.Errorf("parse CapEff %q: %w", hex, err)
		}
		has := func(c uint) bool { return caps&(1<<c) != 0 }
		if has(capSysAdmin) || (has(capBPF) && has(capPerfmon)) {
			return nil
		}
		return ErrNoPrivileges
	}
	return fmt.Errorf("read capabilities: no CapEff line in /proc/self/status")
}

// CheckBTF returns ErrNoBTF when the kernel exposes no BTF.
func CheckBTF() error {
	if _, err := os.Stat(vmlinuxBTFPath); err != nil {
		return ErrNoBTF
	}
	return nil
}

// EnsureTracefs makes sure tracefs is mounted at /sys/kernel/tracing, which
// classic tracepoints need to resolve a tracepoint's id by name. If it is
// not, it mounts it (we run as root) and reports that it did.
func EnsureTracefs() (mounted bool, err error) {
	_, err = os.Stat(tracefsPath + "/events")
	if err == nil {
		return false, nil
	}
	if uerr := tracefsUnreadable(err); uerr != nil { // tracefs_access.go
		return false, uerr
	}
	if err := unix.Mount("tracefs", tracefsPath, "tracefs", 0, ""); err != nil {
		return false, fmt.Errorf("tracefs is not mounted at %s and mounting it failed (%w): run `mount -t tracefs tracefs %s`", tracefsPath, err, tracefsPath)
	}
	return true, nil
}
