package kernel

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/conntracer/conntracer/internal/events"
)

func TestParsePortRange(t *testing.T) {
	for _, tt := range []struct {
		in     string
		lo, hi uint16
		ok     bool
	}{
		{"32768\t60999\n", 32768, 60999, true},
		{"40000 40099", 40000, 40099, true},
		{"1024", 0, 0, false},
		{"5 4", 0, 0, false},
		{"a b", 0, 0, false},
		{"1 70000", 0, 0, false},
	} {
		lo, hi, err := parsePortRange(tt.in)
		if (err == nil) != tt.ok || lo != tt.lo || hi != tt.hi {
			t.Errorf("parsePortRange(%q) = %d, %d, %v", tt.in, lo, hi, err)
		}
	}
}

// diagMsg builds a struct inet_diag_msg as the kernel sends it.
func diagMsg(family, state uint8, src, dst netip.Addr, sport, dport uint16, expiresMs uint32) []byte {
	b := make([]byte, inetDiagMsgLen)
	b[0], b[1] = family, state
	binary.BigEndian.PutUint16(b[4:], sport)
	binary.BigEndian.PutUint16(b[6:], dport)
	if family == unix.AF_INET {
		s, d := src.As4(), dst.As4()
		copy(b[8:], s[:])
		copy(b[24:], d[:])
	} else {
		s, d := src.As16(), dst.As16()
		copy(b[8:], s[:])
		copy(b[24:], d[:])
	}
	binary.NativeEndian.PutUint32(b[44:], 0x1234)
	binary.NativeEndian.PutUint32(b[48:], 0x1)
	binary.NativeEndian.PutUint32(b[52:], expiresMs)
	return b
}

func TestTimeWaitEvent(t *testing.T) {
	parse := func(b []byte) (events.Event, bool) {
		var ev events.Event
		ok := timeWaitEvent(&ev, b, 7, 1000)
		return ev, ok
	}
	a4, b4 := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	ev, ok := parse(diagMsg(unix.AF_INET, uint8(events.TCPTimeWait), a4, b4, 40000, 80, 59_500))
	if !ok || ev.Kind != events.KindTimeWait || ev.Conn.NetNS != 7 || ev.Conn.Family != events.FamilyIPv4 ||
		ev.Conn.Local != netip.AddrPortFrom(a4, 40000) || ev.Conn.Remote != netip.AddrPortFrom(b4, 80) ||
		ev.Sample.TimeNs != 1000 || ev.Sample.ExpiresNs != 59_500_000_000 || ev.Conn.Cookie != 0x1_0000_1234 {
		t.Errorf("IPv4: %+v %v", ev, ok)
	}
	// An AF_INET6 socket talking IPv4 is reported as IPv4, like the
	// BPF side does.
	m4, n4 := netip.MustParseAddr("::ffff:10.0.0.1"), netip.MustParseAddr("::ffff:10.0.0.2")
	ev, ok = parse(diagMsg(unix.AF_INET6, uint8(events.TCPTimeWait), m4, n4, 40001, 80, 1))
	if !ok || ev.Conn.Family != events.FamilyIPv4 || ev.Conn.Local != netip.AddrPortFrom(a4, 40001) {
		t.Errorf("mapped: %+v %v", ev, ok)
	}
	a6, b6 := netip.MustParseAddr("fd00::1"), netip.MustParseAddr("fd00::2")
	ev, ok = parse(diagMsg(unix.AF_INET6, uint8(events.TCPTimeWait), a6, b6, 40002, 443, 1))
	if !ok || ev.Conn.Family != events.FamilyIPv6 || ev.Conn.Remote != netip.AddrPortFrom(b6, 443) {
		t.Errorf("IPv6: %+v %v", ev, ok)
	}
	// A timewait socket in its FIN_WAIT2 substate is not TIME_WAIT.
	if _, ok := parse(diagMsg(unix.AF_INET, uint8(events.TCPFinWait2), a4, b4, 1, 2, 1)); ok {
		t.Errorf("FIN_WAIT2 substate reported as TIME_WAIT")
	}
	if _, ok := parse(make([]byte, 10)); ok {
		t.Errorf("short message accepted")
	}
}
