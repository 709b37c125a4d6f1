package export

import (
	"strconv"

	"github.com/conntracer/conntracer/internal/events"
)

// ownerCache remembers the text of the owner columns of the last few
// lines. A busy stream prints the same few owners over and over (under
// connection churn, one client and one server line per connection), and
// the owner's fields were a third of a JSON line: four numbers, the
// quoted comm and three names (BenchmarkPrint, 5 interleaved A/B rounds,
// median: json 364 -> 250 ns/op, text 264 -> 275 within noise (best 257
// -> 239); BenchmarkPrintMixed, five owners in turn, json 572 -> 506).
// Bounded: a fixed number of fixed-size entries, replaced round-robin, so
// the hot path stays allocation-free. Not safe for concurrent use: it
// belongs to its Stream.
type ownerCache struct {
	next    int
	entries [ownerCacheSize]ownerEntry
}

// ownerCacheSize covers a client and a server alternating, with room for
// a few more processes: with 4 entries, five owners in turn missed every
// time (BenchmarkPrintMixed/json 588 ns/op, 480 with 8; one owner: 244
// and 246).
const ownerCacheSize = 8

// ownerKey holds every field the cached text depends on. Fields a format
// does not print are left zero.
type ownerKey struct {
	pid, tid, netns uint32
	comm            [16]byte
	cgroupID        uint64
	source          events.OwnerSource
	family          events.Family
	kind            events.Kind
}

type ownerEntry struct {
	key ownerKey
	n   int // length of text; 0 for an unused entry
	// text fits the longest JSON owner block: a comm of 15 escaped control
	// bytes is 92 bytes quoted, the rest under 160.
	text [256]byte
}

// find returns the text kept for k, or nil.
func (c *ownerCache) find(k *ownerKey) []byte {
	for i := range c.entries {
		if e := &c.entries[i]; e.n != 0 && e.key == *k {
			return e.text[:e.n]
		}
	}
	return nil
}

// keep remembers text for k, unless it is too long to keep.
func (c *ownerCache) keep(k *ownerKey, text []byte) {
	if len(text) == 0 || len(text) > len(c.entries[0].text) {
		return
	}
	e := &c.entries[c.next]
	c.next = (c.next + 1) % ownerCacheSize
	e.key, e.n = *k, len(text)
	copy(e.text[:], text)
}

// appendJSONOwner appends a JSON line's fields from its type to the
// opening quote of its local address:
// `","type":"conn_closed","pid":..., "family":"ipv4","local_addr":"`.
func (s *Stream) appendJSONOwner(b []byte, ev *events.Event) []byte {
	c := &ev.Conn
	k := ownerKey{
		pid: c.Owner.PID, tid: c.Owner.TID, netns: c.NetNS, comm: c.Owner.Comm,
		cgroupID: c.Owner.CgroupID, source: c.Owner.Source, family: c.Family, kind: ev.Kind,
	}
	if text := s.owners.find(&k); text != nil {
		return append(b, text...)
	}
	start := len(b)
	b = append(b, `","type":"`...)
	b = append(b, ev.Kind.String()...)
	b = append(b, `","pid":`...)
	b = strconv.AppendUint(b, uint64(c.Owner.PID), 10)
	b = append(b, `,"tid":`...)
	b = strconv.AppendUint(b, uint64(c.Owner.TID), 10)
	b = append(b, `,"comm":`...)
	b = appendJSONString(b, c.Owner.CommBytes())
	b = append(b, `,"owner":"`...)
	b = append(b, c.Owner.Source.String()...)
	b = append(b, `","cgroup_id":`...)
	b = strconv.AppendUint(b, c.Owner.CgroupID, 10)
	b = append(b, `,"netns":`...)
	b = strconv.AppendUint(b, uint64(c.NetNS), 10)
	b = append(b, `,"family":"`...)
	b = append(b, c.Family.String()...)
	b = append(b, `","local_addr":"`...)
	s.owners.keep(&k, b[start:])
	return b
}

// appendTextOwner appends a text line's PID and COMM columns, padded:
// "-" and "?" for an unknown owner of a connection. Failed connects
// (known is true) always name their caller.
func (s *Stream) appendTextOwner(b []byte, kind events.Kind, p *events.Process, known bool) []byte {
	k := ownerKey{pid: p.PID, comm: p.Comm, kind: kind}
	if !known {
		k = ownerKey{kind: kind, source: events.OwnerUnknown}
	} else {
		k.source = events.OwnerUnknown + 1 // any known source prints the same
	}
	if text := s.owners.find(&k); text != nil {
		return append(b, text...)
	}
	start := len(b)
	if known {
		b = strconv.AppendUint(b, uint64(p.PID), 10)
	} else {
		b = append(b, '-')
	}
	b = pad(b, start, 8)
	col := len(b)
	if known {
		b = appendPrintable(b, p.CommBytes())
	} else {
		b = append(b, '?')
	}
	b = pad(b, col, 16)
	s.owners.keep(&k, b[start:])
	return b
}
