package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/conntracer/conntracer/internal/testenv"
)

// runMainEnv makes the test binary behave as the tracer itself, so that a
// test can run it as another user without building it first.
const runMainEnv = "CONNTRACER_TEST_RUN_MAIN"

func TestMain(m *testing.M) {
	testenv.MaybeRunHelper()
	if os.Getenv(runMainEnv) != "" {
		os.Args = append([]string{"tracer"}, strings.Fields(os.Getenv(runMainEnv))...)
		main()
	}
	os.Exit(m.Run())
}

func TestBadFlagsSayWhatToDo(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--bogus"}, "unknown flag: --bogus"},
		{[]string{"--output", "yaml"}, `unknown output format "yaml": use text or json`},
		{[]string{"--family", "ipx"}, `--family "ipx": use ipv4, ipv6 or all`},
		{[]string{"--attach-mode", "kprobe"}, `unknown attach mode "kprobe": use auto, tp_btf, raw_tp or tracepoint`},
		{[]string{"--comm", "a-very-long-process-name"}, `use "a-very-long-pro"`},
		{[]string{"--ring-buffer-bytes", "5000"}, "must be a power of two of at least 4096"},
		{[]string{"--port", "70000"}, `invalid argument "70000" for "--port"`},
		{[]string{"--duration", "-1s"}, "--duration must not be negative"},
		{[]string{"--netns", "no-such-namespace-xyz"}, `--netns "no-such-namespace-xyz": not an inode number`},
		{[]string{"--cgroup", "/no/such/cgroup"}, "/no/such/cgroup"},
		{[]string{"--pod", "shop/"}, `--pod "shop/": use NAME or NAMESPACE/NAME`},
		{[]string{"--pod", "shop/checkout", "--k8s-namespace", "dev"}, `--pod "shop/checkout" and --k8s-namespace "dev" name different namespaces`},
		{[]string{"extra"}, `unexpected argument "extra"`},
	} {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			err := run(context.Background(), tt.args, &stdout, &stderr)
			if err == nil {
				t.Fatal("accepted bad flags")
			}
			code := exitCode(err, &stderr)
			if code != 2 {
				t.Errorf("exit code %d, want 2", code)
			}
			if !strings.Contains(stderr.String(), tt.want) || !strings.Contains(stderr.String(), "tracer --help") {
				t.Errorf("stderr %q does not contain %q and a pointer to --help", stderr.String(), tt.want)
			}
		})
	}
}

func TestHelpListsEveryFilter(t *testing.T) {
	var stdout bytes.Buffer
	if err := run(context.Background(), []string{"--help"}, &stdout, &stdout); err != nil {
		t.Fatal(err)
	}
	for _, flag := range []string{"--pid", "--comm", "--port", "--netns", "--cgroup", "--container", "--pod", "--k8s-namespace", "--family", "--output", "--duration", "--attach-mode"} {
		if !strings.Contains(stdout.String(), flag) {
			t.Errorf("--help does not mention %s", flag)
		}
	}
}

func TestUnprivilegedUserIsToldWhatToDo(t *testing.T) {
	testenv.RequireRoot(t) // to become someone else
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all", self)
	cmd.Env = append(os.Environ(), runMainEnv+"=--duration 1s")
	out, err := cmd.CombinedOutput()
	ee, ok := err.(*exec.ExitError)
	if !ok || ee.ExitCode() != 1 {
		t.Fatalf("exit %v, want status 1; output: %s", err, out)
	}
	for _, want := range []string{"insufficient privileges", "run as root", "CAP_BPF and CAP_PERFMON"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output %q does not say %q", out, want)
		}
	}
	if strings.Contains(string(out), "panic") {
		t.Errorf("panicked: %s", out)
	}
}

// readyWriter captures stderr and signals once the tracer says it is tracing.
type readyWriter struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	ready chan struct{}
	once  sync.Once
}

func (w *readyWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	if strings.Contains(w.buf.String(), "tracing TCP connections") {
		w.once.Do(func() { close(w.ready) })
	}
	return len(p), nil
}

func (w *readyWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// jsonConn is the documented JSON line, decoded strictly.
type jsonConn struct {
	Time       time.Time `json:"time"`
	Type       string    `json:"type"`
	PID        uint32    `json:"pid"`
	TID        uint32    `json:"tid"`
	Comm       string    `json:"comm"`
	Owner      string    `json:"owner"`
	CgroupID   uint64    `json:"cgroup_id"`
	NetNS      uint32    `json:"netns"`
	Family     string    `json:"family"`
	LocalAddr  string    `json:"local_addr"`
	LocalPort  uint16    `json:"local_port"`
	RemoteAddr string    `json:"remote_addr"`
	RemotePort uint16    `json:"remote_port"`
	Role       string    `json:"role"`
	Lifetime   *float64  `json:"lifetime_seconds"`
	TxBytes    uint64    `json:"tx_bytes"`
	RxBytes    uint64    `json:"rx_bytes"`
	EndState   string    `json:"end_state"`
	ClosedBy   string    `json:"closed_by"`
	LastState  string    `json:"last_state"`
	Error      string    `json:"error"`
	SeenOpen   bool      `json:"seen_open"`
	Cookie     uint64    `json:"cookie"`
	NetNSName  string    `json:"netns_name"`
	// What the owner runs in, when known (README: Containers and pods).
	Namespace   string `json:"namespace"`
	Pod         string `json:"pod"`
	Container   string `json:"container"`
	ContainerID string `json:"container_id"`
	Runtime     string `json:"runtime"`
	PodUID      string `json:"pod_uid"`
	Unit        string `json:"unit"`
}

// TestJSONStreamNamesOwnersOfOldAndNewConnections runs the whole program:
// a connection opened before the tracer started is attributed through the
// start-up snapshot, new ones through the kernel, and the JSON lines carry
// the documented fields.
func TestJSONStreamNamesOwnersOfOldAndNewConnections(t *testing.T) {
	testenv.RequireRoot(t)
	ns := testenv.NewNetNS(t)
	srv := testenv.StartServer(t, ns, "ctr-server")
	holder := testenv.StartClient(t, ns, "ctr-holder", []testenv.Conn{
		{Addr: srv.Addr4(), Req: 100, Resp: 200, Mode: testenv.ClientCloses, Hold: true},
	})

	stdout, stderr, done, cancel := startTracer(t, "--output", "json", "--netns", ns.Name)
	defer cancel()
	if !strings.Contains(stderr.String(), "1 already open") && !strings.Contains(stderr.String(), "already open") {
		t.Errorf("start-up line does not report existing connections: %s", stderr)
	}

	fresh := testenv.RunClient(t, ns, "ctr-fresh", []testenv.Conn{
		{Addr: srv.Addr6(), Req: 1, Resp: 2, Mode: testenv.ServerCloses},
	})
	holder.Release(t)
	srv.Stop(t)
	time.Sleep(500 * time.Millisecond) // two poll intervals and then some
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run: %v\n%s", err, stderr)
	}

	var lines []jsonConn
	out := stdout.String() // the decoder drains the buffer: keep it for the messages
	dec := json.NewDecoder(stdout)
	dec.DisallowUnknownFields()
	for dec.More() {
		var c jsonConn
		if err := dec.Decode(&c); err != nil {
			t.Fatalf("bad JSON line: %v\n%s", err, out)
		}
		lines = append(lines, c)
	}
	if len(lines) != 4 {
		t.Fatalf("got %d lines, want 4 (two sides of two connections):\n%s", len(lines), out)
	}
	held := holder.Results[0].LocalAddrPort()
	newConn := fresh.Results[0].LocalAddrPort()
	byLocal := map[string]jsonConn{}
	for _, l := range lines {
		byLocal[fmt.Sprintf("%s:%d", l.LocalAddr, l.LocalPort)] = l
		if l.Type != "conn_closed" || l.NetNS != ns.Inode || l.Time.IsZero() || l.CgroupID == 0 {
			t.Errorf("line %+v: bad type, netns, time or cgroup", l)
		}
	}
	check := func(name string, l jsonConn, ok bool, pid int, comm, owner, role, end string, seen bool, tx, rx uint64) {
		t.Helper()
		if !ok {
			t.Errorf("%s: no line", name)
			return
		}
		endOK := l.EndState == end || (end == "time_wait" && l.EndState == "fin_wait2") // a slow peer: see e2e_test.go
		if l.PID != uint32(pid) || l.Comm != comm || l.Owner != owner || l.Role != role || !endOK ||
			l.SeenOpen != seen || (l.Lifetime != nil) != seen || l.TxBytes != tx || l.RxBytes != rx {
			t.Errorf("%s: got %+v\nwant pid %d comm %s owner %s role %s end %s seen %v tx %d rx %d",
				name, l, pid, comm, owner, role, end, seen, tx, rx)
		}
	}
	srvAddr4 := fmt.Sprintf("127.0.0.1:%d", srv.Port4)
	l, ok := byLocal[held.String()]
	// Opened before tracing: owner and role come from the snapshot, and
	// the byte counts still cover the whole life, exactly.
	check("held client side", l, ok, holder.PID, "ctr-holder", "snapshot", "active", "time_wait", false, 109, 200)
	var srvSide jsonConn
	for _, l := range lines {
		if l.RemotePort == held.Port() && fmt.Sprintf("%s:%d", l.LocalAddr, l.LocalPort) == srvAddr4 {
			srvSide, ok = l, true
		}
	}
	check("held server side", srvSide, ok, srv.PID, "ctr-server", "snapshot", "passive", "close_wait", false, 200, 109)
	l, ok = byLocal[fmt.Sprintf("%s:%d", "::1", newConn.Port())]
	check("fresh client side", l, ok, fresh.PID, "ctr-fresh", "connect", "active", "close_wait", true, 10, 2)
	if !strings.Contains(stderr.String(), "4 connections printed") || !strings.Contains(stderr.String(), "0 lost") {
		t.Errorf("summary missing or wrong: %s", stderr)
	}
}

// TestMountsTracefsAndStopsCleanlyOnSIGTERM runs the tracer in a private
// mount namespace where tracefs is not mounted, forcing the classic
// tracepoint mode that needs it: the tracer mounts it itself. SIGTERM then
// detaches it and it prints its summary and exits 0.
func TestMountsTracefsAndStopsCleanlyOnSIGTERM(t *testing.T) {
	testenv.RequireRoot(t)
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("needs unshare (util-linux)")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	script := `umount -l /sys/kernel/tracing 2>/dev/null; umount -l /sys/kernel/debug/tracing 2>/dev/null;
if [ -e /sys/kernel/tracing/events ]; then echo "tracefs still mounted" >&2; exit 3; fi; exec "$0"`
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c", script, self)
	cmd.Env = append(os.Environ(), runMainEnv+"=--attach-mode tracepoint --netns 1")
	stderr := &readyWriter{ready: make(chan struct{})}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-stderr.ready:
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("tracer did not start: %s", stderr)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit: %v\n%s", err, stderr)
	}
	out := stderr.String()
	for _, want := range []string{"mounted tracefs at /sys/kernel/tracing", "sock/inet_sock_set_state=tracepoint", "syscalls/sys_exit_accept4=tracepoint", "0 lost in the kernel"} {
		if !strings.Contains(out, want) {
			t.Errorf("stderr does not say %q:\n%s", want, out)
		}
	}
}
