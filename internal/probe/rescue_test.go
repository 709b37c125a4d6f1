package probe

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf/btf"

	"github.com/conntracer/conntracer/internal/events"
	"github.com/conntracer/conntracer/internal/testenv"
)

// openSockets lists the TCP sockets of ns that have not closed: every
// socket but the timewait ones (ss shows those in TIME-WAIT, or in
// FIN-WAIT-2 with a timewait timer).
func openSockets(t *testing.T, ns *testenv.NetNS) []string {
	t.Helper()
	var open []string
	for _, l := range strings.Split(ns.Output(t, "ss", "-Htano"), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "TIME-WAIT") && !strings.Contains(l, "timer:(timewait") {
			open = append(open, l)
		}
	}
	return open
}

// stateLinkHolders returns the processes other than this one that hold a
// BPF link on the TCP state tracepoint (their /proc/PID/fdinfo says
// "tp_name: inet_sock_set_state": tp_btf and raw_tp links).
func stateLinkHolders() map[int]bool {
	holders := map[int]bool{}
	procs, _ := os.ReadDir("/proc")
	for _, pe := range procs {
		pid, err := strconv.Atoi(pe.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		dir := "/proc/" + pe.Name()
		fds, _ := os.ReadDir(dir + "/fd")
		for _, fd := range fds {
			if l, _ := os.Readlink(dir + "/fd/" + fd.Name()); l != "anon_inode:bpf_link" {
				continue
			}
			info, _ := os.ReadFile(dir + "/fdinfo/" + fd.Name())
			if strings.Contains(string(info), "inet_sock_set_state") {
				holders[pid] = true
				break
			}
		}
	}
	return holders
}

// watchStateLinks samples stateLinkHolders until stop is called, which
// returns every process seen.
func watchStateLinks() (stop func() []int) {
	seen := map[int]bool{}
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			for pid := range stateLinkHolders() {
				seen[pid] = true
			}
			select {
			case <-quit:
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
	return func() []int {
		close(quit)
		<-done
		var pids []int
		for pid := range seen {
			pids = append(pids, pid)
		}
		return pids
	}
}

// kernelReportsRecursionMisses reports whether this kernel's bpf_prog_info
// carries recursion_misses (5.12+); before, every program reports 0.
func kernelReportsRecursionMisses(t *testing.T) bool {
	t.Helper()
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		t.Fatalf("kernel BTF: %v", err)
	}
	var info *btf.Struct
	if err := spec.TypeByName("bpf_prog_info", &info); err != nil {
		t.Fatalf("bpf_prog_info in the kernel's BTF: %v", err)
	}
	for _, m := range info.Members {
		if m.Name == "recursion_misses" {
			return true
		}
	}
	return false
}

// nsCounter counts the connection records of one namespace, nothing else:
// a churn's tens of thousands of events are not kept.
type nsCounter struct {
	netns uint32
	n     atomic.Int64
}

func (c *nsCounter) HandleEvent(ev *events.Event) {
	if ev.Kind == events.KindConnClosed && ev.NetNS() == c.netns {
		c.n.Add(1)
	}
}

func (c *nsCounter) Drained() {}

// missTotals sums RecursionMisses the way the loss is reported: the state
// program's skipped runs, how many its rescuer handled, how many nobody
// did, and the rescuer's own skipped runs.
type missTotals struct{ missed, rescued, unhandled, rescuerMissed uint64 }

func readMisses(t *testing.T, p *Probe) missTotals {
	t.Helper()
	progs, err := p.RecursionMisses()
	if err != nil {
		t.Fatal(err)
	}
	var m missTotals
	for _, pm := range progs {
		if pm.Object != "tcplife" {
			continue
		}
		if pm.Rescuer {
			m.rescuerMissed += pm.Misses
			continue
		}
		m.missed += pm.Misses
		m.rescued += pm.Rescued
		m.unhandled += pm.Unhandled()
	}
	return m
}

func (m missTotals) minus(o missTotals) missTotals {
	return missTotals{m.missed - o.missed, m.rescued - o.rescued, m.unhandled - o.unhandled, m.rescuerMissed - o.rescuerMissed}
}

// TestLossAccountingIsExact: under a churn of short loopback connections
// from several clients, the kernel skips some runs of the state program (a
// softirq state change arriving while the program handles a
// process-context one on the same CPU: 0-74 per 60,000 connections on this
// host). The rescuer handles each of them, so that the records seen plus
// the records reported lost (ring buffer drops, and skipped runs no rescuer
// handled) equal the records the connections make, exactly: two per
// connection, its two sockets in the test's namespace. It says so when the
// run saw no skipped run at all, which proves nothing about the rescuer.
// The records are counted once every socket of the churn has closed: a few
// server sockets close seconds after the churn (their FIN sent again after
// a tail loss probe, then reset by the client), which a wait for the count
// to settle took for missing records. Every skipped run must have been
// rescued. In the kernel matrix's guests (VMTEST_KERNEL set, one package at
// a time) the sum is asserted exactly; on the shared development host a
// residual of a few records that reached none of the tracer's programs,
// with no skipped run counted, is logged instead (see the report of issue
// 18). CT_RESCUE_CONNS sets the number of connections (default 60,000;
// 12,000 under emulation, 4,000 under arm64 emulation).
func TestLossAccountingIsExact(t *testing.T) {
	testenv.RequireRoot(t)
	conns := 60000
	if _, emulated := testenv.Emulated(); emulated {
		conns = 12000
		if runtime.GOARCH == "arm64" {
			// arm64 under TCG on an x86 host runs 3.5 times slower:
			// 12,000 took 100-120 s a mode there, most of the package's
			// 10 minutes. 4,000 still give tens of skipped runs.
			conns = 4000
		}
	}
	if v := os.Getenv("CT_RESCUE_CONNS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 6 {
			t.Fatalf("CT_RESCUE_CONNS=%q: want a number of connections, at least 6", v)
		}
		conns = n
	}
	for _, mode := range []AttachMode{AttachTPBTF, AttachRawTP} {
		t.Run(string(mode), func(t *testing.T) {
			if mode == AttachTPBTF && !kernelHasTaskBTF() {
				t.Skip("tp_btf's state program needs bpf_get_current_task_btf (5.11+), which this kernel lacks")
			}
			ns := testenv.NewNetNS(t)
			opts := DefaultOptions()
			opts.AttachMode = mode
			opts.NoConnect = true // the state program is the subject
			opts.Filter.NetNS = ns.Inode
			p, err := Open(opts)
			if err != nil {
				t.Fatalf("open probe: %+v", err)
			}
			defer p.Close()
			if a := findAttachment(p.Attachments(), RescueHook); a == nil || a.Mode != mode {
				t.Fatalf("rescuer not attached as %s: %v", mode, p.Attachments())
			}
			c := &nsCounter{netns: ns.Inode}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- p.Run(ctx, c) }()
			defer cancel()

			before := readMisses(t, p)
			others := watchStateLinks()
			res := testenv.RunChurn(t, ns, 6, conns)
			want := int64(2 * res.Conns)
			// A socket's record is written when it closes. Most close with
			// the churn; a server socket whose FIN had to be sent again (a
			// tail loss probe on a busy machine, then the client's RST)
			// closes seconds later. Wait until none but timewait sockets
			// are left in the namespace, then for the reader (it polls).
			testenv.WaitFor(t, 120*time.Second, "every socket of the churn closed", func() (bool, string) {
				open := openSockets(t, ns)
				return len(open) == 0, fmt.Sprintf("%d still open: %v", len(open), open[:min(len(open), 3)])
			})
			testenv.WaitFor(t, 30*time.Second, "the records read", func() (bool, string) {
				before := c.n.Load()
				time.Sleep(4 * opts.PollInterval)
				n := c.n.Load()
				return n == want || n == before, fmt.Sprintf("%d of %d", n, want)
			})
			foreign := others()
			cancel()
			if err := <-done; err != nil {
				t.Fatalf("Run: %v", err)
			}
			d := readMisses(t, p).minus(before)
			seen := c.n.Load()
			ringLost := p.Stats().Lost // the programs filter on the namespace: all of it is ours
			// Closes no program saw (docs/notes/residual-loss.md): those
			// found by a later open at the same address, and those whose
			// entry is still in socks now that every socket of the
			// namespace is closed.
			unseen, err := p.UnseenCloses()
			if err != nil {
				t.Fatal(err)
			}
			left := leftEstablished(t, p, ns.Inode)
			reported := int64(ringLost + d.unhandled + unseen.Connections + left)
			t.Logf("%d connections in %.1fs: %d records seen of %d; state program skipped %d runs, rescued %d, unhandled %d; rescuer skipped %d; ring buffer lost %d; closes seen by no program %d (found at reuse %d, left in socks %d; attempts %d); %d other processes held links on the tracepoint meanwhile",
				res.Conns, res.Seconds, seen, want, d.missed, d.rescued, d.unhandled, d.rescuerMissed, ringLost, unseen.Connections+left, unseen.Connections, left, unseen.Attempts, len(foreign))
			// What each reported loss stands for: a ring buffer drop is
			// one record; a skipped run no program handled (the state
			// program and its rescuer both skipped: deep nesting, seen
			// on 7.2) loses a record only if it was the close; an entry
			// left behind (found at reuse) was a lost record unless an
			// earlier change had already emitted it. So the reported
			// losses bound the missing records: the test asserts that
			// nothing is lost unreported, exactly.
			nstat := func() []string {
				var nonzero []string
				for _, l := range strings.Split(ns.Output(t, "nstat", "-az"), "\n") {
					if f := strings.Fields(l); len(f) >= 2 && f[1] != "0" && strings.HasPrefix(f[0], "Tcp") {
						nonzero = append(nonzero, f[0]+"="+f[1])
					}
				}
				return nonzero
			}
			switch {
			case seen+reported < want:
				t.Errorf("records seen %d + reported lost %d (ring buffer %d, unhandled skipped runs %d, closes seen by no program %d) = %d, fewer than %d (2 per connection): a loss nobody reported; the namespace's TCP counters: %v",
					seen, reported, ringLost, d.unhandled, unseen.Connections+left, seen+reported, want, nstat())
			case seen > want:
				// One record more than two per connection, about once in
				// ten runs of 24,000 to 120,000 records, on the host and
				// in the guests: a change handled twice, not explained
				// yet (docs/notes/residual-loss.md). Not a loss: shown.
				t.Logf("records seen %d: %d more than 2 per connection (%d rescued for %d skipped)", seen, seen-want, d.rescued, d.missed)
			case seen < want:
				t.Logf("%d records missing, within the %d reported lost", want-seen, reported)
			}
			if !kernelReportsRecursionMisses(t) {
				// Nothing to compare the rescues with: the records' sum
				// above is the check.
				t.Logf("this kernel reports no recursion misses (bpf_prog_info.recursion_misses, 5.12+): %d runs rescued", d.rescued)
				return
			}
			// A skipped run goes unhandled only when the rescuer was
			// skipped for the same change.
			if d.unhandled > d.rescuerMissed {
				t.Errorf("of %d skipped runs of the state program, %d rescued and %d unhandled, but the rescuer was skipped only %d times: want every other one rescued", d.missed, d.rescued, d.unhandled, d.rescuerMissed)
			}
			if d.rescued > d.missed {
				// The rescuer found no token for a state change the kernel
				// did not count as skipped: one that reached the rescuer
				// but not the state program (seen once on the shared
				// host, as above).
				t.Logf("%d rescued for %d skipped: %d state changes reached the rescuer only", d.rescued, d.missed, d.rescued-d.missed)
			}
		})
	}
}

// leftEstablished counts the socks entries of namespace netns that reached
// ESTABLISHED: once every socket of the namespace is closed, each is a
// close no program saw and no later open has found yet.
func leftEstablished(t *testing.T, p *Probe, netns uint32) uint64 {
	t.Helper()
	o := objectOf[*tcplifeObject](p)
	var (
		k uint64
		v tcplifeSockState
		n uint64
	)
	it := o.socks.Iterate()
	for it.Next(&k, &v) {
		if v.Netns == netns && v.Flags&uint8(tcplifeConnFlagsCONN_ESTABLISHED) != 0 {
			n++
		}
	}
	if err := it.Err(); err != nil {
		t.Fatalf("read socks: %v", err)
	}
	return n
}
