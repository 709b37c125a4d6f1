package testenv

import "golang.org/x/sys/unix"

// bootNs reads CLOCK_BOOTTIME, the clock the BPF programs stamp events with.
func bootNs() uint64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts)
	return uint64(ts.Nano())
}

// BootNs is bootNs for tests.
func BootNs() uint64 { return bootNs() }
