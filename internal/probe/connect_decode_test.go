package probe

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"

	"github.com/conntracer/conntracer/internal/events"
)

func encodeConnect(t testing.TB, r *connectConnectEvent) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := binary.Write(&buf, binary.LittleEndian, r); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func sunPath(s string) (p [108]uint8, n uint16) {
	copy(p[:], s)
	return p, uint16(len(s))
}

func TestConnectEventLayoutHasNoPadding(t *testing.T) {
	if got := binary.Size(connectConnectEvent{}); got != recordSize(uint8(connectRecordKindRECORD_CONNECT)) || got != 208 {
		t.Fatalf("binary size %d, unsafe size %d, want 208 for both", got, recordSize(uint8(connectRecordKindRECORD_CONNECT)))
	}
	if got := binary.Size(connectUnixConnectKey{}); got != 136 {
		t.Fatalf("unix_connect_key: %d bytes, want 136", got)
	}
	if got := binary.Size(connectUnixConnectStats{}); got != 64 {
		t.Fatalf("unix_connect_stats: %d bytes, want 64", got)
	}
}

func TestDecodeConnect(t *testing.T) {
	kind := uint8(connectRecordKindRECORD_CONNECT)
	path, pathLen := sunPath("/run/php/php8.2-fpm.sock\x00")
	abs, absLen := sunPath("\x00ctl\x00x")
	for _, tt := range []struct {
		name string
		rec  connectConnectEvent
		dest string
		fam  events.Family
		errn uint8
	}{
		{"unix path, EAGAIN", connectConnectEvent{Kind: kind, Family: 1, Ret: -11, SockType: 1, Path: path, PathLen: pathLen,
			Flags: uint8(connectConnectFlagsCONNECT_NONBLOCK | connectConnectFlagsCONNECT_FD_SOCKET)},
			"/run/php/php8.2-fpm.sock", events.FamilyUnix, 11},
		{"abstract", connectConnectEvent{Kind: kind, Family: 1, Ret: -111, SockType: 5, Path: abs, PathLen: absLen}, "@ctl\x00x", events.FamilyUnix, 111},
		{"path length beyond the array", connectConnectEvent{Kind: kind, Family: 1, Ret: -2, Path: path, PathLen: 500}, "/run/php/php8.2-fpm.sock", events.FamilyUnix, 2},
		{"ipv4", connectConnectEvent{Kind: kind, Family: 2, Ret: -99, Daddr: ipv4("10.0.0.2"), Dport: 80}, "10.0.0.2:80", events.FamilyIPv4, 99},
		{"ipv4-mapped ipv6", connectConnectEvent{Kind: kind, Family: 10, Ret: -111, Daddr: ipv6("::ffff:10.0.0.3"), Dport: 443}, "10.0.0.3:443", events.FamilyIPv4, 111},
		{"ipv6", connectConnectEvent{Kind: kind, Family: 10, Ret: -101, Daddr: ipv6("2001:db8::2"), Dport: 443}, "[2001:db8::2]:443", events.FamilyIPv6, 101},
		{"success", connectConnectEvent{Kind: kind, Family: 1, Ret: 0, Path: path, PathLen: pathLen}, "/run/php/php8.2-fpm.sock", events.FamilyUnix, 0},
		{"other family", connectConnectEvent{Kind: kind, Family: 16, Ret: -97}, "family 16", 16, 97},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := tt.rec
			r.Tgid, r.Tid, r.Comm, r.StartNs, r.EndNs, r.Netns = 42, 43, comm("nginx"), 1000, 4000, 7
			ev := events.Event{Conn: events.Conn{TxBytes: 1}} // stale fields of a reused Event
			ev.Connect.Backlog = 9
			if err := Decode(encodeConnect(t, &r), &ev); err != nil {
				t.Fatal(err)
			}
			c := &ev.Connect
			if ev.Kind != events.KindConnect || c.Destination() != tt.dest || c.Family != tt.fam || c.Errno != tt.errn ||
				c.Count != 1 || c.LatencyNs() != 3000 || c.Owner.PID != 42 || c.Owner.TID != 43 || string(c.Owner.CommBytes()) != "nginx" ||
				c.Owner.Source != events.OwnerConnect || c.NetNS != 7 || c.Backlog != 0 {
				t.Errorf("decoded %+v (destination %q)", *c, c.Destination())
			}
		})
	}
	// Without the entry hook (the default) the call's start is 0 and the
	// record says so: no latency, rather than the whole uptime.
	r := connectConnectEvent{Kind: kind, Family: 2, Ret: -99, Daddr: ipv4("10.0.0.2"), Dport: 80, EndNs: 4000,
		Flags: uint8(connectConnectFlagsCONNECT_NO_LATENCY)}
	var ev events.Event
	ev.Connect.LatencySumNs = 5 // stale
	if err := Decode(encodeConnect(t, &r), &ev); err != nil {
		t.Fatal(err)
	}
	if c := &ev.Connect; !c.NoLatency || c.LatencyNs() != 0 || c.StartNs != 0 || c.EndNs != 4000 {
		t.Errorf("no-latency record decoded as %+v", *c)
	}
	raw := make([]byte, recordSize(uint8(connectRecordKindRECORD_CONNECT))-1)
	raw[0] = kind
	if err := Decode(raw, &events.Event{}); !errors.Is(err, ErrShortRecord) {
		t.Errorf("short connect record: %v, want ErrShortRecord", err)
	}
}

func TestDecodeConnectDoesNotAllocate(t *testing.T) {
	path, n := sunPath("/run/php.sock")
	raw := encodeConnect(t, &connectConnectEvent{Kind: uint8(connectRecordKindRECORD_CONNECT), Family: 1, Ret: -11, Path: path, PathLen: n})
	var ev events.Event
	if a := testing.AllocsPerRun(1000, func() { _ = Decode(raw, &ev) }); a != 0 {
		t.Errorf("%.1f allocations per decode", a)
	}
}

func addConnectSeeds(f *testing.F) {
	path, n := sunPath("/run/a.sock")
	f.Add(encodeConnect(f, &connectConnectEvent{Kind: uint8(connectRecordKindRECORD_CONNECT), Family: 1, Ret: -11, Path: path, PathLen: n}))
	f.Add(encodeConnect(f, &connectConnectEvent{Kind: uint8(connectRecordKindRECORD_CONNECT), Family: 10, Ret: -111, Daddr: ipv6("::1"), Dport: 1}))
}

// checkFuzzedConnect: a decoded connect record came from a full-size
// record and has a destination consistent with its family.
func checkFuzzedConnect(t *testing.T, raw []byte, c *events.Connect) {
	if len(raw) < recordSize(uint8(connectRecordKindRECORD_CONNECT)) {
		t.Fatalf("accepted a %d-byte connect record", len(raw))
	}
	switch c.Family {
	case events.FamilyIPv4, events.FamilyIPv6:
		if !c.Remote.Addr().IsValid() || c.Path.Len != 0 {
			t.Fatalf("inet connect with remote %v path %q", c.Remote, c.Path.String())
		}
	case events.FamilyUnix:
		if c.Remote != (netip.AddrPort{}) || int(c.Path.Len) > events.UnixPathMax {
			t.Fatalf("unix connect with remote %v path length %d", c.Remote, c.Path.Len)
		}
	}
	if c.Count != 1 {
		t.Fatalf("count %d", c.Count)
	}
}
