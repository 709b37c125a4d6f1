package testenv

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"testing"
)

// helperProc is a running helper process (the test binary re-executed in a
// role, see MaybeRunHelper) that talks to the test over its stdin and
// stdout: it reports on stdout, and it finishes when the test closes its
// stdin. Every long-lived helper (servers, clients, bursts, listeners) is
// one.
type helperProc struct {
	PID      int
	cmd      *exec.Cmd
	stdin    io.WriteCloser
	out      *bufio.Reader
	released bool
	err      error
}

// startHelperProc starts cmd (the helper binary, see helperBinary, usually
// through NetNS.Command) in role, with extra environment entries.
func startHelperProc(t testing.TB, cmd *exec.Cmd, role string, env ...string) *helperProc {
	t.Helper()
	cmd.Env = append(append(os.Environ(), helperEnv+"="+role), env...)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start helper %s: %v", role, err)
	}
	return &helperProc{PID: cmd.Process.Pid, cmd: cmd, stdin: stdin, out: bufio.NewReader(stdout)}
}

// readLine reads the helper's next line of output.
func (p *helperProc) readLine() (string, error) { return p.out.ReadString('\n') }

// release closes the helper's stdin, which tells it to finish, and waits
// for it to exit. Only the first call does anything; every call returns
// how the helper exited.
func (p *helperProc) release() error {
	if p.released {
		return p.err
	}
	p.released = true
	p.stdin.Close()
	p.err = p.cmd.Wait()
	return p.err
}

// listenLoopback is the helper side of a server: it listens on an
// ephemeral port of 127.0.0.1 and of ::1 and reports both ports to the
// test ("ports P4 P6", read by startServer).
func listenLoopback() (l4, l6 net.Listener, err error) {
	l4, err = net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return nil, nil, err
	}
	l6, err = net.Listen("tcp6", "[::1]:0")
	if err != nil {
		l4.Close()
		return nil, nil, err
	}
	_, err = fmt.Printf("ports %d %d\n", l4.Addr().(*net.TCPAddr).Port, l6.Addr().(*net.TCPAddr).Port)
	return l4, l6, err
}

// runHelperJSON runs cmd (the helper binary) to completion with env added
// to its environment (the role and its plan) and decodes the JSON it
// printed into result. what names the helper in failures.
func runHelperJSON(t testing.TB, cmd *exec.Cmd, what string, env []string, result any) {
	t.Helper()
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if err := json.Unmarshal(out, result); err != nil {
		t.Fatalf("%s output %q: %v", what, out, err)
	}
}

// HoldPlan is n connections to addr, each exchanging 10 bytes both ways
// and then held open until Client.Release.
func HoldPlan(addr string, n int) []Conn {
	plan := make([]Conn, n)
	for i := range plan {
		plan[i] = Conn{Addr: addr, Req: 10, Resp: 10, Mode: ClientCloses, Hold: true}
	}
	return plan
}
