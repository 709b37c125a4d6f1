package kernel

import (
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

func TestDiagName(t *testing.T) {
	for in, want := range map[string]string{
		"/run/a.sock\x00\x08\x00\x05\x00": "/run/a.sock\x00",
		"\x00abstract\x01\x02\x03\x04":    "\x00abstract",
		"ab":                              "ab",
	} {
		if got := diagName(in); got != want {
			t.Errorf("diagName(%q) = %q, want %q", in, got, want)
		}
	}
}

// listenUnix makes a listener with the given backlog and queues n
// connections on it that nobody accepts.
func listenUnix(t *testing.T, addr string, backlog, n int) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
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
		c, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
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
	listenUnix(t, path, 5, 3)
	listenUnix(t, abstract, 2, 3) // one more than the backlog: full

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
	for _, addr := range []string{path, abstract} {
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
		if got.Queue != q || got.Backlog != b || got.SockType != events.SockStream ||
			strconv.FormatUint(uint64(got.Somaxconn), 10) != strings.TrimSpace(string(somaxconn)) {
			t.Errorf("%s: queue %d backlog %d type %s somaxconn %d; ss says queue %d backlog %d, sysctl %s",
				addr, got.Queue, got.Backlog, got.SockType, got.Somaxconn, q, b, somaxconn)
		}
		if got.Owner.PID != uint32(os.Getpid()) || got.Owner.Source != events.OwnerSnapshot {
			t.Errorf("%s: owner %+v, want this test (pid %d)", addr, got.Owner, os.Getpid())
		}
	}
}
