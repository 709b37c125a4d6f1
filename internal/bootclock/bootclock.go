// Package bootclock reads CLOCK_BOOTTIME, the clock of every kernel
// timestamp in an event (bpf_ktime_get_boot_ns, task start times), and maps
// it to wall time. It is the only reader of that clock in the tracer.
package bootclock

import (
	"time"

	"golang.org/x/sys/unix"
)

// Now returns CLOCK_BOOTTIME in nanoseconds: time since boot, suspend
// included, as the BPF programs stamp their records.
func Now() uint64 {
	var ts unix.Timespec
	// clock_gettime fails only for an invalid clock id or buffer; both
	// are constants here.
	_ = unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts)
	return uint64(ts.Nano())
}

// WallOffsetNs returns the wall-clock time (Unix ns) at which the host
// booted: a boot time plus this offset is a wall-clock time. Computed at
// the call, so a later change of the wall clock is not followed.
func WallOffsetNs() int64 {
	return time.Now().UnixNano() - int64(Now())
}

// ToWall returns a function mapping boot nanoseconds to wall-clock time,
// with the offset read once, now.
func ToWall() func(bootNs uint64) time.Time {
	offset := WallOffsetNs()
	return func(ns uint64) time.Time { return time.Unix(0, offset+int64(ns)) }
}
