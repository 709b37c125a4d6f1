package probe

import (
	"github.com/conntracer/conntracer/internal/aggregate"

	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/conntracer/conntracer/internal/events"
	"github.com/conntracer/conntracer/internal/testenv"
)

// dgramFailuresOf returns the failed Unix datagram sends the tracer
// reported for pid, by destination and errno name, once they account for
// at least n failures (or the deadline passed), after one more poll.
func (c *collector) dgramFailuresOf(pid int, n int) (map[string]map[string]int, []events.Connect) {
	pick := func() (map[string]map[string]int, []events.Connect, int) {
		m := map[string]map[string]int{}
		var evs []events.Connect
		total := 0
		for _, ev := range c.snapshot() {
			if ev.Kind != events.KindUnixDgramSend || ev.Connect.Owner.PID != uint32(pid) {
				continue
			}
			d := ev.Connect.Destination()
			if m[d] == nil {
				m[d] = map[string]int{}
			}
			m[d][events.ErrnoName(ev.Connect.Errno)] += int(ev.Connect.Count)
			evs = append(evs, ev.Connect)
			total += int(ev.Connect.Count)
		}
		return m, evs, total
	}
	deadline := time.Now().Add(15 * time.Second)
	for _, _, got := pick(); got < n && time.Now().Before(deadline); _, _, got = pick() {
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(700 * time.Millisecond) // one more read of the kernel's counts
	m, evs, _ := pick()
	return m, evs
}

// failuresSeen is the client's result without its successes.
func failuresSeen(r testenv.ConnectResult) map[string]int {
	m := map[string]int{}
	for k, v := range r.Errnos {
		if k != "OK" {
			m[k] = v
		}
	}
	return m
}

func TestUnixDgramSendFailuresCountedExactly(t *testing.T) {
	testenv.RequireRoot(t)
	opts := DefaultOptions()
	opts.UnixDgramWrite = true // the cases include connected write()
	tr := startTracing(t, opts)
	requireOn(t, tr, "connect")
	requireOn(t, tr, "unix dgram")
	// A receiver's limit, read when it is created: sends succeed until
	// it holds one more than this (unix_recvq_full), then fail.
	qlen, err := os.ReadFile("/proc/sys/net/unix/max_dgram_qlen")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	const sends = 300
	cases := []struct {
		name, addr, call string
		// receiver: "full" binds one that never reads; "closed" binds
		// one and closes it (the socket file stays); "" none at all.
		receiver string
		want     string // the errno the client must see
	}{
		{"sendto, queue full", filepath.Join(dir, "sendto.sock"), "sendto", "full", "EAGAIN"},
		{"sendto, queue full (abstract)", fmt.Sprintf("@ctr-dgram-%d", time.Now().UnixNano()), "sendto", "full", "EAGAIN"},
		{"sendmsg, queue full", filepath.Join(dir, "sendmsg.sock"), "sendmsg", "full", "EAGAIN"},
		{"sendmmsg, queue full", filepath.Join(dir, "sendmmsg.sock"), "sendmmsg", "full", "EAGAIN"},
		{"connected send, queue full", filepath.Join(dir, "send.sock"), "send", "full", "EAGAIN"},
		{"connected write, queue full", filepath.Join(dir, "write.sock"), "write", "full", "EAGAIN"},
		{"receiver closed", filepath.Join(dir, "closed.sock"), "sendto", "closed", "ECONNREFUSED"},
		{"no such path", filepath.Join(dir, "missing.sock"), "sendto", "", "ENOENT"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			switch tc.receiver {
			case "full":
				testenv.BindUnixDgram(t, tc.addr)
			case "closed":
				testenv.BindUnixDgram(t, tc.addr)()
			}
			res := testenv.RunDgramSends(t, "ctr-dgram-cli", testenv.DgramPlan{Addr: tc.addr, Call: tc.call, Count: sends})
			want := failuresSeen(res)
			if res.Calls != sends || want[tc.want] == 0 || len(want) != 1 {
				t.Fatalf("client saw %v in %d calls; the scenario expects %s", res.Errnos, res.Calls, tc.want)
			}
			if tc.receiver == "full" && fmt.Sprint(res.Errnos["OK"]-1) != strings.TrimSpace(string(qlen)) {
				t.Errorf("client saw %v: %d sends before the queue was full, net.unix.max_dgram_qlen is %s", res.Errnos, res.Errnos["OK"], qlen)
			}
			got, evs := tr.col.dgramFailuresOf(res.PID, want[tc.want])
			if len(got) != 1 || !sameCounts(got[tc.addr], want) {
				t.Errorf("tracer counted %v; client saw %v sending to %s", got, want, tc.addr)
			}
			for i := range evs {
				c := &evs[i]
				if string(c.Owner.CommBytes()) != "ctr-dgram-cli" || c.SockType != events.SockDgram || c.Family != events.FamilyUnix ||
					c.NetNS == 0 || c.Owner.StartNs == 0 || c.PeerAddr != (tc.call == "send" || tc.call == "write") ||
					!c.NonBlocking || c.AddrFault {
					t.Errorf("event %d: %+v", i, c)
				}
			}
			checkDgramStats(t, tr, res, tc.addr, want)
		})
	}
	c, err := tr.probe.ConnectCounters()
	if err != nil {
		t.Fatal(err)
	}
	if c.DgramFull != 0 || c.DgramFails == 0 {
		t.Errorf("kernel counters: %+v", c)
	}
	if err := tr.stop(); err != nil {
		t.Fatal(err)
	}
}

// checkDgramStats: the aggregate shows the sender under the path's
// dgram_send_failures with exactly the failures it saw, and EAGAIN makes a
// unix_dgram_queue_full finding naming the path and the sender.
func checkDgramStats(t *testing.T, tr *tracing, res testenv.ConnectResult, addr string, want map[string]int) {
	t.Helper()
	s := tr.col.connectStats()
	snap := s.Snapshot()
	path := unixPathOf(t, snap, addr)
	if len(path.DgramSendFailures) != 1 || path.SockType != "dgram" {
		t.Fatalf("unix %s: type %s, senders %+v", addr, path.SockType, path.DgramSendFailures)
	}
	snd := path.DgramSendFailures[0]
	if snd.PID != uint32(res.PID) || snd.Comm != "ctr-dgram-cli" || len(snd.Counts) != len(want) {
		t.Fatalf("unix %s: sender %+v, want pid %d with %v", addr, snd, res.PID, want)
	}
	for k, v := range want {
		if snd.Counts[k] != uint64(v) {
			t.Errorf("unix %s: sender counts %v, client saw %v", addr, snd.Counts, want)
		}
	}
	var f *aggregate.Finding
	for _, x := range s.ConnectFindings(time.Now(), aggregate.DefaultConnectRules(), nil) {
		if x.Kind == "unix_dgram_queue_full" && x.Path == addr {
			f = &x
		}
	}
	if want["EAGAIN"] == 0 {
		if f != nil {
			t.Errorf("unix_dgram_queue_full without EAGAIN: %+v", f)
		}
		return
	}
	if f == nil || f.PID != uint32(res.PID) || f.Evidence["eagain"] != float64(want["EAGAIN"]) || f.Remedy == "" {
		t.Errorf("unix_dgram_queue_full for %s: %+v", addr, f)
	}
}

// Without UnixDgramWrite (the default), write(2) is not hooked: a connected sender's
// failing write() calls go unseen while its send() calls are counted.
func TestUnixDgramNoWrite(t *testing.T) {
	testenv.RequireRoot(t)
	tr := startTracing(t, DefaultOptions())
	requireOn(t, tr, "connect")
	requireOn(t, tr, "write off")
	dir := t.TempDir()
	// Both from one process, write first: once its send() failures are
	// reported, any write() failure would have been too.
	wpath, spath := filepath.Join(dir, "write.sock"), filepath.Join(dir, "send.sock")
	testenv.BindUnixDgram(t, wpath)
	testenv.BindUnixDgram(t, spath)
	wres := testenv.RunDgramSends(t, "ctr-dgram-cli", testenv.DgramPlan{Addr: wpath, Call: "write", Count: 50})
	sres := testenv.RunDgramSends(t, "ctr-dgram-cli", testenv.DgramPlan{Addr: spath, Call: "send", Count: 50})
	if wres.Errnos["EAGAIN"] == 0 || sres.Errnos["EAGAIN"] == 0 {
		t.Fatalf("clients saw %v and %v", wres.Errnos, sres.Errnos)
	}
	got, _ := tr.col.dgramFailuresOf(sres.PID, sres.Errnos["EAGAIN"])
	if !sameCounts(got[spath], failuresSeen(sres)) {
		t.Errorf("send: tracer counted %v, client saw %v", got[spath], sres.Errnos)
	}
	if got, _ := tr.col.dgramFailuresOf(wres.PID, 0); len(got) != 0 {
		t.Errorf("write: tracer counted %v with write(2) unhooked", got)
	}
}
