package export

import (
	"github.com/conntracer/conntracer/internal/aggregate"

	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/conntracer/conntracer/internal/events"
)

// aggregatorWith returns an aggregator holding n processes with three
// remotes each, two ESTABLISHED and one CLOSE_WAIT socket per remote, and
// one finding.
func aggregatorWith(n int) *aggregate.Aggregator {
	th := aggregate.DefaultThresholds()
	th.CloseWaitCount = 1
	a := aggregate.NewAggregator(th)
	now := time.Unix(1_700_000_000, 0)
	var ev events.Event
	c := &ev.Conn
	const round = 5_000_000_000_000
	for j := 0; j < n*3*3; j++ {
		pid := uint32(1000 + j/9)
		ev.Kind = events.KindSockOpen
		c.NetNS = 4026531840
		c.Family = events.FamilyIPv4
		c.Local = netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, 1}), uint16(32768+j%28000))
		c.Remote = netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 1, 0, byte(j / 3 % 3)}), 6379)
		c.Role = events.RoleActive
		c.Owner = events.Process{PID: pid, StartNs: uint64(pid) * 10_000_000, CgroupID: 42, Source: events.OwnerConnect}
		c.Owner.SetComm(fmt.Sprintf("worker-%d", pid))
		c.OpenNs = uint64(j)*1000 + 1
		c.SeenOpen = true
		c.LastState = events.TCPEstablished
		if j%3 == 2 {
			c.LastState = events.TCPCloseWait
		}
		if pid != 1000 && c.LastState == events.TCPCloseWait {
			c.LastState = events.TCPEstablished // one process only leaks CLOSE_WAIT
		}
		ev.Sample.TimeNs = round
		a.Apply(&ev, now)
	}
	a.Apply(&events.Event{Kind: events.KindSockSampleDone, Sample: events.Sample{TimeNs: round}}, now)
	return a
}

// TestDocumentFields checks the documented JSON names of
// `tracer top --once --output json`.
func TestDocumentFields(t *testing.T) {
	s := aggregatorWith(2).Snapshot()
	var buf bytes.Buffer
	if err := NewDocument(s, 5*time.Second, map[uint64]string{42: "/system.slice/x.service"}).WriteJSON(&buf); err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(buf.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	procs, _ := doc["processes"].([]any)
	if len(procs) != 2 {
		t.Fatalf("processes: %v", doc["processes"])
	}
	p := procs[0].(map[string]any)
	for _, k := range []string{"pid", "comm", "cgroup", "cgroup_id", "opened", "closed", "states", "time_wait", "remotes",
		"opens_per_second", "closes_per_second", "short_lived_share", "median_lifetime_seconds", "port_use", "oldest_seconds"} {
		if _, ok := p[k]; !ok {
			t.Errorf("process lacks %q: %v", k, p)
		}
	}
	if p["cgroup"] != "/system.slice/x.service" || p["pid"] != 1000.0 {
		t.Errorf("process %v", p)
	}
	states := p["states"].(map[string]any)
	if states["ESTABLISHED"] != 6.0 || states["CLOSE_WAIT"] != 3.0 {
		t.Errorf("states %v", states)
	}
	remotes := p["remotes"].([]any)
	r := remotes[0].(map[string]any)
	for _, k := range []string{"remote", "netns", "passive", "states", "ports_used", "port_range"} {
		if _, ok := r[k]; !ok {
			t.Errorf("remote lacks %q: %v", k, r)
		}
	}
	fs, _ := doc["findings"].([]any)
	if len(fs) != 3 {
		t.Fatalf("findings %v", doc["findings"])
	}
	f := fs[0].(map[string]any)
	for _, k := range []string{"kind", "pid", "comm", "remote", "evidence", "since", "message", "remedy"} {
		if _, ok := f[k]; !ok {
			t.Errorf("finding lacks %q: %v", k, f)
		}
	}
	if f["kind"] != "close_wait_leak" || f["pid"] != 1000.0 || f["remote"] != "10.1.0.0:6379" {
		t.Errorf("finding %v", f)
	}
	for _, k := range []string{"time", "time_wait", "ports", "thresholds"} {
		if _, ok := doc[k]; !ok {
			t.Errorf("document lacks %q", k)
		}
	}
	// The other concerns' sections are there even when empty, as lists.
	for _, k := range []string{"connect_failures", "unix", "connect_latency", "conntrack"} {
		if l, ok := doc[k].([]any); !ok || l == nil {
			t.Errorf("document's %q is %v, want a list", k, doc[k])
		}
	}
	drops, _ := doc["drops"].(map[string]any)
	for _, k := range []string{"by_reason", "listen_overflows"} {
		if l, ok := drops[k].([]any); !ok || l == nil {
			t.Errorf("document's drops.%s is %v, want a list", k, drops[k])
		}
	}
}

func TestRenderTextSortsAndFits(t *testing.T) {
	s := aggregatorWith(50).Snapshot()
	out := RenderText(s, ViewOptions{Sort: ColCloseWait, Width: 100, Height: 20})
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) > 20 {
		t.Errorf("%d lines for a 20-line terminal", len(lines))
	}
	for _, l := range lines {
		if len(l) > 100 {
			t.Errorf("line wider than 100: %q", l)
		}
	}
	if !strings.HasPrefix(lines[2], "1000 ") {
		t.Errorf("sorted by CLOSE_WAIT, the leaking process should come first:\n%s", out)
	}
	if !strings.Contains(out, "FINDINGS") || !strings.Contains(out, "close_wait_leak") || !strings.Contains(out, "q: quit") {
		t.Errorf("no findings panel or help line:\n%s", out)
	}
	// Process x remote rows, filtered.
	out = RenderText(s, ViewOptions{Sort: ColPID, Remotes: true, Filter: "10.1.0.2", Width: 200})
	n := 0
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "worker-") && strings.Contains(l, "10.1.0.2:6379") && !strings.Contains(l, "close_wait_leak") {
			n++
		}
	}
	if n != 50 {
		t.Errorf("%d rows for remote 10.1.0.2:6379, want 50:\n%s", n, out)
	}
}

// BenchmarkRedraw10kProcesses is the per-refresh cost of the terminal view
// with 10,000 processes: taking the snapshot (event loop) and rendering
// one screen from it (view). At one refresh a second, ns/op / 1e7 is the
// percentage of one core.
func BenchmarkRedraw10kProcesses(b *testing.B) {
	a := aggregatorWith(10_000)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		s := a.Snapshot()
		_ = RenderText(s, ViewOptions{Sort: ColOpens, Width: 160, Height: 50})
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/1e7, "%core@1Hz")
}

// BenchmarkRender10kProcesses is the view's part alone.
func BenchmarkRender10kProcesses(b *testing.B) {
	s := aggregatorWith(10_000).Snapshot()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		_ = RenderText(s, ViewOptions{Sort: ColOpens, Width: 160, Height: 50})
	}
}

// The panels of the other concerns show in the view, and findings of
// every kind in the findings panel, with the Unix path in the message.
func TestRenderShowsPanels(t *testing.T) {
	s := &aggregate.Snapshot{
		Conntrack: []aggregate.ConntrackNSSnapshot{{NetNS: 4026532001, Entries: 240, Max: 256, Fill: 240.0 / 256, ConntrackDrops: 288,
			ByState:      map[string]uint64{"ESTABLISHED": 10, "TIME_WAIT": 200},
			TopProcesses: []aggregate.ProcessCount{{PID: 42, Comm: "ctr-dropped", Entries: 200}, {PID: 43, Comm: "curl", Refused: 5}}, Lost: 2}},
		Drops: aggregate.DropSnapshot{ByReason: []aggregate.DropCount{
			{Reason: "NO_SOCKET", NetNS: 7, Count: 3},
			{Reason: "NETFILTER_DROP", NetNS: 4026532001, PID: 42, Comm: "ctr-dropped", Count: 9},
		}},
		ConnectFailures: []aggregate.ConnectFailures{{PID: 43, Comm: "curl", Destination: "127.0.0.1:9", Counts: map[string]uint64{"ECONNREFUSED": 20}}},
		Unix: []aggregate.UnixPathStats{{Path: "/run/php/fpm.sock", ListenerPID: 44, ListenerComm: "php-fpm", Backlog: 1, Queue: 2,
			Callers: []aggregate.UnixCaller{{PID: 45, Comm: "nginx", Counts: map[string]uint64{"OK": 2, "EAGAIN": 198}}}},
			{Path: "/dev/log", SockType: "dgram", DgramSendFailures: []aggregate.UnixCaller{
				{PID: 46, Comm: "app", Counts: map[string]uint64{"EAGAIN": 800}},
				{PID: 47, Comm: "cron", Counts: map[string]uint64{"EAGAIN": 12}},
			}}},
		Findings: []aggregate.Finding{
			{Kind: "unix_backlog_overflow", PID: 45, Comm: "nginx", Path: "/run/php/fpm.sock", Message: "connects to /run/php/fpm.sock fail"},
			{Kind: "unix_dgram_queue_full", PID: 46, Comm: "app", Path: "/dev/log", Message: "812 datagrams to /dev/log failed with EAGAIN"},
		},
	}
	out := RenderText(s, ViewOptions{Sort: ColOpens, Width: 200})
	for _, want := range []string{
		"CONNTRACK  netns 4026532001 240/256 (94%) drop 288 early 0 ins_fail 0; TIME_WAIT 200 ESTABLISHED 10; top 42/ctr-dropped 200; lost 2, resynced",
		"DROPS  NETFILTER_DROP 9 (netns 4026532001 42/ctr-dropped)  |  NO_SOCKET 3 (netns 7)",
		"CONNECT FAILED  43/curl -> 127.0.0.1:9 ECONNREFUSED 20",
		"UNIX  /dev/log dgram sends failed EAGAIN 812 (2 senders, most 46/app)  |  /run/php/fpm.sock queue 2/1 (44/php-fpm) failed 198",
		"unix_backlog_overflow 45 nginx  connects to /run/php/fpm.sock fail",
		"unix_dgram_queue_full 46 app  812 datagrams to /dev/log failed with EAGAIN",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("view lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(RenderText(&aggregate.Snapshot{}, ViewOptions{Sort: ColOpens}), "CONNTRACK") {
		t.Error("empty panels drawn")
	}
}

// TestColumnStep: the sort keys cycle through every column both ways.
func TestColumnStep(t *testing.T) {
	c := ColOpens
	for range columns {
		c = c.Step(1)
	}
	if c != ColOpens || ColOpens.Step(-1) != ColPID || ColPID.Step(1) != ColOpens || Column("bogus").Step(1) != ColOpens {
		t.Errorf("Step does not cycle: %s %s %s", ColOpens.Step(-1), ColPID.Step(1), Column("bogus").Step(1))
	}
}

// TestRenderTextFitsManyFindings: with more findings than the view lists,
// the title line stays, every line (the "... and N more" one included)
// fits the height, the sort marker reads as one, a Unix path without a
// sampled listener says so, and the findings view (the `f` key) lists
// every finding with its remedy.
func TestRenderTextFitsManyFindings(t *testing.T) {
	s := aggregatorWith(30).Snapshot()
	for i := range 30 {
		s.Findings = append(s.Findings, aggregate.Finding{Kind: "drops", PID: uint32(i), Message: "dropped", Remedy: "look"})
	}
	s.Unix = []aggregate.UnixPathStats{{Path: "/var/run/nscd/socket", Callers: []aggregate.UnixCaller{{PID: 9, Comm: "curl", Counts: map[string]uint64{"ENOENT": 2}}}}}
	for _, h := range []int{12, 20, 40} {
		out := RenderText(s, ViewOptions{Sort: ColOpens, Width: 120, Height: h})
		lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
		if len(lines) > h {
			t.Errorf("height %d: %d lines:\n%s", h, len(lines), out)
		}
		if !strings.HasPrefix(lines[0], "tracer top ") || !strings.Contains(lines[1], "*OPEN/s") || strings.Contains(lines[1], "OPEN/sv") {
			t.Errorf("height %d: title or header lost:\n%s", h, out)
		}
		if !strings.Contains(out, "more (f: all findings") || !strings.Contains(out, "q: quit") {
			t.Errorf("height %d: no \"more\" or help line:\n%s", h, out)
		}
	}
	out := RenderText(s, ViewOptions{Sort: ColOpens, Width: 200})
	if !strings.Contains(out, "UNIX  /var/run/nscd/socket no listener sampled failed 2") || strings.Contains(out, "(0/)") {
		t.Errorf("Unix path without listener:\n%s", out)
	}
	// A backlog overflow comes before a path nobody serves, however many
	// ENOENT that one has.
	s.Unix[0].Callers[0].Counts["ENOENT"] = 855
	s.Unix = append(s.Unix, aggregate.UnixPathStats{Path: "/run/php/fpm.sock", ListenerPID: 44, ListenerComm: "php-fpm", Backlog: 1, Queue: 2,
		Callers: []aggregate.UnixCaller{{PID: 45, Comm: "nginx", Counts: map[string]uint64{"EAGAIN": 12}}}})
	out = RenderText(s, ViewOptions{Sort: ColOpens, Width: 300})
	if !strings.Contains(out, "UNIX  /run/php/fpm.sock queue 2/1 (44/php-fpm) failed 12  |  /var/run/nscd/socket") {
		t.Errorf("UNIX panel: the backlog overflow should come first:\n%s", out)
	}
	out = RenderText(s, ViewOptions{Sort: ColOpens, Width: 200, Findings: true})
	if n := strings.Count(out, "remedy: look"); n != 30 || strings.Contains(out, "\n1000 ") || strings.Contains(out, "OPENED") {
		t.Errorf("findings view: %d remedies, want 30, and no table:\n%s", n, out)
	}
}
