package testenv

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// helperEnv switches a test binary into helper mode; its value names the role.
const (
	helperEnv = "CONNTRACER_TESTENV_HELPER"
	planEnv   = "CONNTRACER_TESTENV_PLAN"
)

// MaybeRunHelper runs the helper process and exits if this binary was
// started as one; otherwise it returns at once. Call it first in TestMain.
func MaybeRunHelper() {
	var err error
	switch os.Getenv(helperEnv) {
	case "":
		return
	case "server":
		err = runServer()
	case "client":
		err = runClient()
	case "churn":
		err = runChurn()
	case "connects":
		err = runConnects()
	case "dgram-sends":
		err = runDgramSends()
	case "burst":
		err = runBurst()
	case "listener":
		err = runListener()
	case "hold-server":
		err = runHoldServer()
	default:
		err = fmt.Errorf("unknown helper %q", os.Getenv(helperEnv))
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// Mode says how a test connection ends.
type Mode string

const (
	// ClientCloses: the client closes first (client TIME_WAIT, server
	// CLOSE_WAIT).
	ClientCloses Mode = "client-closes"
	// ServerCloses: the server closes first (server TIME_WAIT, client
	// CLOSE_WAIT).
	ServerCloses Mode = "server-closes"
	// ClientResets: the client aborts with SO_LINGER 0 (a RST).
	ClientResets Mode = "client-resets"
	// Refused: the client connects to a port nobody listens on.
	Refused Mode = "refused"
)

// Conn is one connection a client makes: it sends a 9-byte header and Req
// bytes, the server answers Resp bytes, then they close as Mode says.
type Conn struct {
	Addr string // "127.0.0.1:80" or "[::1]:80"
	Req  uint32
	Resp uint32
	Mode Mode
	// Hold keeps the connection open after the exchange until
	// Client.Release; the other connections close at once.
	Hold bool
	// Pause is how long the client sleeps before this connection: a
	// paced plan (a few short connections a second beside held ones).
	Pause time.Duration `json:",omitempty"`
}

// HeaderBytes is the size of the request header, counted in the client's
// sent bytes and the server's received bytes.
const HeaderBytes = 9

// Result is what the client observed for one Conn.
type Result struct {
	Local  string `json:"local"` // empty when the connect failed
	Remote string `json:"remote"`
	Err    string `json:"err"`
	// Start and End bracket the connection in CLOCK_BOOTTIME ns, as the
	// client measured them (before connect(), after close()); End is 0
	// for a held connection.
	Start uint64 `json:"start"`
	End   uint64 `json:"end"`
}

// LocalAddrPort parses Local.
func (r Result) LocalAddrPort() netip.AddrPort { return netip.MustParseAddrPort(r.Local) }

// Server is a helper process that accepts connections in a namespace.
type Server struct {
	PID   int
	Port4 uint16 // on 127.0.0.1
	Port6 uint16 // on ::1
	proc  *helperProc
}

// StartServer starts a server named comm in ns. It stops with the test.
func StartServer(t testing.TB, ns *NetNS, comm string) *Server {
	t.Helper()
	return startServer(t, ns, comm, "server")
}

// startServer starts the helper role (a server that prints its ports) and
// reads its ports.
func startServer(t testing.TB, ns *NetNS, comm, role string) *Server {
	t.Helper()
	proc := startHelperProc(t, ns.Command(helperBinary(t, comm), "-test.run=^$"), role)
	s := &Server{PID: proc.PID, proc: proc}
	t.Cleanup(func() { s.Stop(t) })
	line, err := proc.readLine()
	if err != nil {
		t.Fatalf("%s did not start: %v", role, err)
	}
	if _, err := fmt.Sscanf(line, "ports %d %d", &s.Port4, &s.Port6); err != nil {
		t.Fatalf("%s said %q: %v", role, line, err)
	}
	return s
}

// Addr4 and Addr6 return the server's listening addresses.
func (s *Server) Addr4() string { return fmt.Sprintf("127.0.0.1:%d", s.Port4) }

// Addr6 returns the server's IPv6 loopback address.
func (s *Server) Addr6() string { return fmt.Sprintf("[::1]:%d", s.Port6) }

// Stop closes the server's stdin, which makes it finish the connections in
// progress and exit, and waits for it.
func (s *Server) Stop(t testing.TB) {
	t.Helper()
	if !s.proc.released {
		if err := s.proc.release(); err != nil {
			t.Errorf("server exited: %v", err)
		}
	}
}

// Client is a helper process making the connections of a plan.
type Client struct {
	PID     int
	Results []Result
	proc    *helperProc
}

// StartClient runs a client named comm in ns and returns once every
// connection of plan has been made (and, unless held, closed).
func StartClient(t testing.TB, ns *NetNS, comm string, plan []Conn) *Client {
	t.Helper()
	return startClient(t, ns, comm, "", plan)
}

// RunClientInCgroup runs a client to completion inside a cgroup v2
// directory: it joins the cgroup before it executes, so every connection
// it makes belongs there.
func RunClientInCgroup(t testing.TB, ns *NetNS, comm, cgroupDir string, plan []Conn) *Client {
	t.Helper()
	c := startClient(t, ns, comm, cgroupDir, plan)
	c.Release(t)
	return c
}

func startClient(t testing.TB, ns *NetNS, comm, cgroupDir string, plan []Conn) *Client {
	t.Helper()
	js, err := json.Marshal(plan)
	if err != nil {
		t.Fatal(err)
	}
	cmd := ns.Command(helperBinary(t, comm), "-test.run=^$")
	if cgroupDir != "" {
		args := append([]string{"-c", `echo $$ > "$0/cgroup.procs" && exec "$@"`, cgroupDir}, cmd.Args...)
		cmd = exec.Command("sh", args...)
	}
	proc := startHelperProc(t, cmd, "client", planEnv+"="+string(js))
	c := &Client{PID: proc.PID, proc: proc}
	t.Cleanup(func() { c.Release(t) })
	dec := json.NewDecoder(proc.out)
	for range plan {
		var r Result
		if err := dec.Decode(&r); err != nil {
			t.Fatalf("client output: %v", err)
		}
		c.Results = append(c.Results, r)
	}
	return c
}

// RunClient runs a client to completion.
func RunClient(t testing.TB, ns *NetNS, comm string, plan []Conn) *Client {
	t.Helper()
	c := StartClient(t, ns, comm, plan)
	c.Release(t)
	return c
}

// Release lets the client close its held connections, and waits for it.
func (c *Client) Release(t testing.TB) {
	t.Helper()
	if !c.proc.released {
		if err := c.proc.release(); err != nil {
			t.Errorf("client exited: %v", err)
		}
	}
}

func runServer() error {
	l4, l6, err := listenLoopback()
	if err != nil {
		return err
	}

	var wg sync.WaitGroup
	serve := func(l net.Listener) {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				handle(c)
			}()
		}
	}
	wg.Add(2)
	go serve(l4)
	go serve(l6)
	// Run until the test closes our stdin.
	_, _ = io.Copy(io.Discard, os.Stdin)
	l4.Close()
	l6.Close()
	wg.Wait()
	return nil
}

func handle(c net.Conn) {
	defer c.Close()
	var hdr [HeaderBytes]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return
	}
	req := binary.LittleEndian.Uint32(hdr[0:])
	resp := binary.LittleEndian.Uint32(hdr[4:])
	mode := hdr[8]
	if _, err := io.CopyN(io.Discard, c, int64(req)); err != nil {
		return
	}
	if _, err := c.Write(make([]byte, resp)); err != nil {
		return
	}
	if mode == modeByte(ServerCloses) {
		return // close first
	}
	// Wait for the client's FIN (or RST) before closing.
	_, _ = io.Copy(io.Discard, c)
}

func modeByte(m Mode) byte {
	switch m {
	case ServerCloses:
		return 1
	case ClientResets:
		return 2
	}
	return 0
}

func runClient() error {
	var plan []Conn
	if err := json.Unmarshal([]byte(os.Getenv(planEnv)), &plan); err != nil {
		return fmt.Errorf("plan: %w", err)
	}
	enc := json.NewEncoder(os.Stdout)
	type heldConn struct {
		c    *net.TCPConn
		mode Mode
	}
	var held []heldConn
	for _, p := range plan {
		time.Sleep(p.Pause)
		r := &Result{Remote: p.Addr, Start: bootNs()}
		c, err := exchange(p)
		if err != nil {
			r.Err = err.Error()
			r.End = bootNs()
			if err := enc.Encode(r); err != nil {
				return err
			}
			continue
		}
		r.Local = c.LocalAddr().String()
		if p.Hold {
			held = append(held, heldConn{c, p.Mode})
		} else {
			if err := finish(c, p.Mode); err != nil {
				return err
			}
			r.End = bootNs()
		}
		if err := enc.Encode(r); err != nil {
			return err
		}
	}
	_, _ = io.Copy(io.Discard, os.Stdin)
	for _, h := range held {
		if err := finish(h.c, h.mode); err != nil {
			return err
		}
	}
	return nil
}

// exchange connects, sends the request and reads the whole response.
func exchange(p Conn) (*net.TCPConn, error) {
	nc, err := net.DialTimeout("tcp", p.Addr, 5*time.Second)
	if err != nil {
		if p.Mode == Refused {
			return nil, errRefused(err)
		}
		return nil, err
	}
	c := nc.(*net.TCPConn)
	buf := make([]byte, HeaderBytes+int(p.Req))
	binary.LittleEndian.PutUint32(buf[0:], p.Req)
	binary.LittleEndian.PutUint32(buf[4:], p.Resp)
	buf[8] = modeByte(p.Mode)
	if _, err := c.Write(buf); err != nil {
		return nil, err
	}
	if _, err := io.CopyN(io.Discard, c, int64(p.Resp)); err != nil {
		return nil, err
	}
	return c, nil
}

// finish closes the connection the way its mode says.
func finish(c *net.TCPConn, m Mode) error {
	switch m {
	case ServerCloses:
		// Wait for the server's FIN, then close.
		if _, err := io.Copy(io.Discard, c); err != nil {
			return err
		}
	case ClientResets:
		if err := c.SetLinger(0); err != nil {
			return err
		}
	}
	return c.Close()
}

func errRefused(err error) error {
	if strings.Contains(err.Error(), "connection refused") {
		return errors.New("ECONNREFUSED")
	}
	return err
}
