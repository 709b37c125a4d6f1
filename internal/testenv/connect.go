package testenv

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// ConnectPlan is a series of connect() calls one helper process makes with
// raw system calls, so that the test knows exactly what each returned.
type ConnectPlan struct {
	// Addr is a Unix path, "@name" for an abstract Unix name, or
	// "ip:port" for TCP.
	Addr string
	// Type is "stream" (default), "seqpacket" or "dgram".
	Type string
	// Count calls, each on a fresh socket closed right after.
	Count int
	// NonBlock opens the sockets with SOCK_NONBLOCK.
	NonBlock bool
	// Loop ignores Count and connects for this long as fast as it can
	// (the benchmark's workload).
	Loop time.Duration
	// PerSecond paces the calls at about this many per second (0: as
	// fast as possible): the steps of tools/bench's event storm.
	PerSecond int
}

// ConnectResult is what the helper saw: calls by errno name ("OK" for
// success), and how long it ran.
type ConnectResult struct {
	PID     int            `json:"pid"`
	Errnos  map[string]int `json:"errnos"`
	Calls   int            `json:"calls"`
	Seconds float64        `json:"seconds"`
	// CPUSeconds is the helper's own CPU time (user + system) over the
	// calls: the kernel's tracing cost is charged here, while a busy
	// machine's noise mostly is not.
	CPUSeconds float64 `json:"cpu_seconds"`
}

// CPUPerCall is CPU seconds per call.
func (r ConnectResult) CPUPerCall() float64 { return r.CPUSeconds / float64(r.Calls) }

// Rate is calls per second.
func (r ConnectResult) Rate() float64 { return float64(r.Calls) / r.Seconds }

// RunConnects runs the plan in a helper process named comm, inside ns if it
// is not nil, and returns what it saw.
func RunConnects(t testing.TB, ns *NetNS, comm string, plan ConnectPlan) ConnectResult {
	t.Helper()
	env, err := ConnectsEnv(plan)
	if err != nil {
		t.Fatal(err)
	}
	var cmd *exec.Cmd
	if ns != nil {
		cmd = ns.Command(helperBinary(t, comm), "-test.run=^$")
	} else {
		cmd = exec.Command(helperBinary(t, comm), "-test.run=^$")
	}
	var r ConnectResult
	runHelperJSON(t, cmd, "connect helper", env, &r)
	return r
}

// ConnectsEnv is the environment that makes a binary calling
// MaybeRunHelper run the plan and print its ConnectResult as JSON: how
// tools/bench runs the same workload outside a test.
func ConnectsEnv(plan ConnectPlan) ([]string, error) {
	js, err := json.Marshal(plan)
	if err != nil {
		return nil, fmt.Errorf("connect plan: %w", err)
	}
	return []string{helperEnv + "=connects", planEnv + "=" + string(js)}, nil
}

func runConnects() error {
	var plan ConnectPlan
	if err := json.Unmarshal([]byte(os.Getenv(planEnv)), &plan); err != nil {
		return fmt.Errorf("plan: %w", err)
	}
	family, sa, err := parseSockaddr(plan.Addr)
	if err != nil {
		return err
	}
	typ := unix.SOCK_STREAM
	switch plan.Type {
	case "", "stream":
	case "seqpacket":
		typ = unix.SOCK_SEQPACKET
	case "dgram":
		typ = unix.SOCK_DGRAM
	default:
		return fmt.Errorf("socket type %q", plan.Type)
	}
	if plan.NonBlock {
		typ |= unix.SOCK_NONBLOCK
	}
	typ |= unix.SOCK_CLOEXEC

	return callLoop(plan.Count, plan.Loop, plan.PerSecond, "connect", func() (error, error) {
		fd, err := unix.Socket(family, typ, 0)
		if err != nil {
			return nil, fmt.Errorf("socket: %w", err)
		}
		err = unix.Connect(fd, sa)
		unix.Close(fd)
		return err, nil
	})
}

// callLoop is the body of the helpers that make one system call in a
// loop (connects, datagram sends): count calls, or for loop (when > 0),
// paced at perSecond (when > 0, in bursts of 64 at most), counting the
// results by errno, and prints the ConnectResult as JSON with the
// helper's wall and CPU time. call returns the call's own error (an
// unix.Errno, counted) and a fatal error that ends the loop.
func callLoop(count int, loop time.Duration, perSecond int, what string, call func() (callErr, fatal error)) error {
	r := ConnectResult{PID: os.Getpid(), Errnos: map[string]int{}}
	// Counted by errno number in the loop: no allocation per call.
	var byErrno [256]int
	cpu0, err := cpuTime()
	if err != nil {
		return err
	}
	start := time.Now()
	deadline := start.Add(loop)
	for i := 0; loop > 0 || i < count; i++ {
		if loop > 0 && i%256 == 0 && time.Now().After(deadline) {
			break
		}
		if perSecond > 0 && i%64 == 0 {
			// Sleep until call i is due.
			if ahead := time.Duration(i)*time.Second/time.Duration(perSecond) - time.Since(start); ahead > 0 {
				time.Sleep(ahead)
			}
		}
		err, fatal := call()
		if fatal != nil {
			return fatal
		}
		r.Calls++
		var errno unix.Errno
		switch {
		case err == nil:
			byErrno[0]++
		case errors.As(err, &errno) && errno < 256:
			byErrno[errno]++
		default:
			return fmt.Errorf("%s: %w", what, err)
		}
	}
	r.Seconds = time.Since(start).Seconds()
	cpu1, err := cpuTime()
	if err != nil {
		return err
	}
	r.CPUSeconds = cpu1 - cpu0
	for e, n := range byErrno {
		if n == 0 {
			continue
		}
		name := "OK"
		if e != 0 {
			name = unix.ErrnoName(unix.Errno(e))
		}
		r.Errnos[name] = n
	}
	return json.NewEncoder(os.Stdout).Encode(r)
}

func cpuTime() (float64, error) {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0, fmt.Errorf("getrusage: %w", err)
	}
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9, nil
}

func parseSockaddr(addr string) (int, unix.Sockaddr, error) {
	if ap, err := netip.ParseAddrPort(addr); err == nil {
		if ap.Addr().Is4() {
			return unix.AF_INET, &unix.SockaddrInet4{Addr: ap.Addr().As4(), Port: int(ap.Port())}, nil
		}
		return unix.AF_INET6, &unix.SockaddrInet6{Addr: ap.Addr().As16(), Port: int(ap.Port())}, nil
	}
	if name, ok := strings.CutPrefix(addr, "@"); ok {
		// x/sys/unix turns a leading '@' into the abstract NUL byte.
		return unix.AF_UNIX, &unix.SockaddrUnix{Name: "@" + name}, nil
	}
	if addr == "" {
		return 0, nil, errors.New("empty address")
	}
	return unix.AF_UNIX, &unix.SockaddrUnix{Name: addr}, nil
}

// UnixListener is a listening Unix socket in the test process that never
// accepts: its queue fills after backlog+1 connects.
type UnixListener struct {
	FD   int
	Addr string // path or "@name"
}

// ListenUnix listens on addr (a path, or "@name" for an abstract name) with
// the given backlog and socket type, and closes it (removing a path) when
// the test ends.
func ListenUnix(t testing.TB, addr, typ string, backlog int) *UnixListener {
	t.Helper()
	st := unix.SOCK_STREAM
	if typ == "seqpacket" {
		st = unix.SOCK_SEQPACKET
	}
	fd, err := unix.Socket(unix.AF_UNIX, st|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: addr}); err != nil {
		unix.Close(fd)
		t.Fatalf("bind %s: %v", addr, err)
	}
	if err := unix.Listen(fd, backlog); err != nil {
		unix.Close(fd)
		t.Fatalf("listen %s: %v", addr, err)
	}
	t.Cleanup(func() {
		unix.Close(fd)
		if !strings.HasPrefix(addr, "@") {
			os.Remove(addr)
		}
	})
	return &UnixListener{FD: fd, Addr: addr}
}

// BindUnix binds a Unix stream socket to path without listening, which
// leaves a socket file nobody accepts on (connect: ECONNREFUSED).
func BindUnix(t testing.TB, path string) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		unix.Close(fd)
		t.Fatalf("bind %s: %v", path, err)
	}
	t.Cleanup(func() { unix.Close(fd); os.Remove(path) })
}
