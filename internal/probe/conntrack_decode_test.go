package probe

import (
	"errors"
	"net/netip"
	"testing"
	"unsafe"

	"github.com/conntracer/conntracer/internal/events"
)

// encodeCt serialises a ct_entry_event the way the kernel lays it out.
func encodeCt(r *conntrackCtEntryEvent) []byte {
	return append([]byte(nil), unsafe.Slice((*byte)(unsafe.Pointer(r)), unsafe.Sizeof(*r))...)
}

func TestCtEntryEventLayoutHasNoPadding(t *testing.T) {
	var r conntrackCtEntryEvent
	sum := unsafe.Sizeof(r.Kind) + unsafe.Sizeof(r.Family) + unsafe.Sizeof(r.Proto) + unsafe.Sizeof(r.TcpState) +
		unsafe.Sizeof(r.Netns) + unsafe.Sizeof(r.TimeNs) + 4*unsafe.Sizeof(r.OrigSport) + 4*unsafe.Sizeof(r.OrigSaddr)
	if sum != unsafe.Sizeof(r) {
		t.Fatalf("ct_entry_event: fields %d bytes, struct %d: implicit padding", sum, unsafe.Sizeof(r))
	}
}

func TestDecodeCtEntry(t *testing.T) {
	nat := conntrackCtEntryEvent{ // a SNATed IPv4 flow: the reply is not the original reversed
		Family: 2, Proto: 6, TcpState: 1, Netns: 4026531840, TimeNs: 123,
		OrigSport: 40000, OrigDport: 80, ReplySport: 80, ReplyDport: 61000,
		OrigSaddr: ipv4("10.0.0.2"), OrigDaddr: ipv4("192.0.2.1"), ReplySaddr: ipv4("192.0.2.1"), ReplyDaddr: ipv4("198.51.100.7"),
	}
	v6 := conntrackCtEntryEvent{
		Family: 10, Proto: 17, Netns: 7, OrigSport: 5353, OrigDport: 53, ReplySport: 53, ReplyDport: 5353,
		OrigSaddr: ipv6("2001:db8::1"), OrigDaddr: ipv6("2001:db8::2"), ReplySaddr: ipv6("2001:db8::2"), ReplyDaddr: ipv6("2001:db8::1"),
	}
	for _, tt := range []struct {
		kind conntrackRecordKind
		r    conntrackCtEntryEvent
		want events.Kind
		orig [2]string
		repl [2]string
	}{
		{conntrackRecordKindRECORD_CT_NEW, nat, events.KindConntrackNew, [2]string{"10.0.0.2:40000", "192.0.2.1:80"}, [2]string{"192.0.2.1:80", "198.51.100.7:61000"}},
		{conntrackRecordKindRECORD_CT_DESTROY, nat, events.KindConntrackDestroy, [2]string{"10.0.0.2:40000", "192.0.2.1:80"}, [2]string{"192.0.2.1:80", "198.51.100.7:61000"}},
		{conntrackRecordKindRECORD_CT_ALLOC_FAILED, v6, events.KindConntrackAllocFailed, [2]string{"[2001:db8::1]:5353", "[2001:db8::2]:53"}, [2]string{"[2001:db8::2]:53", "[2001:db8::1]:5353"}},
	} {
		r := tt.r
		r.Kind = uint8(tt.kind)
		var ev events.Event
		ev.Drop.Count = 9 // a reused event: the decoder must not mind
		if err := Decode(encodeCt(&r), &ev); err != nil {
			t.Fatalf("%v: %v", tt.want, err)
		}
		c := ev.ConntrackEntry
		got := [4]netip.AddrPort{c.OrigSrc, c.OrigDst, c.ReplySrc, c.ReplyDst}
		want := [4]netip.AddrPort{netip.MustParseAddrPort(tt.orig[0]), netip.MustParseAddrPort(tt.orig[1]),
			netip.MustParseAddrPort(tt.repl[0]), netip.MustParseAddrPort(tt.repl[1])}
		if ev.Kind != tt.want || got != want || c.NetNS != r.Netns || c.Proto != r.Proto ||
			c.TCPState != r.TcpState || c.TimeNs != r.TimeNs || uint8(c.Family) != r.Family {
			t.Errorf("%v: decoded %v %+v, want tuples %v", tt.want, ev.Kind, c, want)
		}
	}
	short := encodeCt(&conntrackCtEntryEvent{Kind: uint8(conntrackRecordKindRECORD_CT_NEW)})
	var ev events.Event
	if err := Decode(short[:len(short)-1], &ev); !errors.Is(err, ErrShortRecord) {
		t.Errorf("truncated ct_entry_event: %v", err)
	}
}

func BenchmarkDecodeCtEntry(b *testing.B) {
	raw := encodeCt(&conntrackCtEntryEvent{Kind: uint8(conntrackRecordKindRECORD_CT_NEW), Family: 2, Proto: 6,
		OrigSaddr: ipv4("127.0.0.1"), OrigDaddr: ipv4("127.0.0.1"), ReplySaddr: ipv4("127.0.0.1"), ReplyDaddr: ipv4("127.0.0.1")})
	var ev events.Event
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if err := Decode(raw, &ev); err != nil {
			b.Fatal(err)
		}
	}
}
