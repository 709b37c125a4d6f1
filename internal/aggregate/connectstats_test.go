package aggregate

import (
	"github.com/conntracer/conntracer/internal/events"

	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func unixConnect(p events.Process, path string, errno uint8, n uint64) events.Event {
	ev := events.Event{Kind: events.KindConnect}
	c := &ev.Connect
	c.Owner, c.Family, c.SockType, c.Errno, c.Count, c.NetNS = p, events.FamilyUnix, events.SockStream, errno, n, 4026531840
	b := []byte(path)
	if strings.HasPrefix(path, "@") {
		b[0] = 0
	}
	c.Path.Set(b)
	return ev
}

func tcpConnect(p events.Process, tid uint32, dest string, errno uint8, start, end uint64) events.Event {
	ev := events.Event{Kind: events.KindConnect}
	c := &ev.Connect
	c.Owner, c.Family, c.SockType, c.Errno, c.Count = p, events.FamilyIPv4, events.SockStream, errno, 1
	c.Owner.TID = tid
	c.Remote = netip.MustParseAddrPort(dest)
	c.StartNs, c.EndNs = start, end
	return ev
}

func tcpClosed(p events.Process, tid uint32, dest string, end events.EndState, errno uint8, open, established uint64) events.Event {
	ev := events.Event{Kind: events.KindConnClosed}
	c := &ev.Conn
	c.Owner, c.Role, c.Family, c.EndState, c.Error = p, events.RoleActive, events.FamilyIPv4, end, errno
	c.Owner.TID = tid
	c.Remote = netip.MustParseAddrPort(dest)
	c.OpenNs, c.EstablishedNs = open, established
	return ev
}

func TestConnectStatsUnixBacklog(t *testing.T) {
	s := NewConnectStats()
	now := time.Unix(1000, 0)
	nginx, php := proc(10, "nginx"), proc(20, "php-fpm8.2")
	for _, ev := range []events.Event{
		unixConnect(nginx, "/run/php.sock", 0, 5),
		unixConnect(nginx, "/run/php.sock", events.ErrnoEAGAIN, 300),
		unixConnect(nginx, "/run/php.sock", events.ErrnoEAGAIN, 12),
		unixConnect(proc(11, "nginx"), "/run/php.sock", events.ErrnoEAGAIN, 1),
		unixConnect(nginx, "/run/missing.sock", events.ErrnoENOENT, 2),
		unixConnect(nginx, "@abstract", events.ErrnoEAGAIN, 3),
		{Kind: events.KindUnixListener, Connect: events.Connect{Owner: php, Family: events.FamilyUnix, Backlog: 511, Queue: 512, Somaxconn: 4096,
			Path: events.UnixPath{Bytes: [108]byte{'/', 'r', 'u', 'n', '/', 'p', 'h', 'p', '.', 's', 'o', 'c', 'k'}, Len: 13}}},
	} {
		s.Apply(&ev, now)
	}
	snap := s.Snapshot()
	if len(snap.Unix) != 3 {
		t.Fatalf("unix paths: %+v", snap.Unix)
	}
	var php0 UnixPathStats
	for _, u := range snap.Unix {
		if u.Path == "/run/php.sock" {
			php0 = u
		}
	}
	if php0.ListenerPID != 20 || php0.ListenerComm != "php-fpm8.2" || php0.Backlog != 511 || php0.Queue != 512 || php0.Somaxconn != 4096 {
		t.Errorf("listener: %+v", php0)
	}
	if len(php0.Callers) != 2 || php0.Callers[0].PID != 10 || php0.Callers[0].Counts["EAGAIN"] != 312 || php0.Callers[0].Counts["OK"] != 5 || php0.Callers[1].Counts["EAGAIN"] != 1 {
		t.Errorf("callers: %+v", php0.Callers)
	}
	var got []string
	for _, f := range snap.ConnectFailures {
		b, _ := json.Marshal(f.Counts)
		got = append(got, f.Destination+" "+string(b))
	}
	want := "/run/php.sock {\"EAGAIN\":312};@abstract {\"EAGAIN\":3};/run/missing.sock {\"ENOENT\":2};/run/php.sock {\"EAGAIN\":1}"
	if strings.Join(got, ";") != want {
		t.Errorf("failures:\n got %s\nwant %s", strings.Join(got, ";"), want)
	}

	fs := s.ConnectFindings(now, DefaultConnectRules(), nil)
	var overflow []Finding
	for _, f := range fs {
		if f.Kind == "unix_backlog_overflow" {
			overflow = append(overflow, f)
		}
	}
	if len(overflow) != 2 {
		t.Fatalf("want overflow findings for /run/php.sock and @abstract, got %+v", fs)
	}
	f := overflow[0] // sorted by path: "/" before "@"
	if f.Path != "/run/php.sock" || f.PID != 10 || f.Evidence["eagain"] != 313 || f.Evidence["backlog"] != 511 || f.Evidence["listener_pid"] != 20 ||
		!strings.Contains(f.Remedy, "listen.backlog") || !strings.Contains(f.Remedy, "somaxconn") {
		t.Errorf("finding: %+v", f)
	}
	// Out of the window: no finding.
	if fs := s.ConnectFindings(now.Add(time.Hour), DefaultConnectRules(), nil); len(fs) != 0 {
		t.Errorf("stale findings: %+v", fs)
	}
}

func TestConnectStatsCountsTCPFailuresOnce(t *testing.T) {
	s := NewConnectStats()
	now := time.Unix(1000, 0)
	cli := proc(30, "curl")
	for _, ev := range []events.Event{
		// Blocking connect refused: the close comes first, then the
		// syscall's record with the same errno, bracketing SYN_SENT.
		tcpClosed(cli, 31, "10.0.0.1:80", events.EndConnectFailed, events.ErrnoECONNREFUSED, 150, 0),
		tcpConnect(cli, 31, "10.0.0.1:80", events.ErrnoECONNREFUSED, 100, 200),
		// Non-blocking: EINPROGRESS (not a failure), the outcome later.
		tcpConnect(cli, 32, "10.0.0.1:80", events.ErrnoEINPROGRESS, 300, 310),
		tcpClosed(cli, 32, "10.0.0.1:80", events.EndConnectFailed, events.ErrnoECONNREFUSED, 305, 0),
		// Failures before SYN_SENT: only the record.
		tcpConnect(cli, 31, "10.0.0.1:80", events.ErrnoEADDRNOTAVAIL, 400, 410),
		tcpConnect(cli, 31, "10.0.0.1:80", events.ErrnoEADDRNOTAVAIL, 500, 510),
		// A later blocking failure on a thread whose earlier failure
		// was asynchronous: counted (times do not bracket).
		tcpConnect(cli, 32, "10.0.0.1:80", events.ErrnoECONNREFUSED, 600, 700),
		// Established connects: latency only.
		tcpClosed(cli, 33, "10.0.0.1:80", events.EndTimeWait, 0, 1000, 1000+50_000),
		tcpClosed(cli, 33, "10.0.0.1:80", events.EndTimeWait, 0, 1000, 1000+3_000_000),
	} {
		s.Apply(&ev, now)
	}
	snap := s.Snapshot()
	if len(snap.ConnectFailures) != 1 {
		t.Fatalf("failures: %+v", snap.ConnectFailures)
	}
	f := snap.ConnectFailures[0]
	if f.Counts["ECONNREFUSED"] != 3 || f.Counts["EADDRNOTAVAIL"] != 2 || f.Total != 5 || f.PID != 30 || f.Comm != "curl" || f.Destination != "10.0.0.1:80" {
		t.Errorf("failures: %+v", f)
	}
	if len(snap.ConnectLatency) != 1 {
		t.Fatalf("latency: %+v", snap.ConnectLatency)
	}
	l := snap.ConnectLatency[0]
	// 50 us falls in [32, 64) us (le 64 us), 3 ms in [2048, 4096) us.
	last := l.Buckets[len(l.Buckets)-1]
	if l.Count != 2 || l.SumSeconds != 0.00305 || last.LeSeconds != 0.004096 || last.Count != 2 || l.Buckets[6].LeSeconds != 0.000064 || l.Buckets[6].Count != 1 || l.Buckets[5].Count != 0 {
		t.Errorf("latency: %+v", l)
	}

	rules := DefaultConnectRules()
	rules.MinRefused = 3
	fs := s.ConnectFindings(now, rules, func(netns uint32) (events.PortInfo, bool) {
		return events.PortInfo{Low: 40000, High: 40003, InUse: map[netip.AddrPort]int{netip.MustParseAddrPort("10.0.0.1:80"): 4}}, true
	})
	if len(fs) != 2 || fs[0].Kind != "connect_refused" || fs[1].Kind != "port_exhaustion" {
		t.Fatalf("findings: %+v", fs)
	}
	pe := fs[1]
	if pe.Remote != "10.0.0.1:80" || pe.Evidence["ports_in_use"] != 4 || pe.Evidence["port_range_size"] != 4 || pe.Evidence["eaddrnotavail"] != 2 ||
		!strings.Contains(pe.Message, "range 40000-40003") {
		t.Errorf("port exhaustion: %+v", pe)
	}
	if fs[0].Evidence["failures"] != 3 || fs[0].Remote != "10.0.0.1:80" {
		t.Errorf("refused: %+v", fs[0])
	}
}

func TestConnectStatsBounded(t *testing.T) {
	s := NewConnectStats()
	s.MaxKeys = 2
	for i := range 5 {
		ev := tcpConnect(proc(uint32(i+1), "x"), 1, "10.0.0.1:80", events.ErrnoEADDRNOTAVAIL, 0, 1)
		s.Apply(&ev, time.Unix(0, 0))
	}
	if len(s.Snapshot().ConnectFailures) != 2 || s.Overflow != 3 {
		t.Errorf("tracked %d, overflow %d", len(s.Snapshot().ConnectFailures), s.Overflow)
	}
}

func TestUnixPathRendering(t *testing.T) {
	var p events.UnixPath
	p.Set([]byte("/run/a.sock\x00garbage"))
	if p.String() != "/run/a.sock" || p.Abstract() {
		t.Errorf("path %q", p.String())
	}
	p.Set([]byte("\x00name\x00x"))
	if p.String() != "@name\x00x" || !p.Abstract() {
		t.Errorf("abstract %q", p.String())
	}
}

// Apply on keys already seen allocates nothing: it runs once per event on
// the event loop.
func TestConnectStatsApplyDoesNotAllocate(t *testing.T) {
	s := NewConnectStats()
	now := time.Unix(0, 0)
	evs := []events.Event{
		unixConnect(proc(1, "nginx"), "/run/php.sock", events.ErrnoEAGAIN, 3),
		tcpConnect(proc(2, "curl"), 2, "10.0.0.1:80", events.ErrnoEADDRNOTAVAIL, 0, 1),
		tcpClosed(proc(2, "curl"), 2, "10.0.0.1:80", events.EndTimeWait, 0, 10, 20_000),
	}
	for i := range evs {
		s.Apply(&evs[i], now)
	}
	if n := testing.AllocsPerRun(1000, func() {
		for i := range evs {
			s.Apply(&evs[i], now)
		}
	}); n != 0 {
		t.Errorf("%.1f allocations per round", n)
	}
}

func unixDgramSend(p events.Process, path string, errno uint8, n uint64) events.Event {
	ev := unixConnect(p, path, errno, n)
	ev.Kind = events.KindUnixDgramSend
	ev.Connect.SockType = events.SockDgram
	return ev
}

// Failed datagram sends are listed per path and sender, apart from the
// path's connect callers, and are never counted as failed connects; EAGAIN
// makes a unix_dgram_queue_full finding, a vanished receiver does not.
func TestConnectStatsUnixDgram(t *testing.T) {
	s := NewConnectStats()
	now := time.Unix(1000, 0)
	app, cron := proc(30, "app"), proc(31, "cron")
	for _, ev := range []events.Event{
		unixDgramSend(app, "/dev/log", events.ErrnoEAGAIN, 700),
		unixDgramSend(app, "/dev/log", events.ErrnoEAGAIN, 100),
		unixDgramSend(cron, "/dev/log", events.ErrnoEAGAIN, 12),
		unixDgramSend(cron, "/dev/log", events.ErrnoECONNREFUSED, 1),
		unixDgramSend(app, "/run/gone.sock", events.ErrnoENOENT, 4),
	} {
		s.Apply(&ev, now)
	}
	snap := s.Snapshot()
	if len(snap.ConnectFailures) != 0 {
		t.Errorf("datagram sends counted as connect failures: %+v", snap.ConnectFailures)
	}
	if len(snap.Unix) != 2 || snap.Unix[0].Path != "/dev/log" || snap.Unix[0].SockType != "dgram" || len(snap.Unix[0].Callers) != 0 {
		t.Fatalf("unix: %+v", snap.Unix)
	}
	got := snap.Unix[0].DgramSendFailures
	if len(got) != 2 || got[0].PID != 30 || got[0].Counts["EAGAIN"] != 800 || len(got[0].Counts) != 1 ||
		got[1].PID != 31 || got[1].Counts["EAGAIN"] != 12 || got[1].Counts["ECONNREFUSED"] != 1 {
		t.Errorf("dgram_send_failures: %+v", got)
	}
	js, err := json.Marshal(snap.Unix[1])
	if err != nil || !strings.Contains(string(js), `"dgram_send_failures":[{"pid":30,"comm":"app","counts":{"ENOENT":4}}]`) {
		t.Errorf("JSON %s, %v", js, err)
	}
	fs := s.ConnectFindings(now, DefaultConnectRules(), nil)
	if len(fs) != 1 {
		t.Fatalf("findings: %+v", fs)
	}
	f := fs[0]
	if f.Kind != "unix_dgram_queue_full" || f.Path != "/dev/log" || f.PID != 30 || f.Comm != "app" ||
		f.Evidence["eagain"] != 812 || f.Evidence["senders"] != 2 || !strings.Contains(f.Remedy, "net.unix.max_dgram_qlen") {
		t.Errorf("finding: %+v", f)
	}
	if fs := s.ConnectFindings(now.Add(time.Hour), DefaultConnectRules(), nil); len(fs) != 0 {
		t.Errorf("stale finding: %+v", fs)
	}
}
