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

func sampleDrop() events.Event {
	ev := events.Event{Kind: events.KindDrop}
	d := &ev.Drop
	d.ReasonName, d.Symbol = "NETFILTER_DROP", "nf_hook_slow+0x8d"
	d.NetNS, d.Ifindex, d.Family, d.L4Proto, d.TCPFlags, d.HasPorts = 4026532453, 1, events.FamilyIPv4, 6, events.TCPFlagSYN, true
	d.Src, d.Dst = netip.MustParseAddrPort("127.0.0.1:35176"), netip.MustParseAddrPort("127.0.0.1:43521")
	d.NoCT, d.Count, d.TimeNs = true, 1, 1_000_000
	d.Owner = events.Process{PID: 15545, Source: events.OwnerSocket}
	d.Owner.SetComm("ctr-churner")
	return ev
}

func TestDropLines(t *testing.T) {
	ev := sampleDrop()
	var buf bytes.Buffer
	s := NewStream(&buf, FormatText, fixedClock)
	if err := s.Print(&ev); err != nil {
		t.Fatal(err)
	}
	s.Flush()
	want := "12:00:00.001 DROP NETFILTER_DROP tcp 127.0.0.1:35176 -> 127.0.0.1:43521 at nf_hook_slow+0x8d if 1 netns 4026532453 pid 15545 ctr-churner\n"
	if buf.String() != want {
		t.Errorf("text:\n got %q\nwant %q", buf.String(), want)
	}
	buf.Reset()
	s = NewStream(&buf, FormatJSON, fixedClock)
	s.Print(&ev)
	s.Flush()
	var m map[string]any
	if err := json.Unmarshal(buf.Bytes(), &m); err != nil {
		t.Fatalf("%v: %s", err, buf.Bytes())
	}
	if m["type"] != "drop" || m["reason"] != "NETFILTER_DROP" || m["dst_port"] != 43521.0 || m["comm"] != "ctr-churner" || m["no_conntrack_entry"] != true {
		t.Errorf("json: %s", buf.Bytes())
	}
	if strings.Count(buf.String(), "\n") != 1 {
		t.Errorf("not one line: %q", buf.String())
	}
}

func BenchmarkStreamDropJSON(b *testing.B) {
	ev := sampleDrop()
	s := NewStream(io.Discard, FormatJSON, fixedClock)
	b.ReportAllocs()
	for b.Loop() {
		s.Print(&ev)
	}
}
