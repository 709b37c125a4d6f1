package testenv

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Helper roles for the drop and conntrack scenarios.
const (
	burstEnv = "CONNTRACER_TESTENV_BURST" // "ADDR COUNT TIMEOUT_MS HOLD"
)

// BurstResult is what a connect burst observed.
type BurstResult struct {
	PID       int
	Connected int // connects that completed
	Failed    int // connects that failed or timed out
}

// Burst is a running connect burst whose completed connections stay open
// until Release.
type Burst struct {
	BurstResult
	proc *helperProc
}

// StartBurst runs a process named comm in ns that starts count
// non-blocking IPv4 connects to addr at once, waits up to timeout for them,
// and keeps the connected ones open until Release (so that their conntrack
// entries stay). It returns once the connects are done.
func StartBurst(t testing.TB, ns *NetNS, comm, addr string, count int, timeout time.Duration) *Burst {
	t.Helper()
	proc := startHelperProc(t, ns.Command(helperBinary(t, comm), "-test.run=^$"), "burst",
		fmt.Sprintf("%s=%s %d %d", burstEnv, addr, count, timeout.Milliseconds()))
	b := &Burst{proc: proc}
	b.PID = proc.PID
	t.Cleanup(func() { b.Release(t) })
	line, err := proc.readLine()
	if err != nil {
		t.Fatalf("burst did not report: %v", err)
	}
	if _, err := fmt.Sscanf(line, "connected %d failed %d", &b.Connected, &b.Failed); err != nil {
		t.Fatalf("burst said %q: %v", line, err)
	}
	return b
}

// Release closes the burst's connections and waits for it to exit.
func (b *Burst) Release(t testing.TB) {
	t.Helper()
	if !b.proc.released {
		if err := b.proc.release(); err != nil {
			t.Errorf("burst exited: %v", err)
		}
	}
}

func runBurst() error {
	f := strings.Fields(os.Getenv(burstEnv))
	if len(f) != 3 {
		return fmt.Errorf("bad %s %q", burstEnv, os.Getenv(burstEnv))
	}
	host, portS, _ := strings.Cut(f[0], ":")
	port, _ := strconv.Atoi(portS)
	count, _ := strconv.Atoi(f[1])
	ms, _ := strconv.Atoi(f[2])
	var ip [4]byte
	for i, p := range strings.Split(host, ".") {
		v, _ := strconv.Atoi(p)
		ip[i] = byte(v)
	}
	fds := make([]int, 0, count)
	for range count {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK, 0)
		if err != nil {
			return err
		}
		err = unix.Connect(fd, &unix.SockaddrInet4{Port: port, Addr: ip})
		if err != nil && err != unix.EINPROGRESS {
			unix.Close(fd)
			continue
		}
		fds = append(fds, fd)
	}
	deadline := time.Now().Add(time.Duration(ms) * time.Millisecond)
	connected := 0
	pending := append([]int(nil), fds...)
	for len(pending) > 0 && time.Now().Before(deadline) {
		pfds := make([]unix.PollFd, len(pending))
		for i, fd := range pending {
			pfds[i] = unix.PollFd{Fd: int32(fd), Events: unix.POLLOUT}
		}
		if _, err := unix.Poll(pfds, 50); err != nil && err != unix.EINTR {
			return err
		}
		next := pending[:0]
		for i, p := range pfds {
			if p.Revents == 0 {
				next = append(next, pending[i])
				continue
			}
			if e, _ := unix.GetsockoptInt(pending[i], unix.SOL_SOCKET, unix.SO_ERROR); e == 0 {
				connected++
			}
		}
		pending = next
	}
	fmt.Printf("connected %d failed %d\n", connected, count-connected)
	_, _ = io.Copy(io.Discard, os.Stdin)
	for _, fd := range fds {
		unix.Close(fd)
	}
	return nil
}

// Listener is a helper process listening on 127.0.0.1 with a given
// backlog that never accepts.
type Listener struct {
	PID  int
	Port uint16
	proc *helperProc
}

// StartListener starts a process named comm in ns that listens with the
// given backlog and never accepts.
func StartListener(t testing.TB, ns *NetNS, comm string, backlog int) *Listener {
	t.Helper()
	proc := startHelperProc(t, ns.Command(helperBinary(t, comm), "-test.run=^$"), "listener",
		burstEnv+"="+strconv.Itoa(backlog))
	l := &Listener{PID: proc.PID, proc: proc}
	// The listener never accepts: how it exits says nothing about the test.
	t.Cleanup(func() { _ = proc.release() })
	line, err := proc.readLine()
	if err != nil {
		t.Fatalf("listener did not start: %v", err)
	}
	if _, err := fmt.Sscanf(line, "port %d", &l.Port); err != nil {
		t.Fatalf("listener said %q: %v", line, err)
	}
	return l
}

// Stop ends the listener process (its namespace can then be deleted).
func (l *Listener) Stop() { _ = l.proc.release() }

func runListener() error {
	backlog, _ := strconv.Atoi(os.Getenv(burstEnv))
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
	if err != nil {
		return err
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		return err
	}
	if err := unix.Listen(fd, backlog); err != nil {
		return err
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return err
	}
	fmt.Printf("port %d\n", sa.(*unix.SockaddrInet4).Port)
	_, _ = io.Copy(io.Discard, os.Stdin)
	return syscall.Close(fd)
}
