package report

import (
	"github.com/conntracer/conntracer/internal/aggregate"

	"context"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/conntracer/conntracer/internal/events"
	"github.com/conntracer/conntracer/internal/record"
)

// writeRecording records three minutes of churn with drops and failed
// connects, and returns its path.
func writeRecording(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "rec.ctrec")
	w, err := record.Create(path, record.Options{Header: record.Header{Host: "test"}})
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 11, 22, 1, 0, 0, 0, time.UTC)
	var owner events.Process
	owner.PID, owner.Source = 4242, events.OwnerConnect
	owner.SetComm("proxy")
	for i := range 180 * 5 {
		now := t0.Add(time.Duration(i) * 200 * time.Millisecond)
		kns := uint64(1e12) + uint64(i)*2e8
		ev := events.Event{Kind: events.KindConnClosed, Conn: events.Conn{
			Cookie: uint64(i + 1), NetNS: 1, Family: events.FamilyIPv4,
			Local:  netip.AddrPortFrom(netip.MustParseAddr("10.0.0.1"), uint16(40000+i)),
			Remote: netip.MustParseAddrPort("10.0.0.2:80"), Role: events.RoleActive, Owner: owner,
			OpenNs: kns - 1e6, CloseNs: kns, EndState: events.EndTimeWait, ClosedBy: events.SideLocal,
			LastState: events.TCPFinWait2, SeenOpen: true,
		}}
		if err := w.Write(&ev, now); err != nil {
			t.Fatal(err)
		}
		if i%7 == 0 {
			d := events.Event{Kind: events.KindDrop, Drop: events.Drop{Reason: 2, ReasonName: "NO_SOCKET", NetNS: 1, TimeNs: kns}}
			w.Write(&d, now)
			c := events.Event{Kind: events.KindConnect, Connect: events.Connect{Owner: owner, NetNS: 1, Family: events.FamilyIPv4,
				Remote: netip.MustParseAddrPort("10.0.0.3:81"), Errno: events.ErrnoECONNREFUSED, Count: 1, StartNs: kns, EndNs: kns + 1000}}
			w.Write(&c, now)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestReplayTimeline(t *testing.T) {
	rep, err := Replay([]string{writeRecording(t)}, Options{Thresholds: aggregate.DefaultThresholds()})
	if err != nil {
		t.Fatal(err)
	}
	// Three minutes: a point a second (the step follows the length).
	tot := rep.Totals()
	if tot.Closed != 900 || tot.Opened != 900 || tot.Drops != 129 || tot.FailedConnects != 129 || len(rep.Timeline) != 180 || rep.Step != time.Second {
		t.Fatalf("totals %+v, %d steps of %v", tot, len(rep.Timeline), rep.Step)
	}
	for _, m := range rep.Timeline {
		if m.Closed != 5 {
			t.Fatalf("second %v: %d closed, want 5", m.Start, m.Closed)
		}
	}
	// --since/--until cut the replay.
	since := rep.From.Add(time.Minute)
	part, err := Replay([]string{rep.Files[0].Path}, Options{Since: since, Until: since.Add(time.Minute - time.Nanosecond), Thresholds: aggregate.DefaultThresholds()})
	if err != nil {
		t.Fatal(err)
	}
	if part.Totals().Closed != 300 || len(part.Timeline) != 60 {
		t.Fatalf("one minute: %+v in %d steps", part.Totals(), len(part.Timeline))
	}
}

// leakRecording records 15 s of a pool leak: the socket table, sampled
// every second, shows process "leaker" holding one more ESTABLISHED
// connection each second, while "churner" makes short connections that
// end in TIME_WAIT.
func leakRecording(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "leak.ctrec")
	w, err := record.Create(path, record.Options{Header: record.Header{Host: "test"}})
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 11, 22, 1, 0, 0, 0, time.UTC)
	var leaker, churner events.Process
	leaker.PID, leaker.Source = 5150, events.OwnerConnect
	leaker.SetComm("leaker")
	churner.PID, churner.Source = 6160, events.OwnerConnect
	churner.SetComm("churner")
	write := func(ev events.Event, now time.Time) {
		if err := w.Write(&ev, now); err != nil {
			t.Fatal(err)
		}
	}
	for sec := range 15 {
		now := t0.Add(time.Duration(sec) * time.Second)
		kns := uint64(1e12) + uint64(sec)*1e9
		for i := range 3 {
			c := uint64(100000 + sec*3 + i)
			write(events.Event{Kind: events.KindConnClosed, Conn: events.Conn{
				Cookie: c, NetNS: 1, Family: events.FamilyIPv4,
				Local:  netip.AddrPortFrom(netip.MustParseAddr("10.0.0.1"), uint16(50000+c%10000)),
				Remote: netip.MustParseAddrPort("10.0.0.2:80"), Role: events.RoleActive, Owner: churner,
				OpenNs: kns - 1e6, CloseNs: kns, EndState: events.EndTimeWait, ClosedBy: events.SideLocal,
				LastState: events.TCPFinWait2, SeenOpen: true,
			}}, now.Add(time.Duration(i)*time.Millisecond))
		}
		for i := range sec + 1 {
			write(events.Event{Kind: events.KindSockOpen, Conn: events.Conn{
				Cookie: uint64(i + 1), NetNS: 1, Family: events.FamilyIPv4,
				Local:  netip.AddrPortFrom(netip.MustParseAddr("10.0.0.1"), uint16(40000+i)),
				Remote: netip.MustParseAddrPort("10.0.0.3:6379"), Role: events.RoleActive, Owner: leaker,
				OpenNs: uint64(1e12) + uint64(i)*1e9, LastState: events.TCPEstablished, SeenOpen: true,
			}, Sample: events.Sample{TimeNs: kns + 5e8}}, now.Add(500*time.Millisecond))
		}
		write(events.Event{Kind: events.KindSockSampleDone, Sample: events.Sample{TimeNs: kns + 5e8}}, now.Add(500*time.Millisecond))
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestShortRecordingHasAPointPerSecond: a 15 s recording is 15 points,
// not one, and the leaker's open connections grow along them.
func TestShortRecordingHasAPointPerSecond(t *testing.T) {
	rep, err := Replay([]string{leakRecording(t)}, Options{Thresholds: aggregate.DefaultThresholds()})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Step != time.Second || len(rep.Timeline) != 15 {
		t.Fatalf("%d points of %v, want 15 of 1s", len(rep.Timeline), rep.Step)
	}
	got := rep.OpenSeries(ProcessKey{PID: 5150, Comm: "leaker"})
	for i, v := range got {
		if v != uint32(i+1) {
			t.Fatalf("leaker's open connections %v, want 1, 2, ... 15", got)
		}
	}
	// TIME_WAIT is not open: the churner's closed connections are not in
	// its series.
	if c := rep.OpenSeries(ProcessKey{PID: 6160, Comm: "churner"}); slices.Max(c) != 0 {
		t.Fatalf("churner's TIME_WAIT counted as open: %v", c)
	}
	// The JSON has one schema: snake_case, null for an unknown time.
	var b strings.Builder
	if err := rep.WriteJSON(&b); err != nil {
		t.Fatal(err)
	}
	js := b.String()
	if m := regexp.MustCompile(`"[A-Z][a-z][A-Za-z]*":`).FindString(js); m != "" {
		t.Fatalf("report JSON has a Go field name %s", m)
	}
	if strings.Contains(js, "0001-01-01") || strings.Contains(js, "_ns\"") || !strings.Contains(js, `"step_seconds": 1,`) {
		t.Fatalf("report JSON: zero time or no step_seconds: %.400s", js)
	}
	empty := &Report{Final: rep.Final}
	b.Reset()
	if err := empty.WriteJSON(&b); err != nil || !strings.Contains(b.String(), `"from": null`) {
		t.Fatalf("unknown start not null (%v): %.200s", err, b.String())
	}
}

// chromiumArgs are the flags of a headless Chromium that reaches no
// network and keeps no state.
func chromiumArgs(dir string) []string {
	return []string{"--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir=" + filepath.Join(dir, "profile"), "--window-size=1280,2400", "--virtual-time-budget=5000"}
}

// TestHTMLChartsDrawOffline renders the report of a pool leak in headless
// Chromium with networking off: every chart drew a canvas, the
// per-process chart has the leaker's growing series, the page does not
// scroll sideways, and no TIME_WAIT socket is called open. A screenshot
// is written to the test's artifact directory (go test -artifacts keeps
// it) and its path logged.
func TestHTMLChartsDrawOffline(t *testing.T) {
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		t.Skip("chromium not installed (apt-get install chromium, or make test-deps): the HTML report is not rendered")
	}
	rep, err := Replay([]string{leakRecording(t)}, Options{Thresholds: aggregate.DefaultThresholds()})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	page := filepath.Join(dir, "report.html")
	f, err := os.Create(page)
	if err != nil {
		t.Fatal(err)
	}
	if err := rep.WriteHTML(f); err != nil {
		t.Fatal(err)
	}
	f.Close()
	b, _ := os.ReadFile(page)
	if regexp.MustCompile(`<script[^>]+src=|<link[^>]+href="?http`).Match(b) {
		t.Fatal("the page loads something from elsewhere: it must be self-contained")
	}
	if strings.Contains(string(b), "open now") {
		t.Fatal(`the page still says "open now"`)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	shot := filepath.Join(t.ArtifactDir(), "report.png")
	if out, err := exec.CommandContext(ctx, chromium, append(chromiumArgs(dir), "--screenshot="+shot, "file://"+page)...).CombinedOutput(); err != nil {
		t.Fatalf("chromium --screenshot: %v\n%s", err, out)
	}
	if st, err := os.Stat(shot); err != nil || st.Size() < 10000 {
		t.Fatalf("screenshot %s: %v", shot, err)
	}
	t.Logf("screenshot: %s", shot)
	out, err := exec.CommandContext(ctx, chromium, append(chromiumArgs(dir), "--dump-dom", "file://"+page)...).Output()
	if err != nil {
		t.Fatalf("chromium: %v (screenshot: %s)", err, shot)
	}
	dom := string(out)
	i := strings.Index(dom, `id="status"`)
	status := dom[max(i, 0):min(len(dom), max(i, 0)+300)]
	m := regexp.MustCompile(`charts drawn: (\d+); process series: (\d+), points: (\d+), non-zero: (\d+); page width: (\d+) of (\d+)`).FindStringSubmatch(status)
	if m == nil {
		t.Fatalf("no chart status in the page (screenshot: %s): %s", shot, status)
	}
	n := func(i int) int { v, _ := strconv.Atoi(m[i]); return v }
	if n(1) != 5 || strings.Count(dom, "<canvas") < 5 {
		t.Errorf("%d charts drew, %d canvas elements, want 5 (screenshot: %s)", n(1), strings.Count(dom, "<canvas"), shot)
	}
	// The leaker, one point a second, non-zero at every one.
	if n(2) < 1 || n(3) < 15 || n(4) < 15 {
		t.Errorf("per-process chart: %d series, %d points, %d non-zero; want the leaker's 15 (screenshot: %s)", n(2), n(3), n(4), shot)
	}
	if !strings.Contains(dom, "5150 leaker") {
		t.Errorf("the per-process chart does not name the leaker (screenshot: %s)", shot)
	}
	if n(5) > n(6) {
		t.Errorf("the page scrolls sideways: %d px wide in a %d px window (screenshot: %s)", n(5), n(6), shot)
	}
	// The churner's connections are in TIME_WAIT, not open.
	if !regexp.MustCompile(`<td>6160</td><td>churner</td><td>45</td><td>45</td><td>0</td><td>45</td>`).MatchString(dom) {
		t.Errorf("the churner's row does not show 0 open and 45 in TIME_WAIT (screenshot: %s)", shot)
	}
}

// TestLongRecordingCoarsens: two hours give a point a minute, no more
// than 300 points, strictly in order, and the counts all there.
func TestLongRecordingCoarsens(t *testing.T) {
	path := filepath.Join(t.TempDir(), "long.ctrec")
	w, err := record.Create(path, record.Options{Header: record.Header{Host: "test"}})
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 11, 22, 1, 0, 0, 0, time.UTC)
	var owner events.Process
	owner.PID, owner.Source = 7, events.OwnerConnect
	owner.SetComm("slow")
	for i := range 720 {
		kns := uint64(1e12) + uint64(i)*1e10
		ev := events.Event{Kind: events.KindConnClosed, Conn: events.Conn{Cookie: uint64(i + 1), NetNS: 1, Family: events.FamilyIPv4,
			Local: netip.MustParseAddrPort("10.0.0.1:40000"), Remote: netip.MustParseAddrPort("10.0.0.2:80"), Role: events.RoleActive,
			Owner: owner, OpenNs: kns - 1e6, CloseNs: kns, EndState: events.EndTimeWait, ClosedBy: events.SideLocal, SeenOpen: true}}
		if err := w.Write(&ev, t0.Add(time.Duration(i)*10*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	rep, err := Replay([]string{path}, Options{Thresholds: aggregate.DefaultThresholds()})
	if err != nil {
		t.Fatal(err)
	}
	var closed uint64
	for i, s := range rep.Timeline {
		closed += s.Closed
		if i > 0 && !s.Start.After(rep.Timeline[i-1].Start) {
			t.Fatalf("step %d at %v after %v", i, s.Start, rep.Timeline[i-1].Start)
		}
	}
	if rep.Step != time.Minute || len(rep.Timeline) != 120 || closed != 720 {
		t.Fatalf("%d points of %v with %d closed, want 120 of 1m0s with 720", len(rep.Timeline), rep.Step, closed)
	}
}
