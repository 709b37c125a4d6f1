package record

import (
	"cmp"
	"net/netip"
	"slices"
	"time"

	"github.com/conntracer/conntracer/internal/events"
)

// Socket-table rounds are recorded as changes (see the package doc). The
// writer keeps the last round it wrote; the reader keeps the table it
// rebuilt and hands out every socket of it at each Done.

// sockKey identifies a sampled socket from one round to the next.
type sockKey struct {
	cookie        uint64
	netns, pid    uint32
	local, remote netip.AddrPort
}

func keyOf(ev *events.Event) sockKey {
	return sockKey{ev.Conn.Cookie, ev.Conn.NetNS, ev.Conn.Owner.PID, ev.Conn.Local, ev.Conn.Remote}
}

func compareKeys(a, b sockKey) int {
	if c := cmp.Compare(a.cookie, b.cookie); c != 0 {
		return c
	}
	if c := cmp.Compare(a.netns, b.netns); c != 0 {
		return c
	}
	if c := cmp.Compare(a.pid, b.pid); c != 0 {
		return c
	}
	if c := a.local.Compare(b.local); c != 0 {
		return c
	}
	return a.remote.Compare(b.remote)
}

// roundWriter turns socket-table rounds into change records.
type roundWriter struct {
	pending  []events.Event // the round being read: KindSockOpen events
	pendNow  []int64
	last     map[sockKey]events.Event // the last round written, Sample zeroed
	valid    bool                     // last holds a round the reader can rebuild from
	keyAt    int64                    // when the last keyframe was written
	every    time.Duration            // keyframe interval
	seen     map[sockKey]struct{}
	removed  []sockKey
	changed  []int
	disabled bool // record rounds verbatim (tests, comparisons)
}

func newRoundWriter(every time.Duration) *roundWriter {
	return &roundWriter{last: make(map[sockKey]events.Event), seen: make(map[sockKey]struct{}), every: every}
}

// invalidate forces the next round to be a keyframe (a new file, a lost
// ordering).
func (r *roundWriter) invalidate() { r.valid = false }

func (e *encoder) round(now int64, keyframe bool, removed []sockKey) {
	e.b(kindRound)
	e.s(now - e.lastNow)
	e.lastNow = now
	e.b(e.flag(keyframe))
	e.u(uint64(len(removed)))
	for i := range removed {
		k := &removed[i]
		e.s(int64(k.cookie - e.lastCk))
		e.lastCk = k.cookie
		e.u(uint64(k.netns))
		e.u(uint64(k.pid))
		e.addrPort(k.local)
		e.addrPort(k.remote)
	}
}

// roundMarker is a decoded round record.
type roundMarker struct {
	keyframe bool
	removed  []sockKey
}

func (d *decoder) round(m *roundMarker) {
	m.keyframe = d.b()&1 != 0
	n := d.u()
	m.removed = m.removed[:0]
	for i := uint64(0); i < n && d.err == nil; i++ {
		var k sockKey
		d.lastCk += uint64(d.s())
		k.cookie = d.lastCk
		k.netns = uint32(d.u())
		k.pid = uint32(d.u())
		k.local = d.addrPort()
		k.remote = d.addrPort()
		m.removed = append(m.removed, k)
	}
}

// roundReader rebuilds full rounds from change records.
type roundReader struct {
	table   map[sockKey]events.Event
	valid   bool // table holds the previous round
	in      bool // between a marker and its Done
	skip    bool // this round cannot be rebuilt (no keyframe yet)
	skipped int
	keys    []sockKey
}

func newRoundReader() *roundReader { return &roundReader{table: make(map[sockKey]events.Event)} }

// marker starts a round.
func (r *roundReader) marker(m *roundMarker) {
	r.in = true
	r.skip = !m.keyframe && !r.valid
	if m.keyframe {
		clear(r.table)
		r.valid = true
	}
	for _, k := range m.removed {
		delete(r.table, k)
	}
}

// lost says that blocks are missing: deltas have no base until the next
// keyframe.
func (r *roundReader) lost() {
	r.valid, r.in = false, false
	clear(r.table)
}

// done ends a round: it appends the round's sockets (sorted by key) and
// the Done event to out.
func (r *roundReader) done(done *events.Event, now int64, out []queued) []queued {
	r.in = false
	if r.skip {
		r.skip = false
		r.skipped++
		return out
	}
	r.keys = r.keys[:0]
	for k := range r.table {
		r.keys = append(r.keys, k)
	}
	slices.SortFunc(r.keys, compareKeys)
	for _, k := range r.keys {
		ev := r.table[k]
		ev.Sample.TimeNs = done.Sample.TimeNs
		out = append(out, queued{ev: ev, now: now})
	}
	return append(out, queued{ev: *done, now: now})
}

// queued is an event ready to be handed out.
type queued struct {
	ev  events.Event
	now int64
}
