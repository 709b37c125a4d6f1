package kernel

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/conntracer/conntracer/internal/events"
)

// ctMessage encodes a ctnetlink entry message as the kernel sends it
// (ctnetlink_fill_info): big-endian nested attributes after nfgenmsg.
func ctMessage(t *testing.T, msg uint16, flags netlink.HeaderFlags, src, dst netip.AddrPort, state uint8) netlink.Message {
	t.Helper()
	tuple := func(ae *netlink.AttributeEncoder, s, d netip.AddrPort) {
		ae.Nested(ctaTupleIP, func(ie *netlink.AttributeEncoder) error {
			if s.Addr().Is4() {
				ie.Bytes(ctaIPv4Src, s.Addr().AsSlice())
				ie.Bytes(ctaIPv4Dst, d.Addr().AsSlice())
			} else {
				ie.Bytes(ctaIPv6Src, s.Addr().AsSlice())
				ie.Bytes(ctaIPv6Dst, d.Addr().AsSlice())
			}
			return nil
		})
		ae.Nested(ctaTupleProto, func(pe *netlink.AttributeEncoder) error {
			pe.Uint8(ctaProtoNum, unix.IPPROTO_TCP)
			pe.Uint16(ctaProtoSrcPort, s.Port())
			pe.Uint16(ctaProtoDstPort, d.Port())
			return nil
		})
	}
	ae := netlink.NewAttributeEncoder()
	ae.ByteOrder = binary.BigEndian
	ae.Nested(ctaTupleOrig, func(n *netlink.AttributeEncoder) error { tuple(n, src, dst); return nil })
	ae.Nested(ctaTupleReply, func(n *netlink.AttributeEncoder) error { tuple(n, dst, src); return nil })
	ae.Nested(ctaProtoinfo, func(n *netlink.AttributeEncoder) error {
		n.Nested(ctaProtoinfoTCP, func(te *netlink.AttributeEncoder) error {
			te.Uint8(ctaProtoinfoTCPState, state)
			return nil
		})
		return nil
	})
	ae.Uint32(ctaTimeout, 431999)
	ae.Uint32(ctaID, 0xdeadbeef)
	b, err := ae.Encode()
	if err != nil {
		t.Fatal(err)
	}
	fam := byte(unix.AF_INET)
	if src.Addr().Is6() {
		fam = unix.AF_INET6
	}
	return netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_CTNETLINK<<8 | msg), Flags: flags},
		Data:   append([]byte{fam, unix.NFNETLINK_V0, 0, 0}, b...),
	}
}

func TestDecodeCtEntry(t *testing.T) {
	src4, dst4 := netip.MustParseAddrPort("10.0.0.1:40000"), netip.MustParseAddrPort("10.0.0.2:80")
	src6, dst6 := netip.MustParseAddrPort("[fd00::1]:40000"), netip.MustParseAddrPort("[fd00::2]:443")
	for _, tc := range []struct {
		name     string
		msg      uint16
		flags    netlink.HeaderFlags
		src, dst netip.AddrPort
		kind     events.Kind
		family   events.Family
	}{
		{"new", ipctnlMsgCtNew, netlink.Create | netlink.Excl, src4, dst4, events.KindConntrackNew, events.FamilyIPv4},
		{"update is not a new entry", ipctnlMsgCtNew, 0, src4, dst4, events.KindConntrackUpdate, events.FamilyIPv4},
		{"dump entry", ipctnlMsgCtNew, netlink.Multi, src6, dst6, events.KindConntrackNew, events.FamilyIPv6},
		{"destroy", ipctnlMsgCtDelete, 0, src6, dst6, events.KindConntrackDestroy, events.FamilyIPv6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := ctMessage(t, tc.msg, tc.flags, tc.src, tc.dst, 3)
			var ev events.Event
			ok, err := decodeCtEntry(&m, 7, &ev)
			if err != nil || !ok {
				t.Fatalf("decode: %v %v", ok, err)
			}
			e := ev.ConntrackEntry
			want := events.ConntrackEntry{NetNS: 7, ID: 0xdeadbeef, Family: tc.family, Proto: unix.IPPROTO_TCP,
				OrigSrc: tc.src, OrigDst: tc.dst, ReplySrc: tc.dst, ReplyDst: tc.src, TCPState: 3, Timeout: 431999}
			if ev.Kind != tc.kind || e != want {
				t.Errorf("got %v %+v\nwant %v %+v", ev.Kind, e, tc.kind, want)
			}
		})
	}
	// Other subsystems and message types are not entries.
	m := ctMessage(t, ipctnlMsgCtGetStatsCPU, 0, src4, dst4, 3)
	var ev events.Event
	if ok, _ := decodeCtEntry(&m, 7, &ev); ok {
		t.Error("a stats reply decoded as an entry")
	}
}

// BenchmarkDecodeCtEntry: decoding one ctnetlink event into a reused Event.
func BenchmarkDecodeCtEntry(b *testing.B) {
	t := &testing.T{}
	m := ctMessage(t, ipctnlMsgCtNew, netlink.Create, netip.MustParseAddrPort("10.0.0.1:40000"), netip.MustParseAddrPort("10.0.0.2:80"), 3)
	var ev events.Event
	b.ReportAllocs()
	for b.Loop() {
		if ok, err := decodeCtEntry(&m, 7, &ev); !ok || err != nil {
			b.Fatal(ok, err)
		}
	}
}
