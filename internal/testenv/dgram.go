package testenv

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// DgramPlan is a series of non-blocking sends one helper process makes on
// one Unix datagram socket, with raw system calls, so that the test knows
// exactly what each returned.
type DgramPlan struct {
	// Addr is the destination: a path, or "@name" for an abstract name.
	Addr string
	// Call is the system call: "sendto" (with the address), "sendmsg"
	// and "sendmmsg" (one message with the address), or, on a socket
	// connected to Addr first, "send" (sendto without an address) and
	// "write".
	Call string
	// Count sends of one byte each, with MSG_DONTWAIT (write: on an
	// O_NONBLOCK socket).
	Count int
	// Loop ignores Count and sends for this long as fast as it can.
	Loop time.Duration
}

// Connected reports whether the plan connects the socket first.
func (p DgramPlan) Connected() bool { return p.Call == "send" || p.Call == "write" }

// RunDgramSends runs the plan in a helper process named comm and returns
// what it saw (ConnectResult: calls by errno name, "OK" for success).
func RunDgramSends(t testing.TB, comm string, plan DgramPlan) ConnectResult {
	t.Helper()
	js, err := json.Marshal(plan)
	if err != nil {
		t.Fatal(err)
	}
	var r ConnectResult
	runHelperJSON(t, exec.Command(helperBinary(t, comm), "-test.run=^$"), "dgram send helper",
		[]string{helperEnv + "=dgram-sends", planEnv + "=" + string(js)}, &r)
	return r
}

func runDgramSends() error {
	var plan DgramPlan
	if err := json.Unmarshal([]byte(os.Getenv(planEnv)), &plan); err != nil {
		return fmt.Errorf("plan: %w", err)
	}
	_, sa, err := parseSockaddr(plan.Addr)
	if err != nil {
		return err
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	if plan.Connected() {
		if err := unix.Connect(fd, sa); err != nil {
			return fmt.Errorf("connect %s: %w", plan.Addr, err)
		}
	}
	buf := []byte{'x'}
	send, err := dgramSender(fd, plan, sa, buf)
	if err != nil {
		return err
	}
	return callLoop(plan.Count, plan.Loop, 0, plan.Call, func() (error, error) { return send(), nil })
}

// dgramSender returns the plan's send call on fd: one system call each,
// its error an unix.Errno.
func dgramSender(fd int, plan DgramPlan, sa unix.Sockaddr, buf []byte) (func() error, error) {
	// The raw sockaddr_un, for the calls x/sys/unix has no raw form of.
	name := plan.Addr
	if n, ok := strings.CutPrefix(name, "@"); ok {
		name = "\x00" + n
	}
	var rsa unix.RawSockaddrUnix
	rsa.Family = unix.AF_UNIX
	for i := 0; i < len(name) && i < len(rsa.Path); i++ {
		rsa.Path[i] = int8(name[i])
	}
	salen := 2 + len(name)
	if name[0] != 0 {
		salen++ // the pathname's NUL
	}
	iov := unix.Iovec{Base: &buf[0]}
	iov.SetLen(len(buf))
	var hdr unix.Msghdr
	hdr.Iov = &iov
	hdr.SetIovlen(1)
	hdr.Name = (*byte)(unsafe.Pointer(&rsa))
	hdr.Namelen = uint32(salen)
	mm := struct {
		hdr unix.Msghdr
		len uint32
		_   uint32
	}{hdr: hdr}
	errOf := func(_ uintptr, e unix.Errno) error {
		if e != 0 {
			return e
		}
		return nil
	}
	switch plan.Call {
	case "sendto":
		return func() error { return unix.Sendto(fd, buf, unix.MSG_DONTWAIT, sa) }, nil
	case "sendmsg":
		return func() error {
			r, _, e := unix.Syscall(unix.SYS_SENDMSG, uintptr(fd), uintptr(unsafe.Pointer(&hdr)), unix.MSG_DONTWAIT)
			return errOf(r, e)
		}, nil
	case "sendmmsg":
		return func() error {
			r, _, e := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&mm)), 1, unix.MSG_DONTWAIT, 0, 0)
			return errOf(r, e)
		}, nil
	case "send":
		return func() error {
			r, _, e := unix.Syscall6(unix.SYS_SENDTO, uintptr(fd), uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)), unix.MSG_DONTWAIT, 0, 0)
			return errOf(r, e)
		}, nil
	case "write":
		return func() error {
			_, err := unix.Write(fd, buf)
			return err
		}, nil
	}
	return nil, fmt.Errorf("send call %q", plan.Call)
}

// BindUnixDgram binds a Unix datagram socket in the test process to addr
// (a path, or "@name") and never reads from it: its queue fills after
// net.unix.max_dgram_qlen datagrams. The returned function closes it (a
// path stays in the filesystem: senders then get ECONNREFUSED); it runs
// again, removing a path, when the test ends.
func BindUnixDgram(t testing.TB, addr string) (closeNow func()) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: addr}); err != nil {
		unix.Close(fd)
		t.Fatalf("bind %s: %v", addr, err)
	}
	var once sync.Once
	closeNow = func() { once.Do(func() { unix.Close(fd) }) }
	t.Cleanup(func() {
		closeNow()
		if !strings.HasPrefix(addr, "@") {
			os.Remove(addr)
		}
	})
	return closeNow
}
