package kernel

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// inNetNS runs fn on a locked OS thread inside the network namespace open
// at nsFD (inode ino; 0 if unknown), for what belongs to the namespace of
// the calling thread: a socket stays in the namespace it was created in
// (sock_diag, ctnetlink), and /proc/thread-self/net and /proc/sys/net answer
// for the namespace of the thread that opens them.
//
// It is the one way this package enters a namespace. When the thread is
// already in ino it does not switch, because setns needs CAP_SYS_ADMIN even
// into one's own namespace while the work itself may not. If the thread
// cannot be switched back it stays locked, and the runtime retires it when
// the goroutine ends, so no other goroutine ever runs in the foreign
// namespace.
func inNetNS(nsFD int, ino uint32, fn func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if before, err := threadNetNS(); err == nil && ino != 0 && before == uint64(ino) {
			err := fn()
			runtime.UnlockOSThread()
			done <- err
			return
		}
		self, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			done <- fmt.Errorf("open own network namespace: %w", err)
			return
		}
		defer unix.Close(self)
		if err := unix.Setns(nsFD, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			if ino != 0 {
				done <- fmt.Errorf("enter network namespace %d: %w", ino, err)
			} else {
				done <- fmt.Errorf("enter network namespace: %w", err)
			}
			return
		}
		ferr := fn()
		if err := unix.Setns(self, unix.CLONE_NEWNET); err == nil {
			runtime.UnlockOSThread()
		} // else: the goroutine exits locked and the runtime retires the thread
		done <- ferr
	}()
	return <-done
}

// threadNetNS returns the inode of the calling thread's network namespace,
// which can differ from the process's (/proc/self is the main thread).
func threadNetNS() (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// readSysctl reads a number from a /proc/sys file of the calling thread's
// network namespace (call it inside inNetNS).
func readSysctl(path string) (uint32, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 32)
	if err != nil {
		return 0, fmt.Errorf("parse %s: %w", path, err)
	}
	return uint32(v), nil
}

// readSysctlU32 is readSysctl for values that may be absent (a module not
// loaded): 0 then.
func readSysctlU32(path string) uint32 {
	v, _ := readSysctl(path)
	return v
}

// readSysctlIn reads a number from a /proc/sys file as seen from the
// namespace open at nsFD (inode ino).
func readSysctlIn(nsFD int, ino uint32, path string) (uint32, error) {
	var v uint32
	err := inNetNS(nsFD, ino, func() error {
		var err error
		v, err = readSysctl(path)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("read %s in netns %d: %w", path, ino, err)
	}
	return v, nil
}

// readPortRange reads net.ipv4.ip_local_port_range of the calling
// thread's namespace (call it inside inNetNS).
func readPortRange() (uint16, uint16, error) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0, 0, fmt.Errorf("read ip_local_port_range: %w", err)
	}
	return parsePortRange(string(b))
}

// parsePortRange parses ip_local_port_range's "low high".
func parsePortRange(s string) (uint16, uint16, error) {
	f := strings.Fields(s)
	if len(f) != 2 {
		return 0, 0, fmt.Errorf("ip_local_port_range %q: want two numbers", s)
	}
	lo, err1 := strconv.ParseUint(f[0], 10, 16)
	hi, err2 := strconv.ParseUint(f[1], 10, 16)
	if err1 != nil || err2 != nil || lo > hi {
		return 0, 0, fmt.Errorf("ip_local_port_range %q: want two ports, low first", s)
	}
	return uint16(lo), uint16(hi), nil
}
