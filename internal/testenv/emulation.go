package testenv

import (
	"os"
	"testing"
	"time"
)

// emulationFactor is how much longer the tests' waits and sanity bounds
// are inside the kernel matrix's guests: qemu without KVM (TCG) runs the
// guest 2-5x slower on average and stalls it for 100 ms and more at
// times, so a bound that holds with room on real hardware fails there
// without anything being wrong.
const emulationFactor = 10

// Emulated reports whether the test runs inside a kernel matrix guest
// (tools/vmtest's vmexec sets VMTEST_KERNEL to the kernel's name), and
// which kernel.
func Emulated() (kernel string, ok bool) { return os.LookupEnv("VMTEST_KERNEL") }

// Scaled returns d on real hardware and emulationFactor times d under
// emulation. It is for deadlines and for the sanity bounds that catch a
// wrong measurement (a latency taken from the wrong events), never for
// measuring speed: that is for benchmarks.
func Scaled(d time.Duration) time.Duration {
	if _, ok := Emulated(); ok {
		return emulationFactor * d
	}
	return d
}

// WaitFor polls cond until it holds, and fails the test with what and
// cond's last description if it does not within timeout (Scaled: the
// timeout bounds a hung test, it asserts nothing about speed).
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() (ok bool, last string)) {
	t.Helper()
	timeout = Scaled(timeout)
	deadline := time.Now().Add(timeout)
	last := ""
	for time.Now().Before(deadline) {
		ok, s := cond()
		if ok {
			return
		}
		last = s
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s: not reached in %s (last: %s)", what, timeout, last)
}
