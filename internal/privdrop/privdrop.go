// Package privdrop manages the tracer's capabilities: at start it makes
// the permitted ones effective (file capabilities given without the
// effective bit), and once the BPF programs are loaded and attached it
// gives up every capability the remaining work does not need and sets
// no_new_privs, on every thread of the process.
//
// Capabilities, no_new_privs and the bounding set are per thread in
// Linux; Go runs goroutines on many threads and the cgo-linked runtime
// refuses syscall.AllThreadsSyscall, so each change is made on all
// threads at once through libcap's psx (the mechanism of ebpf_exporter's
// capability drop).
//
// Seccomp: no allow-list is installed. The remaining work calls bpf(2)
// (map reads), netlink, setns, /proc and the Go runtime's own calls, whose
// set changes with Go releases; a filter that misses one kills the tracer
// in production, and with no_new_privs and the kept capabilities it would
// remove little that matters (CAP_SYS_ADMIN, kept for setns, is the
// broad one either way).
package privdrop

import (
	"fmt"
	"runtime"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
	"kernel.org/pub/linux/libs/security/libcap/psx"
)

// Kept are the capabilities the tracer needs after attaching, and why.
// Everything else (CAP_BPF, CAP_PERFMON and CAP_SYS_RESOURCE among them)
// is dropped from the effective, permitted, inheritable, ambient and
// bounding sets: the loaded programs and maps are used through the fds
// already held, which need no capability.
var Kept = []struct {
	Cap  uintptr
	Name string
	Why  string
}{
	{unix.CAP_SYS_ADMIN, "CAP_SYS_ADMIN", "setns into network namespaces, including those created after start-up (sock_diag, nstat and conntrack per namespace)"},
	{unix.CAP_NET_ADMIN, "CAP_NET_ADMIN", "ctnetlink: conntrack statistics, table dumps and event subscriptions"},
	{unix.CAP_SYS_PTRACE, "CAP_SYS_PTRACE", "/proc/PID/fd and /proc/PID/ns/net of other users' processes (ptrace access mode read)"},
	{unix.CAP_DAC_READ_SEARCH, "CAP_DAC_READ_SEARCH", "list /proc/PID/fd directories owned by other users (mode 0500)"},
}

// Names is Kept's names, for the start-up line.
func Names() string {
	n := make([]string, len(Kept))
	for i, k := range Kept {
		n[i] = k.Name
	}
	return strings.Join(n, ",")
}

// RaiseEffective makes every permitted capability effective, on every
// thread, for binaries given file capabilities without the effective bit
// (`setcap ...+p`, as the container image does). With the effective bit
// (`+ep`) the kernel refuses to run the binary at all (EPERM, and nothing
// to say why) when the runtime bounds any of the file's capabilities
// away, e.g. a container not given CAP_SYS_RESOURCE, which only kernels
// before 5.11 need. Without it the exec succeeds with what is granted,
// and the tracer says itself what is missing, hook by hook. A process
// whose effective set is already its permitted set (root, +ep, ambient
// capabilities) is left alone.
func RaiseEffective() error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var cur [2]unix.CapUserData
	if err := unix.Capget(&hdr, &cur[0]); err != nil {
		return fmt.Errorf("read capabilities: %w", err)
	}
	if cur[0].Effective == cur[0].Permitted && cur[1].Effective == cur[1].Permitted {
		return nil
	}
	next := cur
	for i := range next {
		next[i].Effective = next[i].Permitted
	}
	if e := capsetAllThreads(&hdr, &next); e != 0 {
		return fmt.Errorf("make the permitted capabilities effective: %w", e)
	}
	return nil
}

// capsetAllThreads sets the capabilities of every thread of the process.
// The pointers are converted in the call itself: psx's Syscall3 is
// //go:uintptrescapes, which keeps them valid until it returns.
func capsetAllThreads(hdr *unix.CapUserHeader, data *[2]unix.CapUserData) unix.Errno {
	_, _, e := psx.Syscall3(unix.SYS_CAPSET, uintptr(unsafe.Pointer(hdr)), uintptr(unsafe.Pointer(&data[0])), 0)
	runtime.KeepAlive(hdr)
	runtime.KeepAlive(data)
	return e
}

// Drop sets no_new_privs and reduces every thread's capabilities to those
// of Kept that the process has (a non-root tracer given only some keeps
// only those). It is not reversible: call it after the probe is attached.
func Drop() error {
	if _, _, e := psx.Syscall6(unix.SYS_PRCTL, unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0, 0); e != 0 {
		return fmt.Errorf("set no_new_privs: %w", e)
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var cur [2]unix.CapUserData
	if err := unix.Capget(&hdr, &cur[0]); err != nil {
		return fmt.Errorf("read capabilities: %w", err)
	}
	var keep [2]uint32
	for _, k := range Kept {
		keep[k.Cap/32] |= 1 << (k.Cap % 32)
	}
	// The bounding set first: dropping from it needs CAP_SETPCAP, which
	// the capset below removes. A thread without CAP_SETPCAP (a non-root
	// tracer with file capabilities) cannot, and its bounding set does not
	// matter for the permitted set: with no_new_privs, exec gains nothing.
	if cur[0].Effective&(1<<unix.CAP_SETPCAP) != 0 {
		for c := uintptr(0); c <= unix.CAP_LAST_CAP; c++ {
			if keep[c/32]&(1<<(c%32)) != 0 {
				continue
			}
			if _, _, e := psx.Syscall6(unix.SYS_PRCTL, unix.PR_CAPBSET_DROP, c, 0, 0, 0, 0); e != 0 && e != unix.EINVAL {
				return fmt.Errorf("drop capability %d from the bounding set: %w", c, e)
			}
		}
	}
	if _, _, e := psx.Syscall6(unix.SYS_PRCTL, unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0, 0); e != 0 && e != unix.EINVAL {
		return fmt.Errorf("clear ambient capabilities: %w", e)
	}
	var next [2]unix.CapUserData
	for i := range next {
		next[i].Permitted = cur[i].Permitted & keep[i]
		next[i].Effective = next[i].Permitted
	}
	if e := capsetAllThreads(&hdr, &next); e != 0 {
		return fmt.Errorf("reduce capabilities to %s: %w", Names(), e)
	}
	return nil
}
