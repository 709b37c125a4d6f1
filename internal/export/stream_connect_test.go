package export

import (
	"bytes"
	"encoding/json"
	"io"
	"net/netip"
	"strings"
	"testing"

	"github.com/conntracer/conntracer/internal/events"
)

func connectEvents() []events.Event {
	mk := func(pid uint32, comm string, family events.Family, dest string, errno uint8, count uint64) events.Event {
		ev := events.Event{Kind: events.KindConnect}
		c := &ev.Connect
		c.Owner = events.Process{PID: pid, TID: pid + 1, CgroupID: 77, Source: events.OwnerConnect}
		c.Owner.SetComm(comm)
		c.NetNS, c.Family, c.SockType, c.Errno, c.Count = 4026531840, family, events.SockStream, errno, count
		c.StartNs, c.EndNs, c.LatencySumNs, c.NonBlocking = 1_000, 2_000_000, 3_000*count, true
		if family == events.FamilyUnix {
			b := []byte(dest)
			if strings.HasPrefix(dest, "@") {
				b[0] = 0
			}
			c.Path.Set(b)
		} else {
			c.Remote = netip.MustParseAddrPort(dest)
		}
		return ev
	}
	return []events.Event{
		mk(10, "nginx", events.FamilyUnix, "/run/php/php8.2-fpm.sock", events.ErrnoEAGAIN, 312),
		mk(11, "nginx", events.FamilyUnix, "@ctl\"\x01", events.ErrnoECONNREFUSED, 1),
		mk(12, "curl", events.FamilyIPv4, "10.0.0.2:80", events.ErrnoEADDRNOTAVAIL, 1),
		mk(13, "curl", events.FamilyIPv6, "[2001:db8::2]:443", 101, 1),
		mk(14, "ok", events.FamilyUnix, "/run/ok.sock", 0, 5), // success: not printed
	}
}

func TestStreamConnectFailuresJSON(t *testing.T) {
	var buf bytes.Buffer
	s := NewStream(&buf, FormatJSON, fixedClock)
	evs := connectEvents()
	for i := range evs {
		if err := s.Print(&evs[i]); err != nil {
			t.Fatal(err)
		}
	}
	s.Flush()
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 4 {
		t.Fatalf("%d lines, want 4 (successes are not printed):\n%s", len(lines), buf.String())
	}
	want := []struct {
		dest, errno string
		count       float64
	}{
		{"/run/php/php8.2-fpm.sock", "EAGAIN", 312}, {"@ctl\"\x01", "ECONNREFUSED", 1},
		{"10.0.0.2:80", "EADDRNOTAVAIL", 1}, {"[2001:db8::2]:443", "ENETUNREACH", 1},
	}
	for i, line := range lines {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("line %d is not JSON: %v\n%s", i, err, line)
		}
		if m["type"] != "connect_failed" || m["destination"] != want[i].dest || m["errno"] != want[i].errno || m["count"] != want[i].count ||
			m["latency_seconds"] != 0.000003 || m["nonblocking"] != true || m["pid"] == nil || m["comm"] == nil {
			t.Errorf("line %d: %s", i, line)
		}
	}
}

func TestStreamConnectFailuresText(t *testing.T) {
	var buf bytes.Buffer
	s := NewStream(&buf, FormatText, fixedClock)
	evs := connectEvents()
	for i := range evs {
		s.Print(&evs[i])
	}
	s.Flush()
	out := buf.String()
	for _, want := range []string{"/run/php/php8.2-fpm.sock", "connect_failed (EAGAIN) x312", "@ctl\"?", "connect_failed (EADDRNOTAVAIL)\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("text output lacks %q:\n%s", want, out)
		}
	}
}

func TestStreamConnectDoesNotAllocate(t *testing.T) {
	for _, f := range []Format{FormatJSON, FormatText} {
		s := NewStream(io.Discard, f, fixedClock)
		evs := connectEvents()
		for i := range evs { // warm the buffers
			s.Print(&evs[i])
		}
		if n := testing.AllocsPerRun(100, func() {
			for i := range evs {
				s.Print(&evs[i])
			}
		}); n != 0 {
			t.Errorf("%s: %.1f allocations per round, want 0", f, n)
		}
	}
}
