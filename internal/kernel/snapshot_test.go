package kernel

import (
	"bufio"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/conntracer/conntracer/internal/events"
)

// helperEnv switches the test binary into a helper process (see
// TestHelperProcess); its value names the role.
const helperEnv = "CONNTRACER_KERNEL_HELPER"

// helperArgEnv carries the helper's input (ports to connect to, counts).
const helperArgEnv = "CONNTRACER_KERNEL_HELPER_ARG"

func TestConnFromDiag(t *testing.T) {
	t.Parallel()
	v4 := func(s string) net.IP { return net.ParseIP(s) } // 16-byte form, as netlink decodes AF_INET
	v6 := func(s string) net.IP { return net.ParseIP(s).To16() }
	sock := func(fam, state uint8, src net.IP, sport uint16, dst net.IP, dport uint16) *netlink.InetDiagTCPInfoResp {
		return &netlink.InetDiagTCPInfoResp{
			InetDiagMsg: &netlink.Socket{Family: fam, State: state, ID: netlink.SocketID{
				Source: src, SourcePort: sport, Destination: dst, DestinationPort: dport,
				Cookie: [2]uint32{0x89abcdef, 0x01234567},
			}, INode: 99},
			TCPInfo: &netlink.TCPInfo{State: state},
		}
	}
	// mini drops the tcp_info, as the kernel does for request and
	// timewait sockets.
	mini := func(d *netlink.InetDiagTCPInfoResp) *netlink.InetDiagTCPInfoResp {
		d.TCPInfo = nil
		d.InetDiagMsg.INode = 0
		return d
	}
	tests := []struct {
		name       string
		sk         *netlink.InetDiagTCPInfoResp
		ok         bool
		fam        events.Family
		local, rem string
	}{
		{"ipv4", sock(unix.AF_INET, 1, v4("10.0.0.1"), 40000, v4("10.0.0.2"), 80), true, events.FamilyIPv4, "10.0.0.1:40000", "10.0.0.2:80"},
		{"ipv6", sock(unix.AF_INET6, 8, v6("2001:db8::1"), 443, v6("2001:db8::2"), 50000), true, events.FamilyIPv6, "[2001:db8::1]:443", "[2001:db8::2]:50000"},
		{"mapped", sock(unix.AF_INET6, 2, v6("::ffff:127.0.0.1"), 1, v6("::ffff:127.0.0.2"), 2), true, events.FamilyIPv4, "127.0.0.1:1", "127.0.0.2:2"},
		{"half mapped stays v6", sock(unix.AF_INET6, 1, v6("::ffff:127.0.0.1"), 1, v6("::1"), 2), true, events.FamilyIPv6, "[::ffff:127.0.0.1]:1", "[::1]:2"},
		{"fin_wait2", sock(unix.AF_INET, 5, v4("10.0.0.1"), 1, v4("10.0.0.2"), 2), true, events.FamilyIPv4, "10.0.0.1:1", "10.0.0.2:2"},
		{"listen", sock(unix.AF_INET, 10, v4("0.0.0.0"), 80, v4("0.0.0.0"), 0), false, 0, "", ""},
		{"time_wait", sock(unix.AF_INET, 6, v4("10.0.0.1"), 1, v4("10.0.0.2"), 2), false, 0, "", ""},
		{"close", sock(unix.AF_INET6, 7, v6("::"), 0, v6("::"), 0), false, 0, "", ""},
		{"new_syn_recv", sock(unix.AF_INET, 12, v4("10.0.0.1"), 1, v4("10.0.0.2"), 2), false, 0, "", ""},
		{"bad address", sock(unix.AF_INET, 1, net.IP{1, 2, 3}, 1, v4("10.0.0.2"), 2), false, 0, "", ""},
		{"request socket", mini(sock(unix.AF_INET, 3, v4("10.0.0.1"), 80, v4("10.0.0.2"), 2)), false, 0, "", ""},
		{"timewait in fin_wait2", mini(sock(unix.AF_INET6, 5, v6("::1"), 1, v6("::1"), 2)), false, 0, "", ""},
		{"full syn_recv", sock(unix.AF_INET, 3, v4("10.0.0.1"), 80, v4("10.0.0.2"), 2), true, events.FamilyIPv4, "10.0.0.1:80", "10.0.0.2:2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, ok := connFromDiag(tt.sk, 4026531840)
			if ok != tt.ok {
				t.Fatalf("ok = %v, want %v", ok, tt.ok)
			}
			if !ok {
				return
			}
			if c.Family != tt.fam || c.Local.String() != tt.local || c.Remote.String() != tt.rem {
				t.Errorf("got %v %v -> %v, want %v %v -> %v", c.Family, c.Local, c.Remote, tt.fam, tt.local, tt.rem)
			}
			if c.Cookie != 0x0123456789abcdef {
				t.Errorf("cookie = %#x, want low word from ID.Cookie[0]", c.Cookie)
			}
			if c.NetNS != 4026531840 || c.LastState != events.TCPState(tt.sk.InetDiagMsg.State) ||
				c.Role != events.RoleUnknown || c.SeenOpen || c.Owner.Known() {
				t.Errorf("conn = %+v", c)
			}
		})
	}
}

// TestHelperProcess is not a test: it is the body of the child processes
// the privileged tests start inside a network namespace. It does nothing
// unless helperEnv is set.
func TestHelperProcess(t *testing.T) {
	role := os.Getenv(helperEnv)
	if role == "" {
		return
	}
	var err error
	switch role {
	case "server":
		err = helperServer()
	case "client":
		err = helperClient(os.Getenv(helperArgEnv))
	case "bulk-server":
		err = helperBulkServer(os.Getenv(helperArgEnv))
	case "bulk-client":
		err = helperBulkClient(os.Getenv(helperArgEnv))
	default:
		err = fmt.Errorf("unknown helper role %q", role)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "helper %s: %v\n", role, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// waitStdin blocks until the parent closes our stdin, then keeps v alive
// until then (a net.Conn the GC collects is closed by its finalizer).
func waitStdin(v any) {
	_, _ = io.Copy(io.Discard, os.Stdin)
	runtime.KeepAlive(v)
}

// helperServer listens on IPv4, IPv6 and dual-stack loopback, plus a
// fourth IPv4 listener it never accepts from, and prints the four ports. It
// accepts one connection on each of the first three and a second one on
// the IPv4 listener, prints "accepted", and holds them until stdin closes.
func helperServer() error {
	l4, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return err
	}
	l6, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		return err
	}
	// "tcp" on the wildcard is an AF_INET6 socket with IPV6_V6ONLY off:
	// IPv4 clients arrive on it as IPv4-mapped addresses.
	ld, err := net.Listen("tcp", "[::]:0")
	if err != nil {
		return err
	}
	lq, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return err
	}
	port := func(l net.Listener) int { return l.Addr().(*net.TCPAddr).Port }
	fmt.Printf("%d %d %d %d\n", port(l4), port(l6), port(ld), port(lq))
	var conns []net.Conn
	for _, l := range []net.Listener{l4, l6, ld, l4} {
		c, err := l.Accept()
		if err != nil {
			return err
		}
		conns = append(conns, c)
	}
	fmt.Println("accepted")
	waitStdin([]any{conns, l4, l6, ld, lq})
	return nil
}

// helperClient connects to the ports in arg ("p4 p6 pd pq"): over IPv4,
// over IPv6, from an AF_INET6 socket to ::ffff:127.0.0.1, then once more
// over IPv4 closing at once (its socket is left as an orphan in FIN_WAIT2),
// and to pq unless it is 0. It prints its five local ports and holds the
// connections until stdin closes.
func helperClient(arg string) error {
	var p4, p6, pd, pq int
	if _, err := fmt.Sscan(arg, &p4, &p6, &pd, &pq); err != nil {
		return fmt.Errorf("parse ports %q: %w", arg, err)
	}
	c4, err := net.Dial("tcp4", fmt.Sprintf("127.0.0.1:%d", p4))
	if err != nil {
		return err
	}
	c6, err := net.Dial("tcp6", fmt.Sprintf("[::1]:%d", p6))
	if err != nil {
		return err
	}
	// net.Dial turns a mapped address into an AF_INET socket, so the
	// AF_INET6 one is made by hand.
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	mapped := netip.MustParseAddr("::ffff:127.0.0.1").As16()
	if err := unix.Connect(fd, &unix.SockaddrInet6{Port: pd, Addr: mapped}); err != nil {
		return fmt.Errorf("connect to [::ffff:127.0.0.1]:%d: %w", pd, err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return err
	}
	closed, err := net.Dial("tcp4", fmt.Sprintf("127.0.0.1:%d", p4))
	if err != nil {
		return err
	}
	if err := closed.Close(); err != nil {
		return err
	}
	local := func(c net.Conn) int { return c.LocalAddr().(*net.TCPAddr).Port }
	var cq net.Conn
	cqPort := 0
	if pq != 0 {
		if cq, err = net.Dial("tcp4", fmt.Sprintf("127.0.0.1:%d", pq)); err != nil {
			return err
		}
		cqPort = local(cq)
	}
	fmt.Printf("%d %d %d %d %d\n", local(c4), local(c6), sa.(*unix.SockaddrInet6).Port, local(closed), cqPort)
	waitStdin([]any{c4, c6, cq})
	return unix.Close(fd)
}

// helper is a child process started in a network namespace.
type helper struct {
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	out     *os.File
	lines   *bufio.Reader
	started uint64 // CLOCK_BOOTTIME just before it was forked
}

// startHelper runs the test binary as helper role inside netns ns. The
// cleanup closes its stdin, which ends it, and kills it if it lingers.
func startHelper(t *testing.T, ns, role, arg string) *helper {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", ns, exe, "-test.run=^TestHelperProcess$")
	cmd.Env = append(os.Environ(), helperEnv+"="+role, helperArgEnv+"="+arg)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout = pw
	h := &helper{cmd: cmd, stdin: stdin, out: pr, lines: bufio.NewReader(pr), started: bootTimeNs(t)}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start helper %s: %v", role, err)
	}
	pw.Close()
	t.Cleanup(func() {
		stdin.Close()
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		pr.Close()
	})
	return h
}

// line reads one line of the helper's output, failing the test if none
// comes within timeout.
func (h *helper) line(t *testing.T, timeout time.Duration) string {
	t.Helper()
	if err := h.out.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		t.Fatal(err)
	}
	s, err := h.lines.ReadString('\n')
	if err != nil {
		t.Fatalf("read from helper %v: %v (output so far %q)", h.cmd.Args, err, s)
	}
	return strings.TrimSuffix(s, "\n")
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// newNetNS creates a named network namespace with lo up, deleted at cleanup
// even if the test fails.
func newNetNS(t *testing.T) string {
	t.Helper()
	name := fmt.Sprintf("ctr-kern-%d-%x", os.Getpid(), rand.Uint32())
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v\n%s", name, err, out)
		}
	})
	run(t, "ip", "-n", name, "link", "set", "lo", "up")
	return name
}

// ssSocket is what ss says about one TCP socket.
type ssSocket struct {
	state  string // "ESTAB", "FIN-WAIT-2", "SYN-RECV"...
	cookie uint64 // "sk:" with -e
}

// ssSockets runs ss in namespace ns and returns its TCP sockets in every
// state but LISTEN, keyed by "local remote" (addresses unmapped, as events
// carry them).
func ssSockets(t *testing.T, ns string) map[string]ssSocket {
	t.Helper()
	// -a: ss leaves out SYN-RECV and TIME-WAIT sockets by default.
	out := run(t, "ip", "netns", "exec", ns, "ss", "-atiepnH")
	socks := map[string]ssSocket{}
	for _, line := range strings.Split(out, "\n") {
		if line == "" || line[0] == ' ' || line[0] == '\t' {
			continue // tcp_info continuation line (-i)
		}
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		local, err1 := netip.ParseAddrPort(f[3])
		remote, err2 := netip.ParseAddrPort(f[4])
		if err1 != nil || err2 != nil {
			continue // listeners ("*" peers)
		}
		sock := ssSocket{state: f[0]}
		for _, tok := range f[5:] {
			if hex, ok := strings.CutPrefix(tok, "sk:"); ok {
				c, err := strconv.ParseUint(hex, 16, 64)
				if err != nil {
					t.Fatalf("ss cookie %q: %v", tok, err)
				}
				sock.cookie = c
			}
		}
		socks[unmapAP(local).String()+" "+unmapAP(remote).String()] = sock
	}
	return socks
}

// waitNoFinWait1 waits until no socket in ns is in FIN-WAIT-1: the peer
// may delay the ACK of a FIN by up to 200ms.
func waitNoFinWait1(t *testing.T, ns string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		out := run(t, "ip", "netns", "exec", ns, "ss", "-tanH", "state", "fin-wait-1")
		if strings.TrimSpace(out) == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("sockets still in FIN-WAIT-1:\n%s", out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// dropHandshakeACKs makes ns drop pure ACKs to port, so that connections
// to it stay half open on the server side: a request socket (NEW_SYN_RECV)
// while the client is ESTABLISHED. It reports false if nft is missing.
func dropHandshakeACKs(t *testing.T, ns string, port uint16) bool {
	t.Helper()
	script := fmt.Sprintf(`table inet ctrkern {
	chain in {
		type filter hook input priority 0; policy accept;
		tcp dport %d tcp flags & (fin|syn|rst|ack) == ack drop
	}
}
`, port)
	cmd := exec.Command("ip", "netns", "exec", ns, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Logf("nft unusable (%v: %s): not testing request sockets", err, out)
		return false
	}
	return true
}

func unmapAP(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a network namespace and read every process's fds")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs iproute2's ip to create a network namespace")
	}
}

func TestExistingConnections(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	ns := newNetNS(t)
	nsIno, err := NetNSByName(ns)
	if err != nil {
		t.Fatal(err)
	}
	// Created before the helpers so that its cleanup runs after theirs:
	// a cgroup can only be removed once its processes are gone.
	cg, cgErr := loadCgroupFS(selfMountinfo)
	var cgRel string
	if cgErr == nil {
		cgRel = newCgroup(t, cg)
	}

	server := startHelper(t, ns, "server", "")
	var p4, p6, pd, pq uint16
	if ports := server.line(t, 20*time.Second); !scanPorts(ports, &p4, &p6, &pd, &pq) {
		t.Fatalf("server ports %q", ports)
	}
	if !dropHandshakeACKs(t, ns, pq) {
		pq = 0
	}
	client := startHelper(t, ns, "client", fmt.Sprint(p4, p6, pd, pq))
	var c4, c6, cd, cClosed, cq uint16
	if ports := client.line(t, 20*time.Second); !scanPorts(ports, &c4, &c6, &cd, &cClosed, &cq) {
		t.Fatalf("client ports %q", ports)
	}
	if got := server.line(t, 20*time.Second); got != "accepted" {
		t.Fatalf("server said %q, want accepted", got)
	}
	waitNoFinWait1(t, ns)
	ready := bootTimeNs(t)

	// Move the server into a cgroup of its own, to check that the owner's
	// cgroup is the process's and not ours.
	var serverCgroup string
	if cgErr == nil {
		procs := filepath.Join(cg.point, cgRel, "cgroup.procs")
		if err := os.WriteFile(procs, []byte(strconv.Itoa(server.cmd.Process.Pid)), 0o644); err != nil {
			t.Logf("cannot move the server into %s (%v); checking cgroups against /proc only", procs, err)
		} else {
			serverCgroup = path.Join(cg.root, cgRel)
		}
	}

	for _, h := range []*helper{server, client} {
		if got, err := NetNSInode(h.cmd.Process.Pid); err != nil || got != nsIno {
			t.Fatalf("NetNSInode(helper %d) = %d, %v; want %d", h.cmd.Process.Pid, got, err, nsIno)
		}
	}

	start := time.Now()
	evs, warnings, err := ExistingConnections()
	elapsed := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	// Other tests on this machine create and destroy namespaces and
	// processes while we scan: warnings are expected, and only logged.
	for _, w := range warnings {
		t.Logf("warning: %v", w)
	}
	t.Logf("scanned %d connections in %v", len(evs), elapsed)

	ss := ssSockets(t, ns)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	comm := filepath.Base(exe)
	if len(comm) > 15 {
		comm = comm[:15]
	}
	ap := func(a string, p uint16) netip.AddrPort { return netip.AddrPortFrom(netip.MustParseAddr(a), p) }
	key := func(l, r netip.AddrPort) string { return l.String() + " " + r.String() }
	type want struct {
		local, remote netip.AddrPort
		fam           events.Family
		state         events.TCPState
		owner         *helper
	}
	est := events.TCPEstablished
	wants := []want{
		{ap("127.0.0.1", p4), ap("127.0.0.1", c4), events.FamilyIPv4, est, server},
		{ap("127.0.0.1", c4), ap("127.0.0.1", p4), events.FamilyIPv4, est, client},
		{ap("::1", p6), ap("::1", c6), events.FamilyIPv6, est, server},
		{ap("::1", c6), ap("::1", p6), events.FamilyIPv6, est, client},
		// Both ends of the mapped connection are AF_INET6 sockets.
		{ap("127.0.0.1", pd), ap("127.0.0.1", cd), events.FamilyIPv4, est, server},
		{ap("127.0.0.1", cd), ap("127.0.0.1", pd), events.FamilyIPv4, est, client},
		// The client closed first: the server holds a CLOSE_WAIT socket.
		{ap("127.0.0.1", p4), ap("127.0.0.1", cClosed), events.FamilyIPv4, events.TCPCloseWait, server},
	}
	// Mini sockets, which ss shows and ExistingConnections must not.
	minis := map[string]string{
		key(ap("127.0.0.1", cClosed), ap("127.0.0.1", p4)): "FIN-WAIT-2", // orphan: a timewait socket
	}
	if pq != 0 {
		wants = append(wants, want{ap("127.0.0.1", cq), ap("127.0.0.1", pq), events.FamilyIPv4, est, client})
		minis[key(ap("127.0.0.1", pq), ap("127.0.0.1", cq))] = "SYN-RECV" // a request socket
	}
	for k, state := range minis {
		if got, ok := ss[k]; !ok || got.state != state {
			t.Errorf("ss shows %s as %+v (found %v), want it %s: the test did not build what it meant to", k, got, ok, state)
		}
	}

	mine := map[string]events.Event{}
	for _, ev := range evs {
		switch ev.Conn.LastState {
		case events.TCPListen, events.TCPTimeWait, events.TCPNewSynRecv, events.TCPClose:
			t.Errorf("reported a %v socket: %+v", ev.Conn.LastState, ev.Conn)
		}
		if ev.Conn.NetNS != nsIno {
			continue
		}
		k := key(ev.Conn.Local, ev.Conn.Remote)
		if _, dup := mine[k]; dup {
			t.Errorf("socket %s reported twice", k)
		}
		mine[k] = ev
		if state, ok := minis[k]; ok {
			t.Errorf("%s: reported a %s mini socket: %+v", k, state, ev.Conn)
		}
	}
	if len(mine) != len(wants) {
		t.Errorf("%d connections in our namespace, want %d: %v", len(mine), len(wants), mine)
	}

	for _, w := range wants {
		k := key(w.local, w.remote)
		ev, ok := mine[k]
		if !ok {
			t.Errorf("%s: missing", k)
			continue
		}
		c := ev.Conn
		t.Logf("%s %v cookie %#x netns %d state %v owner %d %q start %d cgroup %s (%d)", k, c.Family, c.Cookie, c.NetNS,
			c.LastState, c.Owner.PID, c.Owner.CommBytes(), c.Owner.StartNs, c.Owner.CgroupPath, c.Owner.CgroupID)
		pid := uint32(w.owner.cmd.Process.Pid)
		if ev.Kind != events.KindConnExisting {
			t.Errorf("%s: kind %v", k, ev.Kind)
		}
		if c.Family != w.fam {
			t.Errorf("%s: family %v, want %v", k, c.Family, w.fam)
		}
		if c.LastState != w.state {
			t.Errorf("%s: state %v, want %v", k, c.LastState, w.state)
		}
		// The server's sockets sit on its listening port: accepted.
		wantRole := events.RoleActive
		if w.owner == server {
			wantRole = events.RolePassive
		}
		if c.Role != wantRole || c.SeenOpen || c.OpenNs != 0 {
			t.Errorf("%s: role %v (want %v), seen open %v, open %d", k, c.Role, wantRole, c.SeenOpen, c.OpenNs)
		}
		if want, ok := ss[k]; c.Cookie == 0 || !ok || c.Cookie != want.cookie {
			t.Errorf("%s: cookie %#x, ss says %#x (found %v)", k, c.Cookie, want.cookie, ok)
		}
		o := c.Owner
		if o.Source != events.OwnerSnapshot || o.PID != pid || o.TID != pid {
			t.Errorf("%s: owner %v pid %d tid %d, want snapshot pid %d", k, o.Source, o.PID, o.TID, pid)
		}
		if got := string(o.CommBytes()); got != comm {
			t.Errorf("%s: comm %q, want %q", k, got, comm)
		}
		// /proc's start time is rounded down to a 10ms tick.
		if o.StartNs+nsPerTick < w.owner.started || o.StartNs > ready {
			t.Errorf("%s: start %d ns, want between %d and %d", k, o.StartNs, w.owner.started, ready)
		}
		wantCg := readCgroupOf(t, int(pid))
		if w.owner == server && serverCgroup != "" && wantCg != serverCgroup {
			t.Fatalf("server is in %s, moved it to %s", wantCg, serverCgroup)
		}
		if o.CgroupPath != wantCg {
			t.Errorf("%s: cgroup %q, want %q", k, o.CgroupPath, wantCg)
		}
		if id, _, err := ResolveCgroup(wantCg); err == nil && o.CgroupID != id {
			t.Errorf("%s: cgroup id %d, want %d", k, o.CgroupID, id)
		}
	}
}

// scanPorts parses a line of space-separated ports.
func scanPorts(line string, ports ...*uint16) bool {
	f := strings.Fields(line)
	if len(f) != len(ports) {
		return false
	}
	for i, s := range f {
		p, err := strconv.ParseUint(s, 10, 16)
		if err != nil {
			return false
		}
		*ports[i] = uint16(p)
	}
	return true
}

// TestExistingConnectionsOwnNamespace needs no privilege: without root the
// scan still reads our own namespace (no setns needed) and our own fds, and
// reports what it could not read as warnings, not as an error.
func TestExistingConnectionsOwnNamespace(t *testing.T) {
	// Not parallel: while another test forks a helper, the child holds a
	// copy of our fds until it execs, and after a pid wrap-around its pid
	// can be lower than ours, which would make it the owner.
	// Locked, so that the sockets are made on the thread whose namespace
	// we read: another test may have moved a thread of this process
	// (possibly the main one, which /proc/PID/ns/net shows) elsewhere.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	ownIno, err := threadNetNS()
	if err != nil {
		t.Fatal(err)
	}
	ownNS := uint32(ownIno)
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	c, err := net.Dial("tcp4", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, ok := <-accepted
	if !ok {
		t.Fatal("accept failed")
	}
	defer s.Close()

	evs, warnings, err := ExistingConnections()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d connections, %d warnings (euid %d)", len(evs), len(warnings), os.Geteuid())
	for _, w := range warnings {
		t.Logf("warning: %v", w)
	}
	found := 0
	for _, ev := range evs {
		cl, sl := c.LocalAddr().String(), s.LocalAddr().String()
		if ev.Conn.NetNS != ownNS || (ev.Conn.Local.String() != cl && ev.Conn.Local.String() != sl) ||
			(ev.Conn.Remote.String() != cl && ev.Conn.Remote.String() != sl) {
			continue
		}
		found++
		if o := ev.Conn.Owner; o.PID != uint32(os.Getpid()) || o.Source != events.OwnerSnapshot || o.StartNs == 0 {
			t.Errorf("%v -> %v: owner %+v, want us (%d)", ev.Conn.Local, ev.Conn.Remote, o, os.Getpid())
		}
		if ev.Conn.Cookie == 0 || ev.Conn.LastState != events.TCPEstablished || ev.Conn.Family != events.FamilyIPv4 {
			t.Errorf("conn %+v", ev.Conn)
		}
	}
	if found != 2 {
		t.Errorf("found %d ends of our connection, want 2", found)
	}
}

// TestExistingConnectionsNamespaceWithoutProcess checks that a namespace
// reachable only through /run/netns is scanned, and that the owner of a
// socket living in another namespace than its process is still found.
func TestExistingConnectionsNamespaceWithoutProcess(t *testing.T) {
	requireRoot(t)
	// Not parallel, for the reason given in TestExistingConnectionsOwnNamespace.
	ns := newNetNS(t)
	nsIno, err := NetNSByName(ns)
	if err != nil {
		t.Fatal(err)
	}

	type pair struct {
		l    net.Listener
		c, s net.Conn
		err  error
	}
	done := make(chan pair, 1)
	go func() {
		// Sockets belong to the namespace of the thread that creates
		// them. The thread is unlocked only once back home; otherwise
		// it dies with this goroutine.
		runtime.LockOSThread()
		var p pair
		defer func() { done <- p }()
		home, err := netns.Get()
		if err != nil {
			p.err = err
			return
		}
		defer home.Close()
		h, err := netns.GetFromPath(filepath.Join(netnsRunDir, ns))
		if err != nil {
			p.err = err
			return
		}
		defer h.Close()
		if p.err = netns.Set(h); p.err != nil {
			return
		}
		defer func() {
			if netns.Set(home) == nil {
				runtime.UnlockOSThread()
			}
		}()
		if p.l, p.err = net.Listen("tcp4", "127.0.0.1:0"); p.err != nil {
			return
		}
		if p.c, p.err = net.Dial("tcp4", p.l.Addr().String()); p.err != nil {
			return
		}
		p.s, p.err = p.l.Accept()
	}()
	p := <-done
	if p.l != nil {
		defer p.l.Close()
	}
	if p.c != nil {
		defer p.c.Close()
	}
	if p.s != nil {
		defer p.s.Close()
	}
	if p.err != nil {
		t.Fatalf("make a connection in %s: %v", ns, p.err)
	}

	evs, _, err := ExistingConnections()
	if err != nil {
		t.Fatal(err)
	}
	found := 0
	for _, ev := range evs {
		if ev.Conn.NetNS != nsIno {
			continue
		}
		found++
		if o := ev.Conn.Owner; o.PID != uint32(os.Getpid()) || o.Source != events.OwnerSnapshot {
			t.Errorf("%v -> %v: owner %+v, want us (%d)", ev.Conn.Local, ev.Conn.Remote, o, os.Getpid())
		}
	}
	if found != 2 {
		t.Errorf("found %d connections in %s, want the 2 ends of ours", found, ns)
	}
}

func TestInferRole(t *testing.T) {
	listening := map[netip.AddrPort]struct{}{
		netip.MustParseAddrPort("0.0.0.0:80"):     {},
		netip.MustParseAddrPort("10.0.0.1:443"):   {},
		netip.MustParseAddrPort("[::]:22"):        {},
		netip.MustParseAddrPort("[fe80::1]:8080"): {},
	}
	for local, want := range map[string]events.Role{
		"10.0.0.9:80":      events.RolePassive, // wildcard listener
		"10.0.0.1:443":     events.RolePassive,
		"10.0.0.2:443":     events.RoleActive,  // listener bound to another address
		"10.0.0.1:22":      events.RolePassive, // dual-stack [::]:22 accepts IPv4 too
		"[2001:db8::1]:22": events.RolePassive,
		"10.0.0.1:50000":   events.RoleActive,
	} {
		if got := inferRole(listening, netip.MustParseAddrPort(local)); got != want {
			t.Errorf("inferRole(%s) = %v, want %v", local, got, want)
		}
	}
}
