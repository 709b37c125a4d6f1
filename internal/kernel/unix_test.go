package kernel

import (
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/conntracer/conntracer/internal/events"
)

// listenUnix makes a listener with the given backlog and queues n
// connections on it that nobody accepts.
func listenUnix(t *testing.T, addr string, typ, backlog, n int) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_UNIX, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: addr}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, backlog); err != nil {
		t.Fatal(err)
	}
	for range n {
		c, err := unix.Socket(unix.AF_UNIX, typ|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(c) })
		if err := unix.Connect(c, &unix.SockaddrUnix{Name: addr}); err != nil {
			t.Fatalf("connect %d to %s: %v", n, addr, err)
		}
	}
}

// ssListener returns Recv-Q and Send-Q of the listener `ss -xl` shows at addr.
func ssListener(t *testing.T, addr string) (queue, backlog uint32) {
	t.Helper()
	out, err := exec.Command("ss", "-xlnH").Output()
	if err != nil {
		t.Fatalf("ss: %v", err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) >= 5 && f[4] == addr {
			q, _ := strconv.ParseUint(f[2], 10, 32)
			b, _ := strconv.ParseUint(f[3], 10, 32)
			return uint32(q), uint32(b)
		}
	}
	t.Fatalf("ss -xl does not list %s", addr)
	return 0, 0
}

func TestUnixListenersMatchSS(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("privileged test: needs root to read every namespace's sockets (CI runs it as root)")
	}
	path := filepath.Join(t.TempDir(), "php.sock")
	abstract := fmt.Sprintf("@ctr-test-listener-%d", time.Now().UnixNano())
	seq := filepath.Join(t.TempDir(), "seq.sock")
	listenUnix(t, path, unix.SOCK_STREAM, 5, 3)
	listenUnix(t, abstract, unix.SOCK_STREAM, 2, 3) // one more than the backlog: full
	listenUnix(t, seq, unix.SOCK_SEQPACKET, 1, 1)

	evs, warnings, err := UnixListeners()
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range warnings {
		t.Logf("warning: %v", w)
	}
	somaxconn, err := os.ReadFile("/proc/sys/net/core/somaxconn")
	if err != nil {
		t.Fatal(err)
	}
	self, err := NetNSInode(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	for _, addr := range []string{path, abstract, seq} {
		var got *events.Connect
		for i := range evs {
			if c := &evs[i].Connect; c.Path.String() == addr && c.NetNS == self {
				got = c
			}
		}
		if got == nil {
			t.Errorf("no listener sampled at %s", addr)
			continue
		}
		q, b := ssListener(t, addr)
		wantType := events.SockStream
		if addr == seq {
			wantType = events.SockSeqpacket
		}
		if got.Queue != q || got.Backlog != b || got.SockType != wantType ||
			strconv.FormatUint(uint64(got.Somaxconn), 10) != strings.TrimSpace(string(somaxconn)) {
			t.Errorf("%s: queue %d backlog %d type %s somaxconn %d; ss says queue %d backlog %d, sysctl %s",
				addr, got.Queue, got.Backlog, got.SockType, got.Somaxconn, q, b, somaxconn)
		}
		if got.Owner.PID != uint32(os.Getpid()) || got.Owner.Source != events.OwnerSnapshot {
			t.Errorf("%s: owner %+v, want this test (pid %d)", addr, got.Owner, os.Getpid())
		}
	}
}

func TestParseUnixDiag(t *testing.T) {
	ne := binary.NativeEndian
	msg := make([]byte, 16)
	msg[0], msg[1], msg[2] = unix.AF_UNIX, 5, tcpListenState
	ne.PutUint32(msg[4:], 4242)
	attr := func(typ uint16, payload []byte) []byte {
		a := make([]byte, 4, 4+len(payload)+3)
		ne.PutUint16(a[0:], uint16(4+len(payload)))
		ne.PutUint16(a[2:], typ)
		a = append(a, payload...)
		for len(a)%4 != 0 {
			a = append(a, 0)
		}
		return a
	}
	q := make([]byte, 8)
	ne.PutUint32(q[0:], 7)
	ne.PutUint32(q[4:], 5)
	msg = append(msg, attr(unixDiagName, []byte("\x00abs"))...) // 4 bytes: no padding
	msg = append(msg, attr(99, []byte{1, 2, 3})...)             // unknown, padded
	msg = append(msg, attr(unixDiagRQLen, q)...)
	e, ok := parseUnixDiag(msg)
	if !ok || e.typ != 5 || e.state != tcpListenState || e.inode != 4242 || string(e.name) != "\x00abs" ||
		!e.hasQueue || e.rqueue != 7 || e.wqueue != 5 {
		t.Errorf("parsed %+v, ok %v", e, ok)
	}
	if _, ok := parseUnixDiag(msg[:10]); ok {
		t.Error("a short message parsed")
	}
}

// TestUnixSamplerKeepsOwners: a tracer's Unix sampler reads every
// process's fds for a listener it has not seen, not again for one whose
// owner is still there, and again for a new listener.
func TestUnixSamplerKeepsOwners(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("privileged test: needs root to read every namespace's sockets (CI runs it as root)")
	}
	s := &UnixSampler{NetNS: NewNetNSList()}
	owner := func(evs []events.Event, addr string) uint32 {
		t.Helper()
		for i := range evs {
			if c := &evs[i].Connect; c.Path.String() == addr {
				return c.Owner.PID
			}
		}
		t.Fatalf("no listener sampled at %s", addr)
		return 0
	}
	first := filepath.Join(t.TempDir(), "first.sock")
	listenUnix(t, first, unix.SOCK_STREAM, 5, 0)
	evs, _, err := s.Sample()
	if err != nil {
		t.Fatal(err)
	}
	if pid := owner(evs, first); pid != uint32(os.Getpid()) {
		t.Errorf("first round: owner %d, want this test (pid %d)", pid, os.Getpid())
	}
	// The second round: the owner is kept (without a scan, unless another
	// test's new listener needs one meanwhile).
	evs, _, err = s.Sample()
	if err != nil {
		t.Fatal(err)
	}
	if pid := owner(evs, first); pid != uint32(os.Getpid()) {
		t.Errorf("second round: owner %d, want this test (pid %d)", pid, os.Getpid())
	}
	second := filepath.Join(t.TempDir(), "second.sock")
	listenUnix(t, second, unix.SOCK_STREAM, 5, 0)
	scans := s.scans
	evs, _, err = s.Sample()
	if err != nil {
		t.Fatal(err)
	}
	if pid := owner(evs, second); pid != uint32(os.Getpid()) || s.scans != scans+1 {
		t.Errorf("new listener: owner %d after %d scans, want this test (pid %d) after one", pid, s.scans-scans, os.Getpid())
	}
}
