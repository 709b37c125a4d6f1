package export

import (
	"net/netip"
	"strconv"
)

// addrCache remembers the text of the last few addresses the stream
// printed. A busy stream prints the same few addresses over and over (a
// host's own address, a handful of peers: only the ports change), and
// netip's formatting of two IPv4 addresses was a sixth of a line
// (BenchmarkPrint, 7 interleaved A/B rounds, best: json 417 -> 336,
// text 322 -> 267 ns/op; IPv6 costs netip more). Bounded: a fixed
// number of entries, replaced round-robin; addresses with zones, which
// the kernel never reports, are not kept. Not safe for concurrent use: it
// belongs to its Stream.
type addrCache struct {
	next    int
	entries [addrCacheSize]addrEntry
}

// addrCacheSize covers a client and a server line of one connection
// (two addresses each, the same two) with room for a second peer.
const addrCacheSize = 4

type addrEntry struct {
	addr netip.Addr
	n    uint8 // length of text; 0 for an unused entry
	// text fits the longest address without a zone:
	// "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff" (39) or "::ffff:255.255.255.255".
	text [39]byte
}

// appendAddr appends a as a.AppendTo(b) would.
func (c *addrCache) appendAddr(b []byte, a netip.Addr) []byte {
	for i := range c.entries {
		if e := &c.entries[i]; e.addr == a && e.n != 0 {
			return append(b, e.text[:e.n]...)
		}
	}
	start := len(b)
	b = a.AppendTo(b)
	if n := len(b) - start; n > 0 && n <= len(c.entries[0].text) {
		e := &c.entries[c.next]
		c.next = (c.next + 1) % addrCacheSize
		e.addr, e.n = a, uint8(n)
		copy(e.text[:], b[start:])
	}
	return b
}

// appendAddrPort appends p as p.AppendTo(b) would: nothing for the zero
// value, "a.b.c.d:port" for IPv4, "[addr]:port" for every IPv6 address,
// IPv4-mapped ones included.
func (c *addrCache) appendAddrPort(b []byte, p netip.AddrPort) []byte {
	a := p.Addr()
	switch {
	case !a.IsValid():
		return b
	case a.Is4():
		b = c.appendAddr(b, a)
	default:
		b = append(b, '[')
		b = c.appendAddr(b, a)
		b = append(b, ']')
	}
	b = append(b, ':')
	return strconv.AppendUint(b, uint64(p.Port()), 10)
}
