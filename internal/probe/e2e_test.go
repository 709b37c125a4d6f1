package probe

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/conntracer/conntracer/internal/events"
	"github.com/conntracer/conntracer/internal/testenv"
)

func TestMain(m *testing.M) {
	testenv.MaybeRunHelper()
	os.Exit(m.Run())
}

// collector keeps a copy of every event, for tests.
type collector struct {
	mu  sync.Mutex
	evs []events.Event
}

func (c *collector) HandleEvent(ev *events.Event) {
	c.mu.Lock()
	c.evs = append(c.evs, *ev)
	c.mu.Unlock()
}

func (c *collector) Drained() {}

func (c *collector) snapshot() []events.Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]events.Event(nil), c.evs...)
}

// waitFor polls until the collector holds n events or the deadline passes,
// then waits a little longer to catch any surplus.
func (c *collector) waitFor(t *testing.T, n int) []events.Event {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for len(c.snapshot()) < n && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	return c.snapshot()
}

// tracing is a probe running in the background for one test.
type tracing struct {
	probe *Probe
	col   *collector
	stop  func() error
}

// startTracing is startProbe for tests whose every hook must attach on the
// kernels we test on: one that is off would make a test pass vacuously. A
// hook that is off because the kernel lacks a feature it needs (a feature
// probe said so, naming the feature) is logged; a test that needs that hook
// says so with requireOn, which skips it there.
func startTracing(t *testing.T, opts Options) *tracing {
	t.Helper()
	tr := startProbe(t, opts)
	for _, a := range tr.probe.Attachments() {
		switch {
		case kernelLacks(a):
			t.Logf("off on this kernel: %v", a)
		case a.Mode == "":
			t.Fatalf("hook %v", a)
		}
	}
	return tr
}

// kernelLacks reports whether hook a is off because the running kernel
// lacks a feature it needs: a feature probe answered ebpf.ErrNotSupported,
// whose message names the feature and the version that brought it.
func kernelLacks(a Attachment) bool {
	return a.Mode == "" && errors.Is(a.Err, ebpf.ErrNotSupported)
}

// requireOn returns the attachment whose hook contains hookPart, skipping
// the test when the kernel lacks what that hook needs and failing it when
// the hook is missing or off for another reason.
func requireOn(t *testing.T, tr *tracing, hookPart string) *Attachment {
	t.Helper()
	a := findAttachment(tr.probe.Attachments(), hookPart)
	switch {
	case a == nil:
		t.Fatalf("no hook %q among %v", hookPart, tr.probe.Attachments())
	case kernelLacks(*a):
		t.Skipf("needs hook %s, which this kernel cannot run: %v", a.Hook, a.Err)
	case a.Mode == "":
		t.Fatalf("hook %v", *a)
	}
	return a
}

// startProbe opens a probe (its optional hooks may be off) and runs it into
// a collector until the test ends or tr.stop is called.
func startProbe(t *testing.T, opts Options) *tracing {
	t.Helper()
	p, err := Open(opts)
	if err != nil {
		t.Fatalf("open probe: %+v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	col := &collector{}
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx, col) }()
	tr := &tracing{probe: p, col: col}
	var once sync.Once
	var runErr error
	tr.stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case runErr = <-done:
			case <-time.After(10 * time.Second):
				runErr = fmt.Errorf("Run did not return 10s after cancel")
			}
			p.Close()
		})
		return runErr
	}
	t.Cleanup(func() { tr.stop() })
	return tr
}

// scenario is a set of connections over IPv4 and IPv6 covering every way a
// connection can end, made by two client processes against one server.
type scenario struct {
	ns      *testenv.NetNS
	server  *testenv.Server
	clients []*testenv.Client
	plans   [][]testenv.Conn
	start   uint64
}

const refusedPort = 9 // nothing listens in a fresh namespace

func runScenario(t *testing.T, ns *testenv.NetNS) *scenario {
	t.Helper()
	s := &scenario{ns: ns, start: testenv.BootNs()}
	s.server = testenv.StartServer(t, ns, "ctr-server")
	s.plans = [][]testenv.Conn{
		{ // client A: IPv4
			{Addr: s.server.Addr4(), Req: 0, Resp: 0, Mode: testenv.ClientCloses},
			{Addr: s.server.Addr4(), Req: 1000, Resp: 300, Mode: testenv.ClientCloses},
			{Addr: s.server.Addr4(), Req: 70000, Resp: 1, Mode: testenv.ServerCloses},
			{Addr: s.server.Addr4(), Req: 10, Resp: 20, Mode: testenv.ClientResets},
			{Addr: fmt.Sprintf("127.0.0.1:%d", refusedPort), Mode: testenv.Refused},
		},
		{ // client B: IPv6
			{Addr: s.server.Addr6(), Req: 5, Resp: 200000, Mode: testenv.ServerCloses},
			{Addr: s.server.Addr6(), Req: 4096, Resp: 4096, Mode: testenv.ClientCloses},
			{Addr: s.server.Addr6(), Req: 123, Resp: 456, Mode: testenv.ClientResets},
			{Addr: fmt.Sprintf("[::1]:%d", refusedPort), Mode: testenv.Refused},
		},
	}
	for i, plan := range s.plans {
		s.clients = append(s.clients, testenv.RunClient(t, ns, fmt.Sprintf("ctr-client-%c", 'a'+i), plan))
	}
	return s
}

// expectedEvents counts one event per side of each connection: two for an
// accepted connection, one for a refused connect.
func (s *scenario) expectedEvents() int {
	n := 0
	for _, plan := range s.plans {
		for _, c := range plan {
			if c.Mode == testenv.Refused {
				n++
			} else {
				n += 2
			}
		}
	}
	return n
}

func TestEveryAttachModeTracesEveryConnection(t *testing.T) {
	testenv.RequireRoot(t)
	for _, mode := range AttachModes {
		t.Run(string(mode), func(t *testing.T) {
			if mode == AttachTPBTF && !kernelHasTaskBTF() {
				t.Skip("tp_btf's state program needs bpf_get_current_task_btf (5.11+), which this kernel lacks")
			}
			ns := testenv.NewNetNS(t)
			opts := DefaultOptions()
			opts.AttachMode = mode
			opts.Filter.NetNS = ns.Inode // other tests' traffic stays out
			tr := startTracing(t, opts)
			if got := tr.probe.Attachments()[0]; got.Mode != mode {
				t.Fatalf("state hook attached as %v, want %s", got, mode)
			}
			for _, a := range tr.probe.Attachments()[1:] {
				if a.Mode == "" && !kernelLacks(a) {
					t.Errorf("hook %v is off on a kernel that has it", a)
				}
			}

			s := runScenario(t, ns)
			evs := tr.col.waitFor(t, s.expectedEvents())
			now := testenv.BootNs()
			// Before the server stops: its stop closes held connections.
			checkTimeWaitMatchesSS(t, evs, func() string { return ns.Output(t, "ss", "-Htan", "state", "time-wait") })
			s.server.Stop(t)
			if err := tr.stop(); err != nil {
				t.Fatalf("Run: %v", err)
			}

			if len(evs) != s.expectedEvents() {
				t.Errorf("got %d events, want exactly %d", len(evs), s.expectedEvents())
				for _, ev := range evs {
					t.Logf("  %s", describe(&ev))
				}
			}
			s.check(t, evs, now)

			st := tr.probe.Stats()
			if st.Lost != 0 || st.BadRecords != 0 {
				t.Errorf("lost %d records, %d undecodable; want none", st.Lost, st.BadRecords)
			}
			if st.Records != uint64(len(evs)) {
				t.Errorf("read %d records but handled %d events", st.Records, len(evs))
			}
		})
	}
}

// check matches every connection of the scenario to its events.
func (s *scenario) check(t *testing.T, evs []events.Event, now uint64) {
	t.Helper()
	for i, plan := range s.plans {
		client := s.clients[i]
		comm := fmt.Sprintf("ctr-client-%c", 'a'+i)
		for j, conn := range plan {
			res := client.Results[j]
			name := fmt.Sprintf("%s conn %d (%s %s)", comm, j, conn.Mode, conn.Addr)
			if conn.Mode == testenv.Refused {
				if res.Err == "" {
					t.Fatalf("%s: connect succeeded, want refused", name)
				}
				ev := find(evs, func(c *events.Conn) bool {
					return c.Owner.PID == uint32(client.PID) && c.Remote.Port() == refusedPort
				})
				if ev == nil {
					t.Errorf("%s: no event", name)
					continue
				}
				checkConn(t, name, ev, want{
					pid: client.PID, comm: comm, source: events.OwnerConnect, role: events.RoleActive,
					end: events.EndConnectFailed, closedBy: events.SideNone, errno: 111,
					last: events.TCPSynSent,
				})
				checkTimes(t, name, ev, res.Start, now)
				continue
			}
			if res.Err != "" {
				t.Fatalf("%s: client failed: %s", name, res.Err)
			}
			local := res.LocalAddrPort()
			cev := find(evs, func(c *events.Conn) bool { return c.Local == local })
			sev := find(evs, func(c *events.Conn) bool { return c.Remote == local })
			if cev == nil || sev == nil {
				t.Errorf("%s: client event found: %v, server event found: %v", name, cev != nil, sev != nil)
				continue
			}
			cw := want{pid: client.PID, comm: comm, source: events.OwnerConnect, role: events.RoleActive,
				tx: testenv.HeaderBytes + uint64(conn.Req), rx: uint64(conn.Resp)}
			sw := want{pid: s.server.PID, comm: "ctr-server", source: events.OwnerAccept, role: events.RolePassive,
				tx: uint64(conn.Resp), rx: testenv.HeaderBytes + uint64(conn.Req)}
			switch conn.Mode {
			case testenv.ClientCloses:
				cw.end, cw.closedBy, cw.last = events.EndTimeWait, events.SideLocal, events.TCPFinWait2
				sw.end, sw.closedBy, sw.last = events.EndCloseWait, events.SideRemote, events.TCPLastAck
			case testenv.ServerCloses:
				cw.end, cw.closedBy, cw.last = events.EndCloseWait, events.SideRemote, events.TCPLastAck
				sw.end, sw.closedBy, sw.last = events.EndTimeWait, events.SideLocal, events.TCPFinWait2
			case testenv.ClientResets:
				cw.end, cw.closedBy, cw.last = events.EndReset, events.SideLocal, events.TCPEstablished
				sw.end, sw.closedBy, sw.last, sw.errno = events.EndReset, events.SideRemote, events.TCPEstablished, 104
				// A RST acknowledges nothing: whether the server's
				// last segment was acked before it depends on the
				// client's delayed ACK. Bound it instead.
				sw.txAtMost = true
			}
			checkConn(t, name+" client side", cev, cw)
			checkConn(t, name+" server side", sev, sw)
			checkTimes(t, name+" client side", cev, res.Start, now)
			checkTimes(t, name+" server side", sev, res.Start, now)
			if cev.Conn.Family != sev.Conn.Family || cev.Conn.Local != sev.Conn.Remote || cev.Conn.Remote != sev.Conn.Local {
				t.Errorf("%s: the two sides disagree: %s vs %s", name, describe(cev), describe(sev))
			}
			wantFamily := events.FamilyIPv4
			if strings.HasPrefix(conn.Addr, "[") {
				wantFamily = events.FamilyIPv6
			}
			if cev.Conn.Family != wantFamily {
				t.Errorf("%s: family %s, want %s", name, cev.Conn.Family, wantFamily)
			}
		}
	}
}

type want struct {
	pid      int
	comm     string
	source   events.OwnerSource
	role     events.Role
	tx, rx   uint64
	txAtMost bool
	end      events.EndState
	closedBy events.Side
	last     events.TCPState
	errno    uint8
}

func checkConn(t *testing.T, name string, ev *events.Event, w want) {
	t.Helper()
	c := &ev.Conn
	var bad []string
	if c.Owner.PID != uint32(w.pid) {
		bad = append(bad, fmt.Sprintf("pid %d want %d", c.Owner.PID, w.pid))
	}
	if got := string(c.Owner.CommBytes()); got != w.comm {
		bad = append(bad, fmt.Sprintf("comm %q want %q", got, w.comm))
	}
	if c.Owner.Source != w.source {
		bad = append(bad, fmt.Sprintf("owner source %s want %s", c.Owner.Source, w.source))
	}
	if c.Role != w.role {
		bad = append(bad, fmt.Sprintf("role %s want %s", c.Role, w.role))
	}
	if w.txAtMost && c.TxBytes > w.tx || !w.txAtMost && c.TxBytes != w.tx {
		bad = append(bad, fmt.Sprintf("tx %d want %d", c.TxBytes, w.tx))
	}
	if c.RxBytes != w.rx {
		bad = append(bad, fmt.Sprintf("rx %d want %d", c.RxBytes, w.rx))
	}
	if c.EndState != w.end && !(w.end == events.EndTimeWait && c.EndState == events.EndFinWait2) {
		// fin_wait2: the closer's socket was handed to a timewait
		// socket before the peer's FIN arrived (a slow peer, as under
		// emulation); it turns TIME_WAIT when the FIN comes, which the
		// ss comparison below checks.
		bad = append(bad, fmt.Sprintf("end %s want %s", c.EndState, w.end))
	}
	if c.ClosedBy != w.closedBy {
		bad = append(bad, fmt.Sprintf("closed by %s want %s", c.ClosedBy, w.closedBy))
	}
	if c.LastState != w.last {
		bad = append(bad, fmt.Sprintf("last state %s want %s", c.LastState, w.last))
	}
	if c.Error != w.errno {
		bad = append(bad, fmt.Sprintf("error %d want %d", c.Error, w.errno))
	}
	if !c.SeenOpen {
		bad = append(bad, "not marked seen-open")
	}
	if c.Owner.StartNs == 0 || c.Owner.CgroupID == 0 {
		bad = append(bad, fmt.Sprintf("owner start %d cgroup %d, want both set", c.Owner.StartNs, c.Owner.CgroupID))
	}
	if len(bad) > 0 {
		t.Errorf("%s: %s\n  event: %s", name, strings.Join(bad, "; "), describe(ev))
	}
}

// checkTimes: the connection opened after the client started it, and
// closed before the test looked.
func checkTimes(t *testing.T, name string, ev *events.Event, start, now uint64) {
	t.Helper()
	c := &ev.Conn
	if c.OpenNs < start || c.CloseNs < c.OpenNs || c.CloseNs > now {
		t.Errorf("%s: open %d close %d not within [client start %d, now %d]", name, c.OpenNs, c.CloseNs, start, now)
	}
}

// checkTimeWaitMatchesSS: the sockets the tracer says entered TIME_WAIT are
// exactly those `ss state time-wait` lists in the namespace.
//
// A socket the tracer saw handed over in substate FIN_WAIT2 turns TIME_WAIT
// only when its peer's FIN arrives, which under emulation (the kernel
// matrix's VMs) can come after the records did: ss is asked again, for up
// to 5 s, until the kernel's view settles on the tracer's.
func checkTimeWaitMatchesSS(t *testing.T, evs []events.Event, ss func() string) {
	t.Helper()
	var fromSS, fromTracer []string
	read := func() {
		fromSS = fromSS[:0]
		for _, line := range strings.Split(strings.TrimSpace(ss()), "\n") {
			f := strings.Fields(line)
			if len(f) < 4 {
				continue
			}
			l, err1 := netip.ParseAddrPort(f[2])
			r, err2 := netip.ParseAddrPort(f[3])
			if err1 != nil || err2 != nil {
				t.Fatalf("cannot parse ss line %q", line)
			}
			fromSS = append(fromSS, l.String()+" "+r.String())
		}
		sort.Strings(fromSS)
	}
	for _, ev := range evs {
		// By the time ss looks, every peer has closed: a timewait
		// socket handed over in substate FIN_WAIT2 is TIME_WAIT now.
		if ev.Conn.EndState == events.EndTimeWait || ev.Conn.EndState == events.EndFinWait2 {
			fromTracer = append(fromTracer, ev.Conn.Local.String()+" "+ev.Conn.Remote.String())
		}
	}
	sort.Strings(fromTracer)
	read()
	for deadline := time.Now().Add(5 * time.Second); strings.Join(fromSS, ",") != strings.Join(fromTracer, ",") && time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
		read()
	}
	if strings.Join(fromSS, ",") != strings.Join(fromTracer, ",") {
		t.Errorf("TIME_WAIT sockets differ\n  ss:     %v\n  tracer: %v", fromSS, fromTracer)
	}
	if len(fromSS) == 0 {
		t.Error("the scenario should leave sockets in TIME_WAIT; ss shows none")
	}
}

func find(evs []events.Event, match func(*events.Conn) bool) *events.Event {
	for i := range evs {
		if match(&evs[i].Conn) {
			return &evs[i]
		}
	}
	return nil
}

func describe(ev *events.Event) string {
	c := &ev.Conn
	return fmt.Sprintf("%s pid=%d comm=%s owner=%s %s -> %s role=%s tx=%d rx=%d end=%s by=%s last=%s err=%d seen=%v",
		ev.Kind, c.Owner.PID, c.Owner.CommBytes(), c.Owner.Source, c.Local, c.Remote, c.Role,
		c.TxBytes, c.RxBytes, c.EndState, c.ClosedBy, c.LastState, c.Error, c.SeenOpen)
}
