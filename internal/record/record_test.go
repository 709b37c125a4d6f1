package record

import (
	"bytes"
	"errors"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/conntracer/conntracer/internal/events"
)

// stamped is an event with the time it was applied at.
type stamped struct {
	ev  events.Event
	now time.Time
}

var t0 = time.Date(2026, 11, 22, 1, 0, 0, 0, time.UTC)

func owner(pid uint32, comm string) events.Process {
	p := events.Process{PID: pid, TID: pid, StartNs: uint64(pid) * 1e6, CgroupID: 77, Source: events.OwnerConnect}
	p.SetComm(comm)
	return p
}

// closeEvent is a realistic connection record: a client churning to one
// server, sequential cookies and ports, kernel times a few ms apart.
func closeEvent(i int) events.Event {
	open := uint64(5e12) + uint64(i)*1_000_000
	return events.Event{Kind: events.KindConnClosed, Conn: events.Conn{
		Cookie: 4096 + uint64(i), NetNS: 4026531840, Family: events.FamilyIPv4,
		Local:  netip.AddrPortFrom(netip.MustParseAddr("10.0.0.1"), uint16(32768+i%28000)),
		Remote: netip.MustParseAddrPort("10.0.0.2:6379"), Role: events.RoleActive,
		Owner: owner(uint32(1000+i%4), "worker"), OpenNs: open, EstablishedNs: open + 40_000,
		CloseNs: open + 600_000, TxBytes: 120, RxBytes: 4096, EndState: events.EndTimeWait,
		ClosedBy: events.SideLocal, LastState: events.TCPFinWait2, SeenOpen: true,
	}}
}

// everyKind returns one event of each part, with odd values.
func everyKind() []stamped {
	var out []stamped
	now := t0
	add := func(ev events.Event) {
		now = now.Add(1234567 * time.Nanosecond)
		out = append(out, stamped{ev, now})
	}
	add(closeEvent(1))
	ex := closeEvent(2)
	ex.Kind = events.KindConnExisting
	ex.Conn.OpenNs, ex.Conn.Local = 0, netip.MustParseAddrPort("[fe80::1%eth0]:22")
	ex.Conn.Owner.CgroupPath = "/system.slice/ssh.service"
	add(ex)
	c := events.Event{Kind: events.KindConnect, Connect: events.Connect{
		Owner: owner(42, "nginx"), NetNS: 9, Family: events.FamilyUnix, SockType: events.SockStream,
		Errno: events.ErrnoEAGAIN, Count: 3, StartNs: 77, EndNs: 99, LatencySumNs: 15, NonBlocking: true,
	}}
	c.Connect.Path.Set([]byte("/run/php/php8.2-fpm.sock"))
	add(c)
	add(events.Event{Kind: events.KindDrop, Drop: events.Drop{
		Reason: 3, ReasonName: "NETFILTER_DROP", Location: 0xffffffff81234567, Symbol: "nf_hook_slow+0x8d",
		NetNS: 9, Ifindex: 1, Family: events.FamilyIPv6, L4Proto: 6, TCPFlags: events.TCPFlagSYN, HasPorts: true,
		Src: netip.MustParseAddrPort("[::1]:5000"), Dst: netip.MustParseAddrPort("[::1]:80"), Owner: owner(7, "x"),
		NoCT: true, TimeNs: 1 << 62, Count: 5, QueueLen: 1, Backlog: 2, Somaxconn: 4096,
	}})
	add(events.Event{Kind: events.KindConntrackStats, Conntrack: events.Conntrack{
		NetNS: 9, TimeNs: 12, Entries: 100, Max: 262144, Found: 1, Invalid: 2, Insert: 3, InsertFailed: 4,
		Drop: 5, EarlyDrop: 6, Error: 7, SearchRestart: 8, TimeoutEstablished: 432000, TimeoutTimeWait: 120,
		TimeoutCloseWait: 60, TimeoutSynSent: 120,
	}})
	add(events.Event{Kind: events.KindTimeWait, Conn: closeEvent(3).Conn, Sample: events.Sample{TimeNs: 5, ExpiresNs: 6e10}})
	add(events.Event{Kind: events.KindPortRange, Conn: events.Conn{NetNS: 9}, Sample: events.Sample{PortLow: 32768, PortHigh: 60999}})
	kc := events.Event{Kind: events.KindKernelCounters, Counters: events.Counters{NetNS: 9, TimeNs: 1 << 40}}
	for i := range len(events.KernelCounterNames) {
		kc.Counters.Values[i] = uint64(i * 1000003)
	}
	add(kc)
	tc := events.Event{Kind: events.KindTracerCounters, Counters: events.Counters{Object: "tcplife"}}
	tc.Counters.Values[0] = 17
	add(tc)
	tc.Counters = events.Counters{Values: [events.MaxCounters]uint64{0, 1 << 33, 2, 3}}
	add(tc)
	add(events.Event{Kind: events.KindConntrackNew, ConntrackEntry: events.ConntrackEntry{
		NetNS: 9, TimeNs: 1 << 41, ID: 0xdeadbeef, Family: events.FamilyIPv4, Proto: 6,
		OrigSrc: netip.MustParseAddrPort("10.0.0.1:40000"), OrigDst: netip.MustParseAddrPort("10.0.0.2:80"),
		ReplySrc: netip.MustParseAddrPort("10.0.0.2:80"), ReplyDst: netip.MustParseAddrPort("10.0.0.1:40000"),
		TCPState: 3, Timeout: 432000, Dump: true, Generation: 4,
	}})
	add(events.Event{Kind: events.KindConntrackResync, ConntrackEntry: events.ConntrackEntry{
		NetNS: 9, TimeNs: 1 << 41, Generation: 4, Lost: 1234, DumpEntries: 1,
	}})
	add(events.Event{Kind: events.KindConntrackAllocFailed, ConntrackEntry: events.ConntrackEntry{
		NetNS: 9, Family: events.FamilyIPv6, Proto: 17,
		OrigSrc: netip.MustParseAddrPort("[fd00::1]:53000"), OrigDst: netip.MustParseAddrPort("[fd00::2]:53"),
	}})
	id := events.Identity{Runtime: "containerd", ContainerID: strings.Repeat("4b", 32), PodUID: "7c2f1d3e-8a9b-4c5d-9e0f-1a2b3c4d5e6f",
		Namespace: "shop", Pod: "checkout-7d9f", Container: "api"}
	add(events.Event{Kind: events.KindCgroupIdentity, Cgroup: events.CgroupRecord{ID: 77, Info: events.CgroupInfo{
		Path: "/kubepods/burstable/pod7c2f1d3e-8a9b-4c5d-9e0f-1a2b3c4d5e6f/" + id.ContainerID, Identity: id, Workload: id.Workload(), Gone: true}}})
	add(events.Event{Kind: events.KindNetNSName, NetNSName: events.NetNSRecord{Inode: 4026532999, Name: "shop/checkout-7d9f", Source: events.NetNSByPod}})
	add(events.Event{Kind: events.KindNetNSName, NetNSName: events.NetNSRecord{Inode: 4026531840, Name: "host", Source: events.NetNSByHost}})
	// Times going backwards a little, as wall clocks do.
	out[len(out)-1].now = out[len(out)-1].now.Add(-time.Millisecond)
	return out
}

// sockRound returns a socket-table round of n sockets at time ns; socket
// i is in state st(i).
func sockRound(n int, ns uint64, st func(int) events.TCPState) []events.Event {
	var out []events.Event
	for i := range n {
		ev := closeEvent(i)
		ev.Kind = events.KindSockOpen
		ev.Conn.CloseNs, ev.Conn.LastState = 0, st(i)
		ev.Sample = events.Sample{TimeNs: ns}
		out = append(out, ev)
	}
	return append(out, events.Event{Kind: events.KindSockSampleDone, Sample: events.Sample{TimeNs: ns}})
}

func writeAll(t testing.TB, opts Options, evs []stamped) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := NewWriter(&buf, opts)
	if err != nil {
		t.Fatal(err)
	}
	for i := range evs {
		if err := w.Write(&evs[i].ev, evs[i].now); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func readAll(t testing.TB, b []byte) ([]stamped, Stats, error) {
	t.Helper()
	r, err := NewReader(bytes.NewReader(b), int64(len(b)), "test")
	if err != nil {
		return nil, Stats{}, err
	}
	defer r.Close()
	var out []stamped
	for {
		var ev events.Event
		now, err := r.Next(&ev)
		if errors.Is(err, io.EOF) {
			return out, r.Stats(), nil
		}
		if err != nil {
			return out, r.Stats(), err
		}
		out = append(out, stamped{ev, now})
	}
}

func equalStamped(t *testing.T, got, want []stamped) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("read %d events, wrote %d", len(got), len(want))
	}
	for i := range want {
		if !got[i].now.Equal(want[i].now) || !reflect.DeepEqual(got[i].ev, want[i].ev) {
			t.Fatalf("event %d:\n got %v %+v\nwant %v %+v", i, got[i].now, got[i].ev, want[i].now, want[i].ev)
		}
	}
}

func TestRoundTripEveryPart(t *testing.T) {
	want := everyKind()
	got, st, err := readAll(t, writeAll(t, Options{}, want))
	if err != nil {
		t.Fatal(err)
	}
	equalStamped(t, got, want)
	if st.Blocks != 1 || st.LostBytes != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// rounds builds a minute of socket-table rounds in which sockets come,
// change state and go, with connection closes in between.
func rounds() []stamped {
	var out []stamped
	now := t0
	for r := range 70 {
		now = now.Add(time.Second)
		ns := uint64(6e12) + uint64(r)*1e9
		n := 50 + r%7
		round := sockRound(n, ns, func(i int) events.TCPState {
			if (i+r)%13 == 0 {
				return events.TCPCloseWait
			}
			return events.TCPEstablished
		})
		// Drop one socket from the middle now and then: it went away.
		if r%5 == 0 {
			round = append(round[:3], round[4:]...)
		}
		for i := range round {
			out = append(out, stamped{round[i], now})
		}
		out = append(out, stamped{closeEvent(1000 + r), now.Add(time.Millisecond)})
	}
	return out
}

// sortedRounds is what the reader hands out: each round's sockets sorted
// by key (the order the aggregator sees does not change its numbers).
func sortedRounds(in []stamped) []stamped {
	out := append([]stamped(nil), in...)
	start := -1
	for i := range out {
		switch out[i].ev.Kind {
		case events.KindSockOpen:
			if start < 0 {
				start = i
			}
		case events.KindSockSampleDone:
			if start >= 0 {
				s := out[start:i]
				sortStamped(s)
				for j := range s {
					s[j].now = out[i].now
				}
				start = -1
			}
		}
	}
	return out
}

func sortStamped(s []stamped) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && compareKeys(keyOf(&s[j].ev), keyOf(&s[j-1].ev)) < 0; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}

func TestRoundsRebuiltFromChanges(t *testing.T) {
	in := rounds()
	delta := writeAll(t, Options{KeyframeEvery: 30 * time.Second}, in)
	verbatim := writeAll(t, Options{VerbatimRounds: true}, in)
	got, st, err := readAll(t, delta)
	if err != nil {
		t.Fatal(err)
	}
	equalStamped(t, got, sortedRounds(in))
	if st.RoundsSkipped != 0 {
		t.Fatalf("skipped %d rounds", st.RoundsSkipped)
	}
	t.Logf("70 rounds of ~53 sockets: %d bytes as changes, %d verbatim", len(delta), len(verbatim))
	if len(delta)*2 > len(verbatim) {
		t.Fatalf("changes (%d bytes) should be well under verbatim rounds (%d bytes)", len(delta), len(verbatim))
	}
}

func TestLostBlockSkipsRoundsUntilKeyframe(t *testing.T) {
	in := rounds()
	b := writeAll(t, Options{KeyframeEvery: 20 * time.Second}, in)
	// Damage the 10th block's payload.
	offs := blockOffsets(b)
	b[offs[10]+blockHeaderLen+3] ^= 0xff
	got, st, err := readAll(t, b)
	if err != nil {
		t.Fatal(err)
	}
	if st.LostBlocks != 1 || len(st.Damage) != 1 || st.Damage[0].Offset != int64(offs[10]) ||
		st.Damage[0].Length != int64(offs[11]-offs[10]) || st.Damage[0].Why != "checksum mismatch" {
		t.Fatalf("stats %+v (block 10 at %d..%d)", st, offs[10], offs[11])
	}
	if st.RoundsSkipped == 0 || st.RoundsSkipped > 20 {
		t.Fatalf("skipped %d rounds, want 1..20 (up to the next keyframe)", st.RoundsSkipped)
	}
	// Every round handed out is complete and right.
	want := sortedRounds(in)
	for _, g := range got {
		if g.ev.Kind == events.KindSockSampleDone {
			continue
		}
		found := false
		for _, w := range want {
			if w.now.Equal(g.now) && reflect.DeepEqual(w.ev, g.ev) {
				found = true
				break
			}
		}
		if !found {
			t.Fatalf("event not in the recording: %v %+v", g.now, g.ev)
		}
	}
}

// blockOffsets lists where blocks start in an intact recording.
func blockOffsets(b []byte) []int {
	var offs []int
	for i := 0; i+4 <= len(b); {
		j := bytes.Index(b[i:], blockMagic)
		if j < 0 {
			break
		}
		offs = append(offs, i+j)
		h := parseBlockHeader(b[i+j:])
		i += j + blockHeaderLen + int(h.packed)
	}
	return append(offs, len(b))
}

func TestTruncatedFileKeepsWholeBlocks(t *testing.T) {
	in := rounds()
	b := writeAll(t, Options{}, in)
	offs := blockOffsets(b)
	cut := offs[len(offs)-2] + 20 // into the last block
	got, st, err := readAll(t, b[:cut])
	if err != nil {
		t.Fatal(err)
	}
	full, _, _ := readAll(t, b[:offs[len(offs)-2]])
	equalStamped(t, got, full)
	if st.LostBlocks != 1 || st.LostBytes != 20 || st.Damage[0].Offset != int64(offs[len(offs)-2]) {
		t.Fatalf("stats %+v", st)
	}
}

func TestBadFiles(t *testing.T) {
	good := writeAll(t, Options{}, everyKind())
	newer := append([]byte(nil), good...)
	newer[len(fileMagic)] = Version + 1
	garbage := append(append([]byte(nil), good[:blockOffsets(good)[0]]...), bytes.Repeat([]byte{0xAB}, 500)...)
	for _, tc := range []struct {
		name string
		b    []byte
		want string
		is   error
	}{
		{"empty", nil, "empty file", nil},
		{"not a recording", []byte("hello world, this is text"), "not a conntracer recording", ErrNotRecording},
		{"newer version", newer, "use a newer tracer", ErrNewerVersion},
		{"header cut", good[:10], "header cut short", nil},
		{"only garbage after the header", garbage, "no intact block", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := readAll(t, tc.b)
			if err == nil || !bytes.Contains([]byte(err.Error()), []byte(tc.want)) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Fatalf("error %v is not %v", err, tc.is)
			}
		})
	}
}

func TestCreateModeAndRotation(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "rec")
	if err := os.WriteFile(path, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	w, err := Create(path, Options{RotateSize: 2000, Keep: 2, MaxBlockEvents: 100})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3000 {
		ev := closeEvent(i)
		if err := w.Write(&ev, t0.Add(time.Duration(i)*time.Millisecond)); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{path, path + ".1", path + ".2"} {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Fatalf("%s mode %v, want 0600", p, st.Mode().Perm())
		}
		r, err := Open(p)
		if err != nil {
			t.Fatal(err)
		}
		var ev events.Event
		// The current file may hold only its header: it was just rotated.
		if _, err := r.Next(&ev); p != path && (err != nil || ev.Kind != events.KindConnClosed) {
			t.Fatalf("%s: first event %v %v", p, ev.Kind, err)
		}
		r.Close()
	}
	if _, err := os.Stat(path + ".3"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("keep 2: %s.3 exists (%v)", path, err)
	}
}

// TestReadsFilesWithoutCounters reads a version 1 file written before
// the counters part existed (testdata/v1-before-counters.ctrec: the
// everyKind events of that time, written by that writer): it reads as
// it did.
func TestReadsFilesWithoutCounters(t *testing.T) {
	b, err := os.ReadFile("testdata/v1-before-counters.ctrec")
	if err != nil {
		t.Fatal(err)
	}
	want := everyKind()[:7]
	want[6].now = want[6].now.Add(-time.Millisecond)
	got, st, err := readAll(t, b)
	if err != nil {
		t.Fatal(err)
	}
	equalStamped(t, got, want)
	if st.Blocks != 1 || st.LostBytes != 0 {
		t.Fatalf("stats %+v", st)
	}
}
