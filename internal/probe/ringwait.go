package probe

// Waiting for the ring buffer in the Go runtime's poller.

import (
	"fmt"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// ringWaiter waits for the kernel to wake the ring buffer's readers, or for
// a deadline, through the Go runtime's network poller, on a non-blocking
// duplicate of the ring buffer map's descriptor.
//
// Why not ringbuf.Reader's own wait: it blocks its thread in epoll_wait
// for up to PollInterval, and the runtime's sysmon thread, finding a P
// held in a system call, keeps waking every 20 us to take it back: under a
// connection churn that was a fifth of the tracer's own CPU time (perf).
// Here the event loop parks like any goroutine waiting on a socket and the
// reader itself is only ever asked for what is already there.
type ringWaiter struct {
	f  *os.File
	rc syscall.RawConn
	// woken is set by wake: a wake that comes before wait has set its
	// deadline (which would undo the wake's) is seen by wait afterwards.
	woken atomic.Bool
}

// newRingWaiter registers a duplicate of ring's descriptor with the
// runtime's poller.
func newRingWaiter(ring *ebpf.Map) (*ringWaiter, error) {
	fd, err := unix.FcntlInt(uintptr(ring.FD()), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("duplicate the ring buffer descriptor: %w", err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("make the ring buffer descriptor non-blocking: %w", err)
	}
	f := os.NewFile(uintptr(fd), "ringbuf")
	// A descriptor the poller cannot take refuses deadlines: then the
	// reader's own blocking wait has to do.
	if err := f.SetReadDeadline(time.Time{}); err != nil {
		f.Close()
		return nil, fmt.Errorf("poll the ring buffer: %w", err)
	}
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("poll the ring buffer: %w", err)
	}
	return &ringWaiter{f: f, rc: rc}, nil
}

// wait returns when the kernel has woken the ring buffer's readers since the
// last wait (it submits with a wakeup once WakeupBytes are waiting) or at
// deadline, whichever comes first. Records submitted without a wakeup are
// read after the deadline.
func (w *ringWaiter) wait(deadline time.Time) {
	if err := w.f.SetReadDeadline(deadline); err != nil {
		return
	}
	if w.woken.Swap(false) {
		return
	}
	waited := false
	// The callback runs before each wait of the poller and ends it by
	// returning true: wait once (the descriptor is edge-triggered there),
	// whatever the ring holds, as the kernel decides when to wake us.
	_ = w.rc.Read(func(uintptr) bool {
		done := waited
		waited = true
		return done
	})
	// A wake during the wait ended it: it is spent. (One arriving from
	// here on finds the loop on its way to Drained, which sees the work
	// handed over before the wake.)
	w.woken.Store(false)
}

// wake ends the current wait, or the next one if none is under way. Any
// goroutine: a deadline set on the descriptor ends a wait pending on it.
func (w *ringWaiter) wake() {
	w.woken.Store(true)
	_ = w.f.SetReadDeadline(time.Unix(1, 0))
}

// close removes the descriptor from the poller and closes it.
func (w *ringWaiter) close() error { return w.f.Close() }
