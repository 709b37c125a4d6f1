package record

import (
	"encoding/binary"
	"errors"
	"net/netip"

	"github.com/conntracer/conntracer/internal/events"
)

// Event encoding inside a block (before compression). Every event is
//
//	kind byte | zigzag(now - previous now) | parts mask byte | parts...
//
// and each part (Conn, Connect, Drop, Conntrack, Sample, Counters, ConntrackEntry, Cgroup; then,
// unmasked, the name of KindNetNSName) is a sequence of
// varints and bytes. What repeats is said once per block: strings (drop
// reasons, symbols, cgroup paths) and owners (Process) go into block-local
// tables and are referred to by index afterwards; kernel times are deltas
// from the previous kernel time of the block; socket cookies are deltas
// from the previous cookie. Zero times are flagged, not written.

// kindRound is the record-only kind of a socket-table round marker
// (rounds.go); events.Kind values stay below it.
const kindRound = 0xFE

// Limits that keep a damaged block from making the decoder allocate
// without bound.
const (
	maxTableEntries = 1 << 20
	maxStringLen    = 4096
)

const (
	partConn = 1 << iota
	partConnect
	partDrop
	partConntrack
	partSample
	// partCounters (KindKernelCounters, KindTracerCounters) was added
	// within version 1: files without it read as before.
	partCounters
	// partCtEntry (the conntrack entry lifecycle kinds) was added within
	// version 1 too.
	partCtEntry
	// partCgroup (KindCgroupIdentity) was added within version 1 too.
	partCgroup
	// The mask byte is full: parts added since are written for their
	// kind alone, after the masked parts (KindNetNSName: netnsName),
	// within version 1 too.
)

// errCorrupt is what the decoder reports for bytes it cannot parse.
var errCorrupt = errors.New("corrupt event data")

// encoder appends events to buf. Its tables are reset for every block.
type encoder struct {
	buf     []byte
	strs    map[string]uint32
	owners  map[events.Process]uint32
	lastNow int64
	lastTs  uint64
	lastCk  uint64
}

func newEncoder() *encoder {
	return &encoder{strs: make(map[string]uint32), owners: make(map[events.Process]uint32)}
}

// reset starts a block: tables and deltas start afresh.
func (e *encoder) reset(firstNow int64) {
	e.buf = e.buf[:0]
	clear(e.strs)
	clear(e.owners)
	e.lastNow, e.lastTs, e.lastCk = firstNow, 0, 0
}

func (e *encoder) u(v uint64) { e.buf = binary.AppendUvarint(e.buf, v) }
func (e *encoder) s(v int64)  { e.buf = binary.AppendVarint(e.buf, v) }
func (e *encoder) b(v uint8)  { e.buf = append(e.buf, v) }
func (e *encoder) flag(c bool) uint8 {
	if c {
		return 1
	}
	return 0
}

// ts writes a non-zero kernel time as a delta from the previous one.
func (e *encoder) ts(v uint64) {
	e.s(int64(v - e.lastTs))
	e.lastTs = v
}

func (e *encoder) str(v string) {
	if i, ok := e.strs[v]; ok {
		e.u(uint64(i))
		return
	}
	i := uint32(len(e.strs))
	e.u(uint64(i))
	e.u(uint64(len(v)))
	e.buf = append(e.buf, v...)
	e.strs[v] = i
}

func (e *encoder) owner(p *events.Process) {
	if i, ok := e.owners[*p]; ok {
		e.u(uint64(i))
		return
	}
	i := uint32(len(e.owners))
	e.u(uint64(i))
	e.u(uint64(p.PID))
	e.u(uint64(p.TID))
	n := len(p.Comm)
	for n > 0 && p.Comm[n-1] == 0 {
		n--
	}
	e.b(uint8(n))
	e.buf = append(e.buf, p.Comm[:n]...)
	e.u(p.CgroupID)
	e.u(p.StartNs)
	e.b(uint8(p.Source))
	e.str(p.CgroupPath)
	e.owners[*p] = i
}

func (e *encoder) addrPort(ap netip.AddrPort) {
	a := ap.Addr()
	switch {
	case !a.IsValid():
		e.b(0)
	case a.Is4():
		e.b(4)
		v := a.As4()
		e.buf = append(e.buf, v[:]...)
	default:
		if z := a.Zone(); z != "" {
			e.b(7)
			e.str(z)
		} else {
			e.b(6)
		}
		v := a.As16()
		e.buf = append(e.buf, v[:]...)
	}
	e.u(uint64(ap.Port()))
}

// event appends one event applied at now (Unix ns).
func (e *encoder) event(ev *events.Event, now int64) {
	e.b(uint8(ev.Kind))
	e.s(now - e.lastNow)
	e.lastNow = now
	var mask uint8
	if ev.Conn != (events.Conn{}) {
		mask |= partConn
	}
	if ev.Connect != (events.Connect{}) {
		mask |= partConnect
	}
	if ev.Drop != (events.Drop{}) {
		mask |= partDrop
	}
	if ev.Conntrack != (events.Conntrack{}) {
		mask |= partConntrack
	}
	if ev.Sample != (events.Sample{}) {
		mask |= partSample
	}
	if ev.Counters != (events.Counters{}) {
		mask |= partCounters
	}
	if ev.ConntrackEntry != (events.ConntrackEntry{}) {
		mask |= partCtEntry
	}
	if ev.Cgroup != (events.CgroupRecord{}) {
		mask |= partCgroup
	}
	e.b(mask)
	if mask&partConn != 0 {
		e.conn(&ev.Conn)
	}
	if mask&partConnect != 0 {
		e.connect(&ev.Connect)
	}
	if mask&partDrop != 0 {
		e.drop(&ev.Drop)
	}
	if mask&partConntrack != 0 {
		e.conntrack(&ev.Conntrack)
	}
	if mask&partSample != 0 {
		e.sample(&ev.Sample)
	}
	if mask&partCounters != 0 {
		e.counters(&ev.Counters)
	}
	if mask&partCtEntry != 0 {
		e.ctEntry(&ev.ConntrackEntry)
	}
	if mask&partCgroup != 0 {
		e.cgroup(&ev.Cgroup)
	}
	if ev.Kind == events.KindNetNSName {
		e.netnsName(&ev.NetNSName)
	}
}

// netnsName writes a namespace's name: its inode, name and source, the
// strings of the block's table.
func (e *encoder) netnsName(n *events.NetNSRecord) {
	e.u(uint64(n.Inode))
	e.str(n.Name)
	e.str(n.Source)
}

// cgroup writes a cgroup's identity: its id, path and names, each a
// string of the block's table.
func (e *encoder) cgroup(c *events.CgroupRecord) {
	e.u(c.ID)
	id := &c.Info.Identity
	for _, v := range [...]string{c.Info.Path, c.Info.Workload, id.Runtime, id.ContainerID, id.PodUID,
		id.Namespace, id.Pod, id.Container, id.Unit} {
		e.str(v)
	}
	e.b(e.flag(c.Info.Gone))
}

func (e *encoder) conn(c *events.Conn) {
	e.s(int64(c.Cookie - e.lastCk))
	e.lastCk = c.Cookie
	e.u(uint64(c.NetNS))
	e.b(uint8(c.Family))
	e.addrPort(c.Local)
	e.addrPort(c.Remote)
	e.b(uint8(c.Role))
	e.b(uint8(c.EndState))
	e.b(uint8(c.ClosedBy))
	e.b(uint8(c.LastState))
	e.b(c.Error)
	e.b(e.flag(c.SeenOpen) | e.flag(c.CloseNs != 0)<<1 | e.flag(c.OpenNs != 0)<<2 | e.flag(c.EstablishedNs != 0)<<3)
	e.owner(&c.Owner)
	// Close first: open and established are then short deltas from it.
	if c.CloseNs != 0 {
		e.ts(c.CloseNs)
	}
	if c.OpenNs != 0 {
		e.ts(c.OpenNs)
	}
	if c.EstablishedNs != 0 {
		e.ts(c.EstablishedNs)
	}
	e.u(c.TxBytes)
	e.u(c.RxBytes)
}

func (e *encoder) connect(c *events.Connect) {
	e.owner(&c.Owner)
	e.u(uint64(c.NetNS))
	e.b(uint8(c.Family))
	e.b(uint8(c.SockType))
	e.addrPort(c.Remote)
	e.b(c.Path.Len)
	e.buf = append(e.buf, c.Path.Bytes[:min(int(c.Path.Len), len(c.Path.Bytes))]...)
	e.b(c.Errno)
	e.u(c.Count)
	// Bit 4 (PeerAddr) came with Unix datagram sends, bit 5 (NoLatency)
	// with the optional connect() entry hook: older readers ignore them.
	e.b(e.flag(c.NonBlocking) | e.flag(c.AddrFault)<<1 | e.flag(c.StartNs != 0)<<2 | e.flag(c.EndNs != 0)<<3 | e.flag(c.PeerAddr)<<4 | e.flag(c.NoLatency)<<5)
	if c.StartNs != 0 {
		e.ts(c.StartNs)
	}
	if c.EndNs != 0 {
		e.ts(c.EndNs)
	}
	e.u(c.LatencySumNs)
	e.u(uint64(c.Backlog))
	e.u(uint64(c.Queue))
	e.u(uint64(c.Somaxconn))
}

func (e *encoder) drop(d *events.Drop) {
	e.u(uint64(d.Reason))
	e.str(d.ReasonName)
	e.u(d.Location)
	e.str(d.Symbol)
	e.u(uint64(d.NetNS))
	e.u(uint64(d.Ifindex))
	e.b(uint8(d.Family))
	e.b(d.L4Proto)
	e.b(d.TCPFlags)
	e.b(e.flag(d.HasPorts) | e.flag(d.NoCT)<<1 | e.flag(d.TimeNs != 0)<<2)
	e.addrPort(d.Src)
	e.addrPort(d.Dst)
	e.owner(&d.Owner)
	if d.TimeNs != 0 {
		e.ts(d.TimeNs)
	}
	e.u(d.Count)
	e.u(uint64(d.QueueLen))
	e.u(uint64(d.Backlog))
	e.u(uint64(d.Somaxconn))
}

func (e *encoder) conntrack(c *events.Conntrack) {
	e.u(uint64(c.NetNS))
	e.b(e.flag(c.TimeNs != 0))
	if c.TimeNs != 0 {
		e.ts(c.TimeNs)
	}
	for _, v := range [...]uint64{c.Entries, c.Max, c.Found, c.Invalid, c.Insert, c.InsertFailed, c.Drop, c.EarlyDrop, c.Error, c.SearchRestart} {
		e.u(v)
	}
	for _, v := range [...]uint32{c.TimeoutEstablished, c.TimeoutTimeWait, c.TimeoutCloseWait, c.TimeoutSynSent} {
		e.u(uint64(v))
	}
	// Fields of a per-owner conntrack count no tracer produced (owner,
	// protocol, state, generation): written empty, so that the part's
	// layout stays that of version 1.
	var none events.Process
	e.owner(&none)
	e.b(0)
	e.b(0)
	e.u(0)
}

func (e *encoder) ctEntry(c *events.ConntrackEntry) {
	e.u(uint64(c.NetNS))
	e.b(e.flag(c.TimeNs != 0) | e.flag(c.Dump)<<1)
	if c.TimeNs != 0 {
		e.ts(c.TimeNs)
	}
	e.u(uint64(c.ID))
	e.b(uint8(c.Family))
	e.b(c.Proto)
	e.addrPort(c.OrigSrc)
	e.addrPort(c.OrigDst)
	e.addrPort(c.ReplySrc)
	e.addrPort(c.ReplyDst)
	e.b(c.TCPState)
	e.u(uint64(c.Timeout))
	e.u(c.Generation)
	e.u(c.Lost)
	e.u(c.DumpEntries)
}

func (e *encoder) sample(s *events.Sample) {
	e.b(e.flag(s.TimeNs != 0))
	if s.TimeNs != 0 {
		e.ts(s.TimeNs)
	}
	e.u(s.ExpiresNs)
	e.u(uint64(s.PortLow))
	e.u(uint64(s.PortHigh))
}

// counters writes the values up to the last non-zero one, preceded by
// their number: a later tracer with more counter names writes more, and
// a reader knowing fewer skips the extra ones.
func (e *encoder) counters(c *events.Counters) {
	e.u(uint64(c.NetNS))
	e.b(e.flag(c.TimeNs != 0))
	if c.TimeNs != 0 {
		e.ts(c.TimeNs)
	}
	e.str(c.Object)
	n := len(c.Values)
	for n > 0 && c.Values[n-1] == 0 {
		n--
	}
	e.u(uint64(n))
	for _, v := range c.Values[:n] {
		e.u(v)
	}
}

// decoder reads events from one block's bytes. It never panics: every read
// is bounds-checked and the first failure sticks in err.
type decoder struct {
	data    []byte
	off     int
	err     error
	strs    []string
	owners  []events.Process
	lastNow int64
	lastTs  uint64
	lastCk  uint64
}

func (d *decoder) reset(data []byte, firstNow int64) {
	d.data, d.off, d.err = data, 0, nil
	d.strs = d.strs[:0]
	d.owners = d.owners[:0]
	d.lastNow, d.lastTs, d.lastCk = firstNow, 0, 0
}

func (d *decoder) more() bool { return d.err == nil && d.off < len(d.data) }

func (d *decoder) fail() {
	if d.err == nil {
		d.err = errCorrupt
	}
	d.off = len(d.data)
}

func (d *decoder) u() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.data[d.off:])
	if n <= 0 {
		d.fail()
		return 0
	}
	d.off += n
	return v
}

func (d *decoder) s() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.data[d.off:])
	if n <= 0 {
		d.fail()
		return 0
	}
	d.off += n
	return v
}

func (d *decoder) b() uint8 {
	if d.err != nil || d.off >= len(d.data) {
		d.fail()
		return 0
	}
	v := d.data[d.off]
	d.off++
	return v
}

func (d *decoder) bytes(n int) []byte {
	if d.err != nil || n < 0 || n > len(d.data)-d.off {
		d.fail()
		return nil
	}
	v := d.data[d.off : d.off+n]
	d.off += n
	return v
}

func (d *decoder) ts() uint64 {
	d.lastTs += uint64(d.s())
	return d.lastTs
}

func (d *decoder) str() string {
	i := d.u()
	if d.err != nil {
		return ""
	}
	if i < uint64(len(d.strs)) {
		return d.strs[i]
	}
	n := d.u()
	if i != uint64(len(d.strs)) || n > maxStringLen || len(d.strs) >= maxTableEntries {
		d.fail()
		return ""
	}
	v := string(d.bytes(int(n)))
	if d.err == nil {
		d.strs = append(d.strs, v)
	}
	return v
}

func (d *decoder) owner(p *events.Process) {
	i := d.u()
	if d.err != nil {
		return
	}
	if i < uint64(len(d.owners)) {
		*p = d.owners[i]
		return
	}
	if i != uint64(len(d.owners)) || len(d.owners) >= maxTableEntries {
		d.fail()
		return
	}
	*p = events.Process{}
	p.PID = uint32(d.u())
	p.TID = uint32(d.u())
	n := int(d.b())
	if n > len(p.Comm) {
		d.fail()
		return
	}
	copy(p.Comm[:], d.bytes(n))
	p.CgroupID = d.u()
	p.StartNs = d.u()
	p.Source = events.OwnerSource(d.b())
	p.CgroupPath = d.str()
	if d.err == nil {
		d.owners = append(d.owners, *p)
	}
}

func (d *decoder) addrPort() netip.AddrPort {
	var a netip.Addr
	switch d.b() {
	case 0:
	case 4:
		a = netip.AddrFrom4([4]byte(padTo(d.bytes(4), 4)))
	case 6:
		a = netip.AddrFrom16([16]byte(padTo(d.bytes(16), 16)))
	case 7:
		z := d.str()
		a = netip.AddrFrom16([16]byte(padTo(d.bytes(16), 16))).WithZone(z)
	default:
		d.fail()
	}
	return netip.AddrPortFrom(a, uint16(d.u()))
}

// padTo returns b, or n zero bytes when a failed read gave nil.
func padTo(b []byte, n int) []byte {
	if len(b) == n {
		return b
	}
	return make([]byte, n)
}

// event decodes the next event into ev and returns its time (Unix ns) and
// record kind (an events.Kind or kindRound).
func (d *decoder) event(ev *events.Event) (now int64, kind uint8) {
	kind = d.b()
	d.lastNow += d.s()
	now = d.lastNow
	if kind == kindRound {
		return now, kind // the marker's body is read by round()
	}
	*ev = events.Event{Kind: events.Kind(kind)}
	mask := d.b()
	if mask&^(partConn|partConnect|partDrop|partConntrack|partSample|partCounters|partCtEntry|partCgroup) != 0 {
		d.fail()
	}
	if mask&partConn != 0 {
		d.conn(&ev.Conn)
	}
	if mask&partConnect != 0 {
		d.connect(&ev.Connect)
	}
	if mask&partDrop != 0 {
		d.drop(&ev.Drop)
	}
	if mask&partConntrack != 0 {
		d.conntrack(&ev.Conntrack)
	}
	if mask&partSample != 0 {
		d.sample(&ev.Sample)
	}
	if mask&partCounters != 0 {
		d.counters(&ev.Counters)
	}
	if mask&partCtEntry != 0 {
		d.ctEntry(&ev.ConntrackEntry)
	}
	if mask&partCgroup != 0 {
		d.cgroup(&ev.Cgroup)
	}
	if ev.Kind == events.KindNetNSName {
		ev.NetNSName.Inode = uint32(d.u())
		ev.NetNSName.Name = d.str()
		ev.NetNSName.Source = d.str()
	}
	return now, kind
}

func (d *decoder) cgroup(c *events.CgroupRecord) {
	c.ID = d.u()
	id := &c.Info.Identity
	for _, v := range [...]*string{&c.Info.Path, &c.Info.Workload, &id.Runtime, &id.ContainerID, &id.PodUID,
		&id.Namespace, &id.Pod, &id.Container, &id.Unit} {
		*v = d.str()
	}
	c.Info.Gone = d.b() != 0
}

func (d *decoder) conn(c *events.Conn) {
	d.lastCk += uint64(d.s())
	c.Cookie = d.lastCk
	c.NetNS = uint32(d.u())
	c.Family = events.Family(d.b())
	c.Local = d.addrPort()
	c.Remote = d.addrPort()
	c.Role = events.Role(d.b())
	c.EndState = events.EndState(d.b())
	c.ClosedBy = events.Side(d.b())
	c.LastState = events.TCPState(d.b())
	c.Error = d.b()
	f := d.b()
	c.SeenOpen = f&1 != 0
	d.owner(&c.Owner)
	if f&2 != 0 {
		c.CloseNs = d.ts()
	}
	if f&4 != 0 {
		c.OpenNs = d.ts()
	}
	if f&8 != 0 {
		c.EstablishedNs = d.ts()
	}
	c.TxBytes = d.u()
	c.RxBytes = d.u()
}

func (d *decoder) connect(c *events.Connect) {
	d.owner(&c.Owner)
	c.NetNS = uint32(d.u())
	c.Family = events.Family(d.b())
	c.SockType = events.SockType(d.b())
	c.Remote = d.addrPort()
	n := d.b()
	if int(n) > len(c.Path.Bytes) {
		d.fail()
		return
	}
	copy(c.Path.Bytes[:], d.bytes(int(n)))
	c.Path.Len = n
	c.Errno = d.b()
	c.Count = d.u()
	f := d.b()
	c.NonBlocking, c.AddrFault, c.PeerAddr, c.NoLatency = f&1 != 0, f&2 != 0, f&16 != 0, f&32 != 0
	if f&4 != 0 {
		c.StartNs = d.ts()
	}
	if f&8 != 0 {
		c.EndNs = d.ts()
	}
	c.LatencySumNs = d.u()
	c.Backlog = uint32(d.u())
	c.Queue = uint32(d.u())
	c.Somaxconn = uint32(d.u())
}

func (d *decoder) drop(p *events.Drop) {
	p.Reason = uint32(d.u())
	p.ReasonName = d.str()
	p.Location = d.u()
	p.Symbol = d.str()
	p.NetNS = uint32(d.u())
	p.Ifindex = uint32(d.u())
	p.Family = events.Family(d.b())
	p.L4Proto = d.b()
	p.TCPFlags = d.b()
	f := d.b()
	p.HasPorts, p.NoCT = f&1 != 0, f&2 != 0
	p.Src = d.addrPort()
	p.Dst = d.addrPort()
	d.owner(&p.Owner)
	if f&4 != 0 {
		p.TimeNs = d.ts()
	}
	p.Count = d.u()
	p.QueueLen = uint32(d.u())
	p.Backlog = uint32(d.u())
	p.Somaxconn = uint32(d.u())
}

func (d *decoder) conntrack(c *events.Conntrack) {
	c.NetNS = uint32(d.u())
	if d.b()&1 != 0 {
		c.TimeNs = d.ts()
	}
	for _, p := range [...]*uint64{&c.Entries, &c.Max, &c.Found, &c.Invalid, &c.Insert, &c.InsertFailed, &c.Drop, &c.EarlyDrop, &c.Error, &c.SearchRestart} {
		*p = d.u()
	}
	for _, p := range [...]*uint32{&c.TimeoutEstablished, &c.TimeoutTimeWait, &c.TimeoutCloseWait, &c.TimeoutSynSent} {
		*p = uint32(d.u())
	}
	// The empty per-owner fields of version 1's layout (see the encoder).
	var none events.Process
	d.owner(&none)
	d.b()
	d.b()
	d.u()
}

func (d *decoder) ctEntry(c *events.ConntrackEntry) {
	c.NetNS = uint32(d.u())
	f := d.b()
	if f&1 != 0 {
		c.TimeNs = d.ts()
	}
	c.Dump = f&2 != 0
	c.ID = uint32(d.u())
	c.Family = events.Family(d.b())
	c.Proto = d.b()
	c.OrigSrc = d.addrPort()
	c.OrigDst = d.addrPort()
	c.ReplySrc = d.addrPort()
	c.ReplyDst = d.addrPort()
	c.TCPState = d.b()
	c.Timeout = uint32(d.u())
	c.Generation = d.u()
	c.Lost = d.u()
	c.DumpEntries = d.u()
}

func (d *decoder) sample(s *events.Sample) {
	if d.b()&1 != 0 {
		s.TimeNs = d.ts()
	}
	s.ExpiresNs = d.u()
	s.PortLow = uint16(d.u())
	s.PortHigh = uint16(d.u())
}

// maxCounterValues bounds the values a damaged counters part can claim.
const maxCounterValues = 1024

func (d *decoder) counters(c *events.Counters) {
	c.NetNS = uint32(d.u())
	if d.b()&1 != 0 {
		c.TimeNs = d.ts()
	}
	c.Object = d.str()
	n := d.u()
	if n > maxCounterValues {
		d.fail()
		return
	}
	for i := range int(n) {
		v := d.u()
		if d.err != nil {
			return
		}
		if i < len(c.Values) {
			c.Values[i] = v
		}
	}
}
