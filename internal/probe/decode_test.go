package probe

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"

	"github.com/conntracer/conntracer/internal/events"
)

// encode serialises a record the way the kernel lays it out, through the
// generated type, so the tests exercise the real layout.
func encode(t testing.TB, r *tcplifeConnEvent) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := binary.Write(&buf, binary.LittleEndian, r); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestConnEventLayoutHasNoPadding(t *testing.T) {
	// conntracer.h promises fixed-width fields with no implicit padding;
	// binary.Write skips nothing, so sizes agree only if that holds.
	if got := binary.Size(tcplifeConnEvent{}); got != recordSize(uint8(tcplifeRecordKindRECORD_CONN_CLOSED)) || got != 136 {
		t.Fatalf("binary size %d, unsafe size %d, want 136 for both", got, recordSize(uint8(tcplifeRecordKindRECORD_CONN_CLOSED)))
	}
}

func ipv4(s string) (a [16]uint8) {
	b := netip.MustParseAddr(s).As4()
	copy(a[:], b[:])
	return a
}

func ipv6(s string) [16]uint8 { return netip.MustParseAddr(s).As16() }

func comm(s string) (c [16]uint8) {
	copy(c[:], s)
	return c
}

func TestDecodeConnClosed(t *testing.T) {
	base := tcplifeConnEvent{
		Kind: uint8(tcplifeRecordKindRECORD_CONN_CLOSED), Family: 2,
		Role: uint8(tcplifeConnRoleROLE_ACTIVE), EndState: uint8(tcplifeConnEndStateEND_TIME_WAIT),
		ClosedBy: uint8(tcplifeConnSideSIDE_LOCAL), LastState: 5,
		Flags:  uint8(tcplifeConnFlagsCONN_SEEN_OPEN | tcplifeConnFlagsCONN_OWNER_CONNECT | tcplifeConnFlagsCONN_ESTABLISHED),
		OpenNs: 1_000, CloseNs: 5_000, Cookie: 77, CgroupId: 9, ProcStartNs: 400,
		TxBytes: 1000, RxBytes: 300, Netns: 4026531840, Tgid: 42, Tid: 43,
		Sport: 43210, Dport: 80, Saddr: ipv4("10.0.0.1"), Daddr: ipv4("10.0.0.2"), Comm: comm("curl"),
	}
	tests := []struct {
		name   string
		modify func(*tcplifeConnEvent)
		check  func(*testing.T, *events.Conn)
	}{
		{
			name: "ipv4 active time_wait",
			check: func(t *testing.T, c *events.Conn) {
				wantConn(t, c, "10.0.0.1:43210", "10.0.0.2:80", events.FamilyIPv4)
				if c.Role != events.RoleActive || c.EndState != events.EndTimeWait || c.ClosedBy != events.SideLocal {
					t.Errorf("role %s end %s closed by %s", c.Role, c.EndState, c.ClosedBy)
				}
				if c.LastState != events.TCPFinWait2 || c.LifetimeNs() != 4000 || !c.SeenOpen {
					t.Errorf("last %s lifetime %d seen %v", c.LastState, c.LifetimeNs(), c.SeenOpen)
				}
				if c.Owner.PID != 42 || c.Owner.TID != 43 || string(c.Owner.CommBytes()) != "curl" ||
					c.Owner.Source != events.OwnerConnect || c.Owner.CgroupID != 9 || c.Owner.StartNs != 400 {
					t.Errorf("owner %+v", c.Owner)
				}
				if c.TxBytes != 1000 || c.RxBytes != 300 || c.Cookie != 77 || c.NetNS != 4026531840 {
					t.Errorf("tx %d rx %d cookie %d netns %d", c.TxBytes, c.RxBytes, c.Cookie, c.NetNS)
				}
			},
		},
		{
			name: "ipv6 passive accepted",
			modify: func(r *tcplifeConnEvent) {
				r.Family = 10
				r.Saddr, r.Daddr = ipv6("2001:db8::1"), ipv6("2001:db8::2")
				r.Role = uint8(tcplifeConnRoleROLE_PASSIVE)
				r.Flags = uint8(tcplifeConnFlagsCONN_SEEN_OPEN | tcplifeConnFlagsCONN_OWNER_ACCEPT)
			},
			check: func(t *testing.T, c *events.Conn) {
				wantConn(t, c, "[2001:db8::1]:43210", "[2001:db8::2]:80", events.FamilyIPv6)
				if c.Role != events.RolePassive || c.Owner.Source != events.OwnerAccept {
					t.Errorf("role %s owner %s", c.Role, c.Owner.Source)
				}
			},
		},
		{
			name: "ipv4-mapped ipv6 is reported as ipv4",
			modify: func(r *tcplifeConnEvent) {
				r.Family = 10
				r.Saddr, r.Daddr = ipv6("::ffff:192.0.2.1"), ipv6("::ffff:192.0.2.2")
			},
			check: func(t *testing.T, c *events.Conn) {
				wantConn(t, c, "192.0.2.1:43210", "192.0.2.2:80", events.FamilyIPv4)
			},
		},
		{
			name: "refused connect",
			modify: func(r *tcplifeConnEvent) {
				r.EndState = uint8(tcplifeConnEndStateEND_CONNECT_FAILED)
				r.ClosedBy = uint8(tcplifeConnSideSIDE_NONE)
				r.LastState, r.Error, r.TxBytes, r.RxBytes = 2, 111, 0, 0
			},
			check: func(t *testing.T, c *events.Conn) {
				if c.EndState != events.EndConnectFailed || events.ErrnoName(c.Error) != "ECONNREFUSED" ||
					c.LastState != events.TCPSynSent || c.ClosedBy != events.SideNone {
					t.Errorf("end %s error %s last %s by %s", c.EndState, events.ErrnoName(c.Error), c.LastState, c.ClosedBy)
				}
			},
		},
		{
			name: "unknown owner clears stale owner fields",
			modify: func(r *tcplifeConnEvent) {
				r.Flags = 0
				r.OpenNs = 0
				r.Role = uint8(tcplifeConnRoleROLE_UNKNOWN)
			},
			check: func(t *testing.T, c *events.Conn) {
				if c.Owner.Known() || c.Owner.PID != 0 || len(c.Owner.CommBytes()) != 0 {
					t.Errorf("owner %+v, want unknown and empty", c.Owner)
				}
				if c.SeenOpen || c.LifetimeNs() != 0 || c.Role != events.RoleUnknown {
					t.Errorf("seen %v lifetime %d role %s", c.SeenOpen, c.LifetimeNs(), c.Role)
				}
			},
		},
		{
			name: "listener stands in for an unaccepted connection",
			modify: func(r *tcplifeConnEvent) {
				r.Flags = uint8(tcplifeConnFlagsCONN_SEEN_OPEN | tcplifeConnFlagsCONN_OWNER_LISTENER)
			},
			check: func(t *testing.T, c *events.Conn) {
				if c.Owner.Source != events.OwnerListener || c.Owner.PID != 42 {
					t.Errorf("owner %+v", c.Owner)
				}
			},
		},
	}
	// One Event reused across cases, as the reader does: every field must
	// be overwritten.
	var ev events.Event
	ev.Conn.Owner.CgroupPath = "/stale"
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := base
			if tt.modify != nil {
				tt.modify(&r)
			}
			if err := Decode(encode(t, &r), &ev); err != nil {
				t.Fatal(err)
			}
			if ev.Kind != events.KindConnClosed || ev.Conn.Owner.CgroupPath != "" {
				t.Fatalf("kind %s cgroup path %q", ev.Kind, ev.Conn.Owner.CgroupPath)
			}
			tt.check(t, &ev.Conn)
		})
	}
}

func wantConn(t *testing.T, c *events.Conn, local, remote string, fam events.Family) {
	t.Helper()
	if c.Local.String() != local || c.Remote.String() != remote || c.Family != fam {
		t.Errorf("got %s -> %s (%s), want %s -> %s (%s)", c.Local, c.Remote, c.Family, local, remote, fam)
	}
}

func TestDecodeRejectsBadRecords(t *testing.T) {
	good := encode(t, &tcplifeConnEvent{Kind: uint8(tcplifeRecordKindRECORD_CONN_CLOSED), Family: 2})
	var ev events.Event
	for _, tt := range []struct {
		name string
		raw  []byte
		want error
	}{
		{"empty", nil, ErrShortRecord},
		{"truncated", good[:len(good)-1], ErrShortRecord},
		{"unknown kind", append([]byte{200}, good[1:]...), ErrUnknownRecord},
		{"zero kind", append([]byte{0}, good[1:]...), ErrUnknownRecord},
	} {
		if err := Decode(tt.raw, &ev); !errors.Is(err, tt.want) {
			t.Errorf("%s: got %v, want %v", tt.name, err, tt.want)
		}
	}
}

func FuzzDecode(f *testing.F) {
	f.Add(encode(f, &tcplifeConnEvent{Kind: uint8(tcplifeRecordKindRECORD_CONN_CLOSED), Family: 2}))
	f.Add(encode(f, &tcplifeConnEvent{Kind: uint8(tcplifeRecordKindRECORD_CONN_CLOSED), Family: 10, Saddr: ipv6("::ffff:1.2.3.4")}))
	f.Add([]byte{1, 2, 3})
	addConnectSeeds(f)
	f.Fuzz(func(t *testing.T, raw []byte) {
		var ev events.Event
		err := Decode(raw, &ev)
		if err == nil && len(raw) < recordSize(raw[0]) {
			t.Fatalf("accepted a %d-byte record of kind %d (layout: %d bytes)", len(raw), raw[0], recordSize(raw[0]))
		}
		if err == nil && recordSize(raw[0]) == 0 {
			t.Fatalf("accepted a record of unknown kind %d", raw[0])
		}
		if err == nil && ev.Kind == events.KindConnect {
			checkFuzzedConnect(t, raw, &ev.Connect)
			return
		}
		if err == nil && ev.Kind == events.KindConnClosed && (!ev.Conn.Local.Addr().IsValid() || !ev.Conn.Remote.Addr().IsValid()) {
			t.Fatalf("decoded invalid addresses: %+v", ev.Conn)
		}
	})
}

func BenchmarkDecode(b *testing.B) {
	raw := encode(b, &tcplifeConnEvent{
		Kind: uint8(tcplifeRecordKindRECORD_CONN_CLOSED), Family: 10,
		Flags: uint8(tcplifeConnFlagsCONN_OWNER_CONNECT), Saddr: ipv6("2001:db8::1"), Daddr: ipv6("2001:db8::2"),
		Comm: comm("nginx"),
	})
	var ev events.Event
	b.ReportAllocs()
	b.SetBytes(int64(len(raw)))
	for b.Loop() {
		if err := Decode(raw, &ev); err != nil {
			b.Fatal(err)
		}
	}
}
