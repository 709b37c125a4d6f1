package export

import (
	"bytes"
	"io"
	"math"
	"math/rand/v2"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"
	_ "time/tzdata" // a zone with daylight saving time on any test machine

	"github.com/conntracer/conntracer/internal/events"
)

// The faster formatting (caches, hand-written number and time printing)
// must print exactly what the plain formatting in stream_ref_test.go
// printed. These tests feed both the same events, through one Stream so
// that every cache carries state from line to line, and compare bytes.

// equivClocks are the clocks the comparison runs under: UTC, the local
// zone (what the tracer uses), an odd fixed offset, and New York a few
// seconds before daylight saving time starts, so that lines cross the
// change of offset.
func equivClocks(t *testing.T) map[string]Clock {
	ny, err := time.LoadLocation("America/New_York")
	if err != nil {
		t.Fatal(err)
	}
	dst := time.Date(2026, 3, 8, 6, 59, 58, 0, time.UTC).UnixNano() // 01:59:58 EST
	odd := time.FixedZone("odd", 5*3600+45*60)
	return map[string]Clock{
		"utc":   fixedClock,
		"local": func(ns uint64) time.Time { return time.Unix(0, 1763779381123456789+int64(ns)) },
		"odd":   func(ns uint64) time.Time { return fixedClock(ns).In(odd) },
		"dst":   func(ns uint64) time.Time { return time.Unix(0, dst+int64(ns)).In(ny) },
		"epoch": func(ns uint64) time.Time { return time.Unix(0, int64(ns)).UTC() },
	}
}

// connEvent builds a closed connection; the table below varies it.
func connEvent(local, remote string, mod func(c *events.Conn)) events.Event {
	ev := events.Event{Kind: events.KindConnClosed}
	c := &ev.Conn
	c.Local, c.Remote = netip.MustParseAddrPort(local), netip.MustParseAddrPort(remote)
	c.Family = events.FamilyIPv4
	if c.Local.Addr().Is6() && !c.Local.Addr().Is4In6() {
		c.Family = events.FamilyIPv6
	}
	c.NetNS, c.Cookie = 4026531840, 12345
	c.Owner = events.Process{PID: 4242, TID: 4243, CgroupID: 77, Source: events.OwnerConnect}
	c.Owner.SetComm("curl")
	c.Role, c.OpenNs, c.CloseNs, c.TxBytes, c.RxBytes = events.RoleActive, 1_000, 2_001_000, 10, 20
	c.EndState, c.ClosedBy, c.LastState, c.SeenOpen = events.EndTimeWait, events.SideLocal, events.TCPFinWait2, true
	if mod != nil {
		mod(c)
	}
	return ev
}

// equivLifetimes cover every unit of the text format and its boundaries
// (999.9999 ms rounds to "1000.0ms"), up to days.
var equivLifetimes = []uint64{
	0, 1, 999, 1_000, 1_001, 999_999, 1_000_000, 1_049_999, 1_050_000, 12_345_678,
	999_949_999, 999_950_000, 999_999_999, 1_000_000_000, 1_000_499_999, 1_000_500_000,
	59_999_999_999, 3_600_000_000_000, 86_400_000_000_001, 3*86_400_000_000_000 + 123_456_789,
	1 << 53, 1<<53 + 1, math.MaxUint64 / 2,
}

var equivComms = []string{
	"", "curl", "redis-server", "fifteen-chars-x", "evil\x1b[2J\"\\\xff", "tab\there", "del\x7f",
	`q"uo"te`, `back\slash`, "caf\xc3\xa9", "\xe2\x82\xac\xe2\x82", "\xf0\x9f\x98\x80ok", "\x01\x02\x03",
	"<html>&amp;", "\u2028sep",
}

var equivAddrs = []string{
	"10.0.0.1:43210", "127.0.0.1:9", "0.0.0.0:0", "255.255.255.255:65535",
	"[2001:db8::1]:6379", "[::1]:80", "[::]:0", "[fe80::1%eth0]:22",
	"[::ffff:10.0.0.1]:8080", "[::ffff:127.0.0.1]:1", "[2001:db8:1:2:3:4:5:6]:443",
	"[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535", "[64:ff9b::192.0.2.33]:53",
}

// equivConnEvents is the table: each field varied on its own, then the
// combinations a churn stream prints (same addresses, new ports).
func equivConnEvents() []events.Event {
	var evs []events.Event
	add := func(local, remote string, mod func(c *events.Conn)) {
		evs = append(evs, connEvent(local, remote, mod))
	}
	for i, a := range equivAddrs {
		add(a, equivAddrs[(i+3)%len(equivAddrs)], nil)
		add(equivAddrs[(i+5)%len(equivAddrs)], a, nil)
	}
	for _, lt := range equivLifetimes {
		add("10.0.0.1:1", "10.0.0.2:2", func(c *events.Conn) { c.OpenNs, c.CloseNs = 7, 7+lt })
		add("10.0.0.1:1", "10.0.0.2:2", func(c *events.Conn) { c.OpenNs, c.CloseNs = 7, 7+lt; c.SeenOpen = false })
	}
	add("10.0.0.1:1", "10.0.0.2:2", func(c *events.Conn) { c.OpenNs, c.CloseNs = 9, 3 }) // clock went back
	add("10.0.0.1:1", "10.0.0.2:2", func(c *events.Conn) { c.OpenNs = 0 })
	for _, comm := range equivComms {
		add("10.0.0.1:1", "10.0.0.2:2", func(c *events.Conn) { c.Owner.SetComm(comm) })
	}
	add("10.0.0.1:1", "10.0.0.2:2", func(c *events.Conn) {
		c.Owner.Comm = [16]byte{'f', 'u', 'l', 'l', '-', 's', 'i', 'x', 't', 'e', 'e', 'n', 'x', 'y', 'z', '!'}
	})
	for src := events.OwnerSource(0); src < 8; src++ {
		add("10.0.0.1:1", "10.0.0.2:2", func(c *events.Conn) { c.Owner.Source = src })
		add("10.0.0.1:1", "10.0.0.2:2", func(c *events.Conn) { c.Owner.Source = src; c.Owner.PID = 0; c.Owner.SetComm("") })
	}
	for _, n := range []uint64{0, 1, 9, 10, 99, 100, 999, 1000, 65535, 1 << 32, 1<<40 + 1, 9_999_999_999_999_999_999, math.MaxUint64} {
		add("10.0.0.1:1", "10.0.0.2:2", func(c *events.Conn) {
			c.TxBytes, c.RxBytes, c.Cookie, c.Owner.CgroupID = n, n/3, n, n
			c.NetNS, c.Owner.PID, c.Owner.TID = uint32(n), uint32(n>>1), uint32(n>>2)
		})
	}
	for end := events.EndState(0); end < 9; end++ {
		for _, errno := range []uint8{0, 104, 111, 110, 113, 200, 255} {
			add("10.0.0.1:1", "10.0.0.2:2", func(c *events.Conn) { c.EndState, c.Error = end, errno })
		}
	}
	for side := events.Side(0); side < 5; side++ {
		add("10.0.0.1:1", "10.0.0.2:2", func(c *events.Conn) { c.ClosedBy, c.Role = side, events.Role(side) })
	}
	for st := events.TCPState(0); st < 15; st++ {
		add("10.0.0.1:1", "10.0.0.2:2", func(c *events.Conn) { c.LastState = st })
	}
	for _, fam := range []events.Family{0, events.FamilyUnix, events.FamilyIPv4, events.FamilyIPv6, 44} {
		add("10.0.0.1:1", "10.0.0.2:2", func(c *events.Conn) { c.Family = fam })
	}
	for i := 0; i < 20; i++ { // churn: one client, one server, new ports
		port := 40000 + i
		add("127.0.0.1:"+strconv.Itoa(port), "127.0.0.1:8080", func(c *events.Conn) { c.CloseNs += uint64(i) * 1e8 })
		add("127.0.0.1:8080", "127.0.0.1:"+strconv.Itoa(port), func(c *events.Conn) {
			c.Role, c.Owner.Source, c.CloseNs = events.RolePassive, events.OwnerAccept, c.CloseNs+uint64(i)*1e8+7
		})
	}
	return evs
}

// equivConnectEvents: failed connect() lines, Unix and inet, counted
// and single, with every latency unit.
func equivConnectEvents() []events.Event {
	var evs []events.Event
	add := func(family events.Family, dest string, comm string, errno uint8, count, latSum, endNs uint64) {
		ev := events.Event{Kind: events.KindConnect}
		c := &ev.Connect
		c.Owner = events.Process{PID: 31, TID: 32, CgroupID: 77, Source: events.OwnerConnect}
		c.Owner.SetComm(comm)
		c.NetNS, c.Family, c.SockType, c.Errno, c.Count = 4026531840, family, events.SockStream, errno, count
		c.StartNs, c.EndNs, c.LatencySumNs, c.NonBlocking = 1_000, endNs, latSum, count%2 == 0
		switch family {
		case events.FamilyUnix:
			b := []byte(dest)
			if strings.HasPrefix(dest, "@") {
				b[0] = 0
			}
			c.Path.Set(b)
		case events.FamilyIPv4, events.FamilyIPv6:
			c.Remote = netip.MustParseAddrPort(dest)
		}
		evs = append(evs, ev)
	}
	for i, lt := range equivLifetimes {
		errno := []uint8{11, 111, 99, 101, 13, 200, 115, 0}[i%8] // 115 and 0 are not printed
		add(events.FamilyUnix, "/run/php/php8.2-fpm.sock", "nginx", errno, uint64(i), lt*uint64(i), lt)
		add(events.FamilyUnix, "@ctl\"\x01\\", equivComms[i%len(equivComms)], errno, 1, lt, lt+1)
		add(events.FamilyIPv4, equivAddrs[i%4], "curl", errno, 1, lt, lt+2)
		add(events.FamilyIPv6, equivAddrs[4+i%9], "curl", errno, 3, lt, lt+3)
		add(99, "", "odd", errno, 1, lt, lt+4)
	}
	return evs
}

// equivRandomEvents draws events field by field from the pools above,
// in runs that share a second, an address or an owner, and jumps.
func equivRandomEvents(n int) []events.Event {
	r := rand.New(rand.NewPCG(7, 11))
	pick := func(s []string) string { return s[r.IntN(len(s))] }
	evs := make([]events.Event, 0, n)
	closeNs := uint64(0)
	for i := 0; i < n; i++ {
		switch r.IntN(10) {
		case 0:
			closeNs += r.Uint64N(1 << 50) // a jump
		case 1, 2, 3:
			closeNs += r.Uint64N(1e9) // the next second, often
		default:
			closeNs += r.Uint64N(1e6) // the same second, mostly
		}
		local, remote := "127.0.0.1:8080", "127.0.0.1:"+strconv.Itoa(1024+r.IntN(60000))
		if r.IntN(3) == 0 {
			local, remote = pick(equivAddrs), pick(equivAddrs)
		}
		ev := connEvent(local, remote, func(c *events.Conn) {
			c.CloseNs = closeNs
			c.OpenNs = closeNs - min(closeNs, equivLifetimes[r.IntN(len(equivLifetimes))]+r.Uint64N(1e3))
			c.SeenOpen = r.IntN(8) != 0
			if r.IntN(4) == 0 {
				c.Owner.SetComm(pick(equivComms))
				c.Owner.PID, c.Owner.TID = r.Uint32(), r.Uint32()
				c.Owner.Source = events.OwnerSource(r.IntN(7))
			}
			c.TxBytes, c.RxBytes = r.Uint64()>>r.IntN(64), r.Uint64()>>r.IntN(64)
			c.Cookie, c.NetNS = r.Uint64()>>r.IntN(64), r.Uint32()>>r.IntN(32)
			c.Role, c.EndState = events.Role(r.IntN(4)), events.EndState(r.IntN(8))
			c.ClosedBy, c.LastState = events.Side(r.IntN(4)), events.TCPState(r.IntN(14))
			if r.IntN(3) == 0 {
				c.Error = uint8(r.IntN(256))
			}
		})
		evs = append(evs, ev)
	}
	return evs
}

// TestStreamMatchesReference prints the table, the failed connects and
// random events in every format under every clock, and compares each line
// with the reference formatting.
func TestStreamMatchesReference(t *testing.T) {
	sets := map[string][]events.Event{
		"conn":    equivConnEvents(),
		"connect": equivConnectEvents(),
		"random":  equivRandomEvents(5000),
		"sample":  sampleEvents(),
	}
	for cname, clock := range equivClocks(t) {
		for sname, evs := range sets {
			for _, f := range []Format{FormatText, FormatJSON} {
				var got bytes.Buffer
				s := NewStream(&got, f, clock)
				ref := refStream{clock: clock}
				var want strings.Builder
				if f == FormatText {
					want.WriteString(textHeader)
				}
				for i := range evs {
					if err := s.Print(&evs[i]); err != nil {
						t.Fatal(err)
					}
					want.WriteString(ref.line(&evs[i], f))
				}
				if err := s.Flush(); err != nil {
					t.Fatal(err)
				}
				if got.String() == want.String() {
					continue
				}
				g, w := strings.SplitAfter(got.String(), "\n"), strings.SplitAfter(want.String(), "\n")
				for i := range min(len(g), len(w)) {
					if g[i] != w[i] {
						t.Fatalf("%s/%s/%s line %d:\n got %q\nwant %q", cname, sname, f, i, g[i], w[i])
					}
				}
				t.Fatalf("%s/%s/%s: %d lines, want %d", cname, sname, f, len(g), len(w))
			}
		}
	}
}

// BenchmarkPrintMixed cycles through the sample events (IPv4, IPv6, an
// unknown owner, a hostile comm), so that no cache sees the same line
// twice in a row; BenchmarkPrint repeats one line. The clock is the local
// zone's, as in the tracer.
func BenchmarkPrintMixed(b *testing.B) {
	evs := sampleEvents()
	clock := func(ns uint64) time.Time { return time.Unix(0, 1763779381123456789+int64(ns)) }
	for _, f := range []Format{FormatText, FormatJSON} {
		b.Run(string(f), func(b *testing.B) {
			s := NewStream(io.Discard, f, clock)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				_ = s.Print(&evs[i])
				if i++; i == len(evs) {
					i = 0
				}
			}
		})
	}
}

// TestAddrCache compares the cached address text with netip's for every
// kind of address, in orders that hit, miss and evict entries.
func TestAddrCache(t *testing.T) {
	var ps []netip.AddrPort
	for _, a := range equivAddrs {
		ps = append(ps, netip.MustParseAddrPort(a))
	}
	ps = append(ps, netip.AddrPort{}, netip.AddrPortFrom(netip.Addr{}, 80),
		netip.MustParseAddrPort("[fe80::1%a-rather-long-zone-name-that-does-not-fit-the-cache]:1"))
	r := rand.New(rand.NewPCG(9, 10))
	var c addrCache
	for i := 0; i < 20000; i++ {
		p := ps[r.IntN(len(ps))]
		if i%3 == 0 {
			p = ps[r.IntN(3)] // a few hot addresses
		}
		if got, want := c.appendAddrPort([]byte("x"), p), p.AppendTo([]byte("x")); string(got) != string(want) {
			t.Fatalf("appendAddrPort(%v) = %q, want %q", p, got, want)
		}
		if got, want := c.appendAddr([]byte("x"), p.Addr()), p.Addr().AppendTo([]byte("x")); string(got) != string(want) {
			t.Fatalf("appendAddr(%v) = %q, want %q", p.Addr(), got, want)
		}
	}
}

// TestAppendDuration compares the integer rounding with the float
// formatting it replaced around every rounding boundary (halves included)
// and on random lifetimes of every size.
func TestAppendDuration(t *testing.T) {
	var vals []uint64
	for _, step := range []uint64{1e5, 1e6} { // the ms and s rounding units
		for k := uint64(0); k < 3000; k++ {
			base := k*step*7 + step/2
			vals = append(vals, base-1, base, base+1, base+step/2)
		}
	}
	r := rand.New(rand.NewPCG(12, 13))
	for i := 0; i < 200000; i++ {
		v := r.Uint64() >> r.IntN(64)
		vals = append(vals, v, v/1e5*1e5+5e4, v/1e6*1e6+5e5)
	}
	vals = append(vals, 1<<52-1, 1<<52, 1<<52+1, 1<<53, math.MaxUint64, 999_950_000, 999_949_999, 999_999_999)
	for _, v := range vals {
		if got, want := appendDuration(nil, v), refAppendDuration(nil, v); string(got) != string(want) {
			t.Fatalf("appendDuration(%d) = %q, want %q", v, got, want)
		}
	}
}
