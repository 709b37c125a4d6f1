package export

import (
	"bytes"
	"encoding/json"
	"flag"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/conntracer/conntracer/internal/events"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// fixedClock puts boot time 0 at a fixed wall time, so output is stable.
func fixedClock(ns uint64) time.Time {
	return time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC).Add(time.Duration(ns))
}

func sampleEvents() []events.Event {
	mk := func(local, remote string, pid uint32, comm string, src events.OwnerSource, role events.Role,
		open, close, tx, rx uint64, end events.EndState, by events.Side, last events.TCPState, errno uint8) events.Event {
		ev := events.Event{Kind: events.KindConnClosed}
		c := &ev.Conn
		c.Local, c.Remote = netip.MustParseAddrPort(local), netip.MustParseAddrPort(remote)
		c.Family = events.FamilyIPv4
		if c.Local.Addr().Is6() {
			c.Family = events.FamilyIPv6
		}
		c.NetNS, c.Cookie = 4026531840, 12345
		c.Owner = events.Process{PID: pid, TID: pid, CgroupID: 77, Source: src}
		c.Owner.SetComm(comm)
		c.Role, c.OpenNs, c.CloseNs, c.TxBytes, c.RxBytes = role, open, close, tx, rx
		c.EndState, c.ClosedBy, c.LastState, c.Error = end, by, last, errno
		c.SeenOpen = open != 0
		return ev
	}
	return []events.Event{
		mk("10.0.0.1:43210", "10.0.0.2:80", 4242, "curl", events.OwnerConnect, events.RoleActive,
			1_000_000, 13_345_678, 77, 1500, events.EndTimeWait, events.SideLocal, events.TCPFinWait2, 0),
		mk("[2001:db8::1]:6379", "[2001:db8::2]:50000", 99, "redis-server", events.OwnerAccept, events.RolePassive,
			5_000, 5_000+3_600_000_000_000, 1<<40, 12, events.EndCloseWait, events.SideRemote, events.TCPLastAck, 0),
		mk("127.0.0.1:33000", "127.0.0.1:9", 7, "nc", events.OwnerConnect, events.RoleActive,
			2_000, 2_050, 0, 0, events.EndConnectFailed, events.SideNone, events.TCPSynSent, 111),
		mk("10.0.0.1:22", "10.0.0.7:51000", 0, "", events.OwnerUnknown, events.RoleUnknown,
			0, 9_000_000_000, 5, 6, events.EndReset, events.SideRemote, events.TCPEstablished, 104),
		mk("10.0.0.1:5000", "10.0.0.7:51001", 5, "evil\x1b[2J\"\\\xff", events.OwnerConnect, events.RoleActive,
			1, 500_000, 1, 1, events.EndClosed, events.SideLocal, events.TCPFinWait2, 0),
	}
}

func render(t *testing.T, f Format) []byte {
	var buf bytes.Buffer
	s := NewStream(&buf, f, fixedClock)
	evs := sampleEvents()
	for i := range evs {
		if err := s.Print(&evs[i]); err != nil {
			t.Fatal(err)
		}
	}
	existing := events.Event{Kind: events.KindConnExisting}
	if err := s.Print(&existing); err != nil {
		t.Fatal(err)
	}
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update once to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from golden file:\n--- got\n%s\n--- want\n%s", name, got, want)
	}
}

func TestTextGolden(t *testing.T) { golden(t, "stream.txt", render(t, FormatText)) }

func TestJSONGolden(t *testing.T) {
	out := render(t, FormatJSON)
	golden(t, "stream.jsonl", out)
	dec := json.NewDecoder(bytes.NewReader(out))
	n := 0
	for dec.More() {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			t.Fatalf("line %d is not JSON: %v", n, err)
		}
		for _, k := range []string{"pid", "comm", "local_addr", "local_port", "remote_addr", "remote_port",
			"role", "lifetime_seconds", "tx_bytes", "rx_bytes", "end_state"} {
			if _, ok := m[k]; !ok {
				t.Errorf("line %d lacks documented field %q", n, k)
			}
		}
		n++
	}
	if n != len(sampleEvents()) {
		t.Errorf("%d lines, want %d (existing-connection events are not printed)", n, len(sampleEvents()))
	}
}

func TestPrintDoesNotAllocate(t *testing.T) {
	evs := sampleEvents()
	for _, f := range []Format{FormatText, FormatJSON} {
		s := NewStream(io.Discard, f, fixedClock)
		allocs := testing.AllocsPerRun(1000, func() {
			for i := range evs {
				_ = s.Print(&evs[i])
			}
		})
		if allocs != 0 {
			t.Errorf("%s: %.1f allocations per batch, want 0", f, allocs)
		}
	}
}

func BenchmarkPrint(b *testing.B) {
	evs := sampleEvents()
	for _, f := range []Format{FormatText, FormatJSON} {
		b.Run(string(f), func(b *testing.B) {
			s := NewStream(io.Discard, f, fixedClock)
			b.ReportAllocs()
			for b.Loop() {
				_ = s.Print(&evs[0])
			}
		})
	}
}

func TestAppendSeconds(t *testing.T) {
	for ns, want := range map[uint64]string{
		0: "0", 1: "0.000000001", 12_345_678: "0.012345678", 1_500_000_000: "1.5",
		3_600_000_000_000: "3600", 999_999_999: "0.999999999",
	} {
		if got := string(appendSeconds(nil, ns)); got != want {
			t.Errorf("appendSeconds(%d) = %q, want %q", ns, got, want)
		}
	}
}
