package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/conntracer/conntracer/internal/testenv"
)

// serveProc is `tracer serve` running as a process of its own (this test
// binary re-executed through runMainEnv), so that its fds, memory and
// /proc/PID/status are its own and not the test's.
type serveProc struct {
	cmd    *exec.Cmd
	addr   string
	stderr *lineWaiter
	exited chan error
	once   sync.Once
	err    error // of stop
}

// stop sends SIGTERM and waits for the tracer to exit; safe to call twice.
func (p *serveProc) stop() error {
	p.once.Do(func() {
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case p.err = <-p.exited:
			if p.err != nil {
				p.err = fmt.Errorf("%w\n%s", p.err, p.stderr)
			}
		case <-time.After(15 * time.Second):
			p.cmd.Process.Kill()
			p.err = fmt.Errorf("tracer serve did not stop on SIGTERM\n%s", p.stderr)
		}
	})
	return p.err
}

// startServeProc starts `tracer serve` with args on a free loopback port
// and returns once it serves; it is stopped with SIGTERM after the test.
func startServeProc(t *testing.T, args ...string) *serveProc {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	p := &serveProc{stderr: &lineWaiter{want: "tracer: serve: tracing", ready: make(chan struct{})}}
	p.cmd = exec.Command(self)
	p.cmd.Env = append(os.Environ(), runMainEnv+"=serve --web.listen-address 127.0.0.1:0 "+strings.Join(args, " "))
	p.cmd.Stderr = p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p.exited = make(chan error, 1)
	go func() { p.exited <- p.cmd.Wait() }()
	t.Cleanup(func() {
		if err := p.stop(); err != nil {
			t.Errorf("tracer serve: %v", err)
		}
	})
	select {
	case <-p.stderr.ready:
	case err := <-p.exited:
		p.exited <- err
		t.Fatalf("tracer serve stopped: %v\n%s", err, p.stderr)
	case <-time.After(30 * time.Second):
		t.Fatalf("tracer serve did not start: %s", p.stderr)
	}
	m := servingOn.FindStringSubmatch(p.stderr.String())
	if m == nil {
		t.Fatalf("no metrics address in: %s", p.stderr)
	}
	p.addr = m[1]
	return p
}

// status returns a field of /proc/PID/status, e.g. "VmRSS".
func (p *serveProc) status(t *testing.T, field string) string {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && k == field {
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, p.cmd.Process.Pid)
	return ""
}

// rssKB is the process's resident memory.
func (p *serveProc) rssKB(t *testing.T) int {
	t.Helper()
	n, err := strconv.Atoi(strings.TrimSuffix(p.status(t, "VmRSS"), " kB"))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// scrapeWithin fetches /metrics within timeout and returns the value of the
// series whose line starts with series ("" if absent).
func scrapeWithin(addr, series string, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return "", err
	}
	// A connection of its own, as a Prometheus server's first scrape.
	resp, err := (&http.Client{Transport: &http.Transport{DisableKeepAlives: true}}).Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("status %s", resp.Status)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, series+" ") {
			return strings.TrimPrefix(line, series+" "), nil
		}
	}
	return "", nil
}

// TestMetricsServerSurvivesIdleConnections: 20,000 idle connections to the
// metrics port once took /metrics down for ~130 s, starved the samplers of
// fds and left RSS at 590 MB. 10,000 here (40 times the cap; 19,500 passed
// too but took 35 s). Now a scrape during and after the flood
// answers within a second, the samplers keep reading, the tracer holds at
// most maxMetricsConns of them and its RSS stays near the idle level.
func TestMetricsServerSurvivesIdleConnections(t *testing.T) {
	testenv.RequireRoot(t)
	// The tracer follows a namespace of its own: the flood's connections
	// are traced and aggregated otherwise, which is data, not the server's
	// memory.
	ns := testenv.NewNetNS(t)
	p := startServeProc(t, "--netns", ns.Name, "--sample-interval", "200ms", "--reconcile-interval", "0", "--unix-interval", "0")
	const sampled = `conntracer_events_read_total{stage="sampler"}`
	if _, err := scrapeWithin(p.addr, sampled, 5*time.Second); err != nil {
		t.Fatalf("first scrape: %v", err)
	}
	time.Sleep(time.Second) // settle: the samplers' first rounds
	idleRSS := p.rssKB(t)

	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	n := min(10000, int(lim.Cur)-500)
	if n < 2000 {
		t.Skipf("fd limit %d of this test process is too low to flood with idle connections", lim.Cur)
	}
	// Under full emulation (the kernel matrix's qemu TCG) the guest's CPU
	// is tens of times slower: accepting and evicting a flood's backlog
	// takes longer than any scrape deadline, so the deadlines would
	// measure the emulator. There the flood is 2,000 connections (still 8
	// times the cap, which is what is under test), the server may first
	// drain its accept queue, and only then must a scrape answer within a
	// second.
	kernel, emulated := testenv.Emulated()
	if emulated {
		n = 2000
		t.Logf("kernel %s under emulation: a flood of %d connections", kernel, n)
	}
	// Dial n idle connections from 64 goroutines; the server may close
	// them at once (evicted) or later: the client keeps whatever it has.
	var (
		mu    sync.Mutex
		conns []net.Conn
		wg    sync.WaitGroup
	)
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	start := time.Now()
	for w := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 64 {
				c, err := net.DialTimeout("tcp", p.addr, 2*time.Second)
				if err != nil {
					continue // a full accept queue: the SYN was dropped
				}
				mu.Lock()
				conns = append(conns, c)
				mu.Unlock()
			}
		}()
	}
	// Scrape while the flood runs. The limiter evicts the oldest silent
	// connection: a scrape is evicted if maxMetricsConns connections
	// arrive before the server has read its request, which a flood of
	// thousands a second on a loaded 2-core machine causes now and then
	// (1 of 3 seen). What the issue asks is the scrape after the flood,
	// checked strictly below; during it, one must get through.
	floodScrapes, floodFails := 0, 0
	for done := false; !done; {
		select {
		case <-waitChan(&wg):
			done = true
		case <-time.After(500 * time.Millisecond):
			t0 := time.Now()
			_, err := scrapeWithin(p.addr, sampled, time.Second)
			floodScrapes++
			if err != nil || time.Since(t0) > time.Second {
				floodFails++
				t.Logf("scrape during the flood (%d connections open): %v after %v", len(conns), err, time.Since(t0))
			}
		}
	}
	t.Logf("%d idle connections dialled in %v; %d scrapes during the flood, %d failed", len(conns), time.Since(start), floodScrapes, floodFails)
	if len(conns) < n/2 {
		t.Fatalf("only %d of %d connections were made: the flood did not happen", len(conns), n)
	}
	if floodScrapes >= 2 && floodFails == floodScrapes && !emulated {
		t.Errorf("%d of %d scrapes during the flood failed", floodFails, floodScrapes)
	}
	if emulated {
		testenv.WaitFor(t, 60*time.Second, "the server drains the flood's accept queue", func() (bool, string) {
			_, err := scrapeWithin(p.addr, sampled, 5*time.Second)
			return err == nil, fmt.Sprint(err)
		})
	}

	// After the flood, with every connection still open on our side.
	t0 := time.Now()
	before, err := scrapeWithin(p.addr, sampled, time.Second)
	if err != nil {
		t.Fatalf("scrape after %d idle connections: %v", len(conns), err)
	}
	t.Logf("scrape after the flood answered in %v", time.Since(t0))
	testenv.WaitFor(t, 5*time.Second, "the samplers keep reading after the flood", func() (bool, string) {
		v, err := scrapeWithin(p.addr, sampled, time.Second)
		return err == nil && v != before, fmt.Sprintf("%s: %q then %q (%v)", sampled, before, v, err)
	})
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", p.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	if len(fds) > 100+maxMetricsConns {
		t.Errorf("the tracer holds %d fds with %d idle connections made: the cap of %d does not hold", len(fds), len(conns), maxMetricsConns)
	}
	peak := p.rssKB(t)
	// The abuse ends: memory returns near the idle level. Not to it: the
	// flood's ~39,000 sockets pass through the tracer's own samplers,
	// whose reused buffers keep the size of the largest round (measured:
	// 9,000 idle connections to another port left +49 MB; 19,500 to the
	// metrics port leave ~+60 MB, against +540 MB before the limits).
	mu.Lock()
	for _, c := range conns {
		c.Close()
	}
	conns = nil
	mu.Unlock()
	testenv.WaitFor(t, 20*time.Second, "RSS back near its idle level", func() (bool, string) {
		rss := p.rssKB(t)
		return rss <= idleRSS+80<<10, fmt.Sprintf("RSS %d kB, idle %d kB, during the flood %d kB", rss, idleRSS, peak)
	})
	t.Logf("RSS idle %d kB, during the flood %d kB, after %d kB; %d fds during the flood", idleRSS, peak, p.rssKB(t), len(fds))
}

// waitChan is a channel closed once wg is done.
func waitChan(wg *sync.WaitGroup) <-chan struct{} {
	ch := make(chan struct{})
	go func() { wg.Wait(); close(ch) }()
	return ch
}
