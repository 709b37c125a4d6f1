package testenv

import "github.com/conntracer/conntracer/internal/bootclock"

// bootNs reads CLOCK_BOOTTIME, the clock the BPF programs stamp events with.
func bootNs() uint64 { return bootclock.Now() }

// BootNs is bootNs for tests.
func BootNs() uint64 { return bootNs() }
