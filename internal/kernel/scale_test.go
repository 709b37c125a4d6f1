package kernel

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// scaleEnv opts in to TestExistingConnectionsScale: "CONNS,PROCS", e.g.
// "10000,2000" for 20,000 sockets and 2,000 extra processes. It is off by
// default because it loads the machine for several seconds.
const scaleEnv = "CONNTRACER_KERNEL_SCALE"

// helperBulkServer accepts arg connections on 127.0.0.1, printing its port
// first and "accepted" when done, and holds them until stdin closes.
func helperBulkServer(arg string) error {
	n, err := strconv.Atoi(arg)
	if err != nil {
		return err
	}
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return err
	}
	fmt.Println(l.Addr().(*net.TCPAddr).Port)
	conns := make([]net.Conn, 0, n)
	for len(conns) < n {
		c, err := l.Accept()
		if err != nil {
			return err
		}
		conns = append(conns, c)
	}
	fmt.Println("accepted")
	waitStdin([]any{conns, l})
	return nil
}

// helperBulkClient makes CONNS connections to PORT ("PORT CONNS PROCS"),
// then starts PROCS sleep processes that each inherit ten of them, as forked
// workers would, prints "connected" and holds everything until stdin closes.
func helperBulkClient(arg string) error {
	var port, n, procs int
	if _, err := fmt.Sscan(arg, &port, &n, &procs); err != nil {
		return fmt.Errorf("parse %q: %w", arg, err)
	}
	conns := make([]*net.TCPConn, 0, n)
	for len(conns) < n {
		c, err := net.Dial("tcp4", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			return fmt.Errorf("connection %d: %w", len(conns), err)
		}
		conns = append(conns, c.(*net.TCPConn))
	}
	var children []*exec.Cmd
	defer func() {
		for _, c := range children {
			_ = c.Process.Kill()
			_ = c.Wait()
		}
	}()
	for i := 0; i < procs; i++ {
		cmd := exec.Command("sleep", "300")
		// Pdeathsig: the sleeps must not outlive us if the test dies.
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		for j := 0; j < 10 && len(conns) > 0; j++ {
			f, err := conns[(i*10+j)%len(conns)].File()
			if err != nil {
				return err
			}
			cmd.ExtraFiles = append(cmd.ExtraFiles, f)
		}
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("start sleep %d: %w", i, err)
		}
		for _, f := range cmd.ExtraFiles {
			f.Close()
		}
		children = append(children, cmd)
	}
	fmt.Println("connected")
	waitStdin(conns)
	return nil
}

// TestExistingConnectionsScale measures a scan with many sockets and
// processes; see scaleEnv.
func TestExistingConnectionsScale(t *testing.T) {
	spec := os.Getenv(scaleEnv)
	if spec == "" {
		t.Skip("set " + scaleEnv + "=CONNS,PROCS to measure a large scan")
	}
	requireRoot(t)
	var conns, procs int
	if _, err := fmt.Sscanf(spec, "%d,%d", &conns, &procs); err != nil {
		t.Fatalf("%s=%q: %v", scaleEnv, spec, err)
	}
	ns := newNetNS(t)
	nsIno, err := NetNSByName(ns)
	if err != nil {
		t.Fatal(err)
	}
	server := startHelper(t, ns, "bulk-server", strconv.Itoa(conns))
	port := server.line(t, 20*time.Second)
	client := startHelper(t, ns, "bulk-client", fmt.Sprintf("%s %d %d", port, conns, procs))
	if got := client.line(t, 120*time.Second); got != "connected" {
		t.Fatalf("client said %q", got)
	}
	if got := server.line(t, 120*time.Second); got != "accepted" {
		t.Fatalf("server said %q", got)
	}

	// Alternate one fd-scanning worker and the default, to compare them
	// under the same load.
	var times, serial []time.Duration
	for i := 0; i < 6; i++ {
		s := scanner{procDir: "/proc", netnsDir: netnsRunDir, mountinfo: selfMountinfo}
		if i%2 == 1 {
			s.fdWorkers = 1
		}
		start := time.Now()
		evs, warnings, err := s.existingConnections()
		if i%2 == 1 {
			serial = append(serial, time.Since(start))
			continue
		}
		times = append(times, time.Since(start))
		if err != nil {
			t.Fatal(err)
		}
		mine, owned := 0, 0
		for _, ev := range evs {
			if ev.Conn.NetNS == nsIno {
				mine++
				if ev.Conn.Owner.Known() {
					owned++
				}
			}
		}
		if mine != 2*conns || owned != mine {
			t.Errorf("scan %d: %d sockets in our namespace (%d owned), want %d, all owned", i, mine, owned, 2*conns)
		}
		t.Logf("scan %d: %d connections in all, %d warnings, %v", i, len(evs), len(warnings), times[len(times)-1])
	}
	slices.Sort(times)
	slices.Sort(serial)
	t.Logf("with one fd worker: median %v (min %v)", serial[1], serial[0])
	t.Logf("median scan time %v (min %v) for %d sockets in our namespace and %d extra processes", times[1], times[0], 2*conns, procs)
	if times[1] > time.Second {
		t.Errorf("median scan %v, want under a second", times[1])
	}
}
