package report

import (
	"github.com/conntracer/conntracer/internal/aggregate"

	"context"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
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
	tot := rep.Totals()
	if tot.Closed != 900 || tot.Opened != 900 || tot.Drops != 129 || tot.FailedConnects != 129 || len(rep.Timeline) != 3 {
		t.Fatalf("totals %+v, %d minutes", tot, len(rep.Timeline))
	}
	for _, m := range rep.Timeline {
		if m.Closed != 300 {
			t.Fatalf("minute %v: %d closed, want 300", m.Start, m.Closed)
		}
	}
	// --since/--until cut the replay.
	since := rep.From.Add(time.Minute)
	part, err := Replay([]string{rep.Files[0].Path}, Options{Since: since, Until: since.Add(time.Minute - time.Nanosecond), Thresholds: aggregate.DefaultThresholds()})
	if err != nil {
		t.Fatal(err)
	}
	if part.Totals().Closed != 300 || len(part.Timeline) != 1 {
		t.Fatalf("one minute: %+v", part.Totals())
	}
}

// TestHTMLChartsDrawOffline renders the report in headless Chromium with
// networking off and checks that every chart drew a canvas.
func TestHTMLChartsDrawOffline(t *testing.T) {
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		t.Skip("chromium not installed (apt-get install chromium, or make test-deps): the HTML report is not rendered")
	}
	rep, err := Replay([]string{writeRecording(t)}, Options{Thresholds: aggregate.DefaultThresholds()})
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
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, chromium, "--headless", "--no-sandbox", "--disable-gpu",
		"--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
		"--user-data-dir="+filepath.Join(dir, "profile"), "--virtual-time-budget=5000", "--dump-dom", "file://"+page)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("chromium: %v", err)
	}
	dom := string(out)
	if !strings.Contains(dom, "charts drawn: 4") || strings.Count(dom, "<canvas") < 4 {
		i := strings.Index(dom, `id="status"`)
		t.Fatalf("charts did not draw: %d canvas elements; status: %.200s", strings.Count(dom, "<canvas"), dom[max(i, 0):])
	}
}
