package aggregate

import (
	"github.com/conntracer/conntracer/internal/events"

	"cmp"
	"net/netip"
	"slices"
	"time"
)

// ConnectStats aggregates the connect() path: failed connects per process
// and destination by errno, Unix sockets per path with their callers and
// listener, and the connect latency (SYN_SENT -> ESTABLISHED) per process
// and destination. It is one component of the aggregator: feed it every
// event with Apply, read it with Snapshot and Findings.
//
// Sources, so that each failure is counted once:
//   - KindConnect: failures that connect() itself returned, and Unix
//     connects (counted by the kernel, Count calls per event);
//   - KindUnixDgramSend: failed sends on Unix datagram sockets, per path
//     and sender (counted by the kernel too);
//   - KindConnClosed, active side, EndConnectFailed: a TCP connect that
//     reached SYN_SENT and failed there (refused, timed out, unreachable),
//     which is how a non-blocking connect's EINPROGRESS ends. A blocking
//     connect that fails this way produces both this event and, right
//     after it, the connect() record with the same errno: that record is
//     recognised (same thread, its call brackets the SYN_SENT time) and not
//     counted again.
//
// Single-writer (the event loop); Snapshot returns copies.
type ConnectStats struct {
	failures  map[procDest]*failureAgg
	unix      map[unixKey]*unixAgg
	latency   map[procDest]*latencyAgg
	listeners map[unixKey]*listenerSample
	// pendingSync: per thread, the last TCP connect failure seen from
	// its socket's close, waiting for the connect() record that repeats
	// it when the connect was blocking.
	pendingSync map[uint32]syncFailure
	// MaxKeys bounds each table; beyond it new keys are counted in
	// Overflow instead of tracked.
	MaxKeys  int
	Overflow uint64
}

// NewConnectStats returns an empty component.
func NewConnectStats() *ConnectStats {
	return &ConnectStats{
		failures:    map[procDest]*failureAgg{},
		unix:        map[unixKey]*unixAgg{},
		latency:     map[procDest]*latencyAgg{},
		listeners:   map[unixKey]*listenerSample{},
		pendingSync: map[uint32]syncFailure{},
		MaxKeys:     20000,
	}
}

// procKey identifies a process across pid reuse.
type procKey struct {
	PID     uint32
	StartNs uint64
}

// destKey is a connect destination: an IP endpoint or a Unix address
// (abstract names are scoped to their namespace).
type destKey struct {
	Family events.Family
	Remote netip.AddrPort
	Path   events.UnixPath
	NetNS  uint32 // abstract Unix names only
}

type procDest struct {
	Proc procKey
	Dest destKey
}

type unixKey struct {
	Path  events.UnixPath
	NetNS uint32 // abstract names only
}

// errnoCounts counts calls by errno (0: success). A key sees a handful of
// distinct errnos, so a short slice beats a map or a 256-slot array (2 KiB
// a key) in memory and speed.
type errnoCounts []errnoCount

type errnoCount struct {
	errno uint8
	n     uint64
}

func (c *errnoCounts) add(errno uint8, n uint64) {
	for i := range *c {
		if (*c)[i].errno == errno {
			(*c)[i].n += n
			return
		}
	}
	*c = append(*c, errnoCount{errno, n})
}

func (c errnoCounts) get(errno uint8) uint64 {
	for _, e := range c {
		if e.errno == errno {
			return e.n
		}
	}
	return 0
}

type failureAgg struct {
	comm        [16]byte
	netns       uint32
	counts      errnoCounts
	first, last time.Time
}

type unixAgg struct {
	callers     map[procKey]*unixCaller
	sockType    events.SockType
	first, last time.Time
	// dgram: failed datagram sends to this path per sender
	// (KindUnixDgramSend), and when they were first and last seen.
	dgram                 map[procKey]*unixCaller
	dgramFirst, dgramLast time.Time
}

type unixCaller struct {
	comm   [16]byte
	counts errnoCounts
}

type listenerSample struct {
	owner                     events.Process
	backlog, queue, somaxconn uint32
	at                        time.Time
}

type syncFailure struct {
	openNs uint64
	remote netip.AddrPort
	at     time.Time
}

// latencyBuckets: bucket i counts latencies in [2^(i-1), 2^i) microseconds
// (bucket 0: under 1 us); the last is open-ended.
const latencyBuckets = 26

type latencyAgg struct {
	comm    [16]byte
	count   uint64
	sumNs   uint64
	buckets [latencyBuckets]uint64
}

func procOf(p *events.Process) procKey { return procKey{PID: p.PID, StartNs: p.StartNs} }

func unixKeyOf(c *events.Connect) unixKey {
	k := unixKey{Path: c.Path}
	if c.Path.Abstract() {
		k.NetNS = c.NetNS
	}
	return k
}

func destOfConnect(c *events.Connect) destKey {
	if c.Family == events.FamilyUnix {
		k := unixKeyOf(c)
		return destKey{Family: events.FamilyUnix, Path: k.Path, NetNS: k.NetNS}
	}
	return destKey{Family: c.Family, Remote: c.Remote}
}

// Apply folds one event into the statistics. now is the event's wall time
// (for replays, the recorded time).
func (s *ConnectStats) Apply(ev *events.Event, now time.Time) {
	switch ev.Kind {
	case events.KindConnect:
		s.applyConnect(&ev.Connect, now)
	case events.KindConnClosed:
		s.applyClosed(&ev.Conn, now)
	case events.KindUnixDgramSend:
		s.applyDgram(&ev.Connect, now)
	case events.KindUnixListener:
		c := &ev.Connect
		k := unixKeyOf(c)
		l := s.listeners[k]
		if l == nil {
			if len(s.listeners) >= s.MaxKeys {
				s.Overflow++
				return
			}
			l = &listenerSample{}
			s.listeners[k] = l
		}
		*l = listenerSample{owner: c.Owner, backlog: c.Backlog, queue: c.Queue, somaxconn: c.Somaxconn, at: now}
	}
}

func (s *ConnectStats) applyConnect(c *events.Connect, now time.Time) {
	if c.Family == events.FamilyUnix {
		s.applyUnix(c, now)
	}
	if !c.Failed() {
		return
	}
	if c.Family != events.FamilyUnix && c.Count == 1 {
		if p, ok := s.pendingSync[c.Owner.TID]; ok {
			delete(s.pendingSync, c.Owner.TID)
			// The thread was blocked in this call from the socket's
			// open to here (without the entry hook StartNs is 0).
			if p.remote == c.Remote && c.StartNs <= p.openNs && p.openNs <= c.EndNs {
				return // counted from the socket's close already
			}
		}
	}
	s.countFailure(procDest{procOf(&c.Owner), destOfConnect(c)}, &c.Owner, c.NetNS, c.Errno, c.Count, now)
}

// unixAggOf returns the path's aggregate, creating it; nil when the table
// is full (counted in Overflow).
func (s *ConnectStats) unixAggOf(k unixKey, now time.Time) *unixAgg {
	u := s.unix[k]
	if u == nil {
		if len(s.unix) >= s.MaxKeys {
			s.Overflow++
			return nil
		}
		u = &unixAgg{callers: map[procKey]*unixCaller{}, first: now}
		s.unix[k] = u
	}
	return u
}

func (s *ConnectStats) applyDgram(c *events.Connect, now time.Time) {
	u := s.unixAggOf(unixKeyOf(c), now)
	if u == nil {
		return
	}
	if u.dgram == nil {
		u.dgram = map[procKey]*unixCaller{}
		u.dgramFirst = now
	}
	u.dgramLast = now
	u.sockType = events.SockDgram
	pk := procOf(&c.Owner)
	cl := u.dgram[pk]
	if cl == nil {
		cl = &unixCaller{comm: c.Owner.Comm}
		u.dgram[pk] = cl
	}
	cl.counts.add(c.Errno, c.Count)
}

func (s *ConnectStats) applyUnix(c *events.Connect, now time.Time) {
	u := s.unixAggOf(unixKeyOf(c), now)
	if u == nil {
		return
	}
	u.last = now
	if c.SockType != events.SockUnknown {
		u.sockType = c.SockType
	}
	pk := procOf(&c.Owner)
	cl := u.callers[pk]
	if cl == nil {
		cl = &unixCaller{comm: c.Owner.Comm}
		u.callers[pk] = cl
	}
	cl.counts.add(c.Errno, c.Count)
}

func (s *ConnectStats) countFailure(k procDest, owner *events.Process, netns uint32, errno uint8, n uint64, now time.Time) {
	f := s.failures[k]
	if f == nil {
		if len(s.failures) >= s.MaxKeys {
			s.Overflow++
			return
		}
		f = &failureAgg{comm: owner.Comm, netns: netns, first: now}
		s.failures[k] = f
	}
	f.counts.add(errno, n)
	f.last = now
}

func (s *ConnectStats) applyClosed(c *events.Conn, now time.Time) {
	if c.Role != events.RoleActive || !c.Owner.Known() {
		return
	}
	k := procDest{procOf(&c.Owner), destKey{Family: c.Family, Remote: c.Remote}}
	if c.EndState == events.EndConnectFailed && c.Error != 0 {
		s.countFailure(k, &c.Owner, c.NetNS, c.Error, 1, now)
		if len(s.pendingSync) >= s.MaxKeys {
			s.prunePending(now)
		}
		s.pendingSync[c.Owner.TID] = syncFailure{openNs: c.OpenNs, remote: c.Remote, at: now}
		return
	}
	if c.OpenNs != 0 && c.EstablishedNs > c.OpenNs {
		l := s.latency[k]
		if l == nil {
			if len(s.latency) >= s.MaxKeys {
				s.Overflow++
				return
			}
			l = &latencyAgg{comm: c.Owner.Comm}
			s.latency[k] = l
		}
		l.observe(c.EstablishedNs - c.OpenNs)
	}
}

// prunePending forgets failures no connect() record can repeat any more.
func (s *ConnectStats) prunePending(now time.Time) {
	for tid, p := range s.pendingSync {
		if now.Sub(p.at) > 10*time.Second {
			delete(s.pendingSync, tid)
		}
	}
}

func (l *latencyAgg) observe(ns uint64) {
	l.count++
	l.sumNs += ns
	us := ns / 1000
	i := 0
	for us > 0 && i < latencyBuckets-1 {
		us >>= 1
		i++
	}
	l.buckets[i]++
}

// ConnectSnapshot is the connect path's part of the JSON snapshot.
type ConnectSnapshot struct {
	ConnectFailures []ConnectFailures `json:"connect_failures"`
	Unix            []UnixPathStats   `json:"unix"`
	ConnectLatency  []ConnectLatency  `json:"connect_latency"`
}

// ConnectFailures is one process's failed connects to one destination.
type ConnectFailures struct {
	PID         uint32            `json:"pid"`
	Comm        string            `json:"comm"`
	NetNS       uint32            `json:"netns"`
	Destination string            `json:"destination"`
	Family      string            `json:"family"`
	Counts      map[string]uint64 `json:"counts"` // by errno name
	Total       uint64            `json:"total"`
	First       time.Time         `json:"first"`
	Last        time.Time         `json:"last"`
}

// UnixPathStats is one Unix socket address: who connects and how it goes,
// and its listener as last sampled.
type UnixPathStats struct {
	Path         string       `json:"path"` // abstract names start with '@'
	NetNS        uint32       `json:"netns,omitempty"`
	SockType     string       `json:"sock_type"`
	ListenerPID  uint32       `json:"listener_pid"` // 0: no listener sampled
	ListenerComm string       `json:"listener_comm"`
	Backlog      uint32       `json:"backlog"`   // the listener's limit in effect
	Queue        uint32       `json:"queue"`     // waiting to be accepted
	Somaxconn    uint32       `json:"somaxconn"` // net.core.somaxconn
	Callers      []UnixCaller `json:"callers"`
	// DgramSendFailures are the senders whose datagrams to this path
	// failed: EAGAIN (the receiver's queue was full), ECONNREFUSED or
	// ENOENT (no receiver).
	DgramSendFailures []UnixCaller `json:"dgram_send_failures"`
	Last              time.Time    `json:"last"`
}

// UnixCaller is one process connecting to a Unix path.
type UnixCaller struct {
	PID    uint32            `json:"pid"`
	Comm   string            `json:"comm"`
	Counts map[string]uint64 `json:"counts"` // by errno name, "OK" for success
}

// ConnectLatency is the SYN_SENT -> ESTABLISHED latency of one process's
// connects to one destination.
type ConnectLatency struct {
	PID         uint32          `json:"pid"`
	Comm        string          `json:"comm"`
	Destination string          `json:"destination"`
	Count       uint64          `json:"count"`
	SumSeconds  float64         `json:"sum_seconds"`
	Buckets     []LatencyBucket `json:"buckets"` // cumulative, up to the last non-empty one
}

// LatencyBucket is a cumulative histogram bucket, as Prometheus has them.
type LatencyBucket struct {
	LeSeconds float64 `json:"le"` // +Inf is encoded as 0 on the last bucket: see Inf
	Count     uint64  `json:"count"`
	Inf       bool    `json:"inf,omitempty"`
}

func countsByName(c *errnoCounts, okName string) (map[string]uint64, uint64) {
	m := map[string]uint64{}
	var total uint64
	for _, ec := range *c {
		e, n := ec.errno, ec.n
		if n == 0 {
			continue
		}
		name := okName
		if e != 0 {
			name = events.ErrnoName(e)
		}
		if name == "" {
			continue
		}
		m[name] += n
		total += n
	}
	return m, total
}

// unixCallers lists callers by pid.
func unixCallers(m map[procKey]*unixCaller) []UnixCaller {
	out := []UnixCaller{}
	for pk, c := range m {
		counts, _ := countsByName(&c.counts, "OK")
		out = append(out, UnixCaller{PID: pk.PID, Comm: commString(&c.comm), Counts: counts})
	}
	slices.SortFunc(out, func(a, b UnixCaller) int { return cmp.Compare(a.PID, b.PID) })
	return out
}

func commString(c *[16]byte) string {
	p := events.Process{Comm: *c}
	return string(p.CommBytes())
}

func (d *destKey) String() string {
	c := events.Connect{Family: d.Family, Remote: d.Remote, Path: d.Path}
	return c.Destination()
}

// Snapshot returns the current state, sorted for stable output: failures
// and callers by count, paths by path.
func (s *ConnectStats) Snapshot() ConnectSnapshot {
	out := ConnectSnapshot{
		ConnectFailures: []ConnectFailures{},
		Unix:            []UnixPathStats{},
		ConnectLatency:  []ConnectLatency{},
	}
	for k, f := range s.failures {
		counts, total := countsByName(&f.counts, "OK")
		delete(counts, "OK")
		if total == 0 {
			continue
		}
		out.ConnectFailures = append(out.ConnectFailures, ConnectFailures{
			PID: k.Proc.PID, Comm: commString(&f.comm), NetNS: f.netns,
			Destination: k.Dest.String(), Family: k.Dest.Family.String(),
			Counts: counts, Total: total, First: f.first, Last: f.last,
		})
	}
	slices.SortFunc(out.ConnectFailures, func(a, b ConnectFailures) int {
		return cmp.Or(cmp.Compare(b.Total, a.Total), cmp.Compare(a.Destination, b.Destination), cmp.Compare(a.PID, b.PID))
	})

	paths := map[unixKey]bool{}
	for k := range s.unix {
		paths[k] = true
	}
	for k := range s.listeners {
		paths[k] = true
	}
	for k := range paths {
		st := UnixPathStats{
			Path: k.Path.String(), NetNS: k.NetNS, SockType: events.SockUnknown.String(),
			Callers: []UnixCaller{}, DgramSendFailures: []UnixCaller{},
		}
		if u := s.unix[k]; u != nil {
			st.SockType = u.sockType.String()
			st.Last = u.last
			if u.dgramLast.After(st.Last) {
				st.Last = u.dgramLast
			}
			st.Callers = unixCallers(u.callers)
			st.DgramSendFailures = unixCallers(u.dgram)
		}
		if l := s.listeners[k]; l != nil {
			st.ListenerPID = l.owner.PID
			st.ListenerComm = string(l.owner.CommBytes())
			st.Backlog, st.Queue, st.Somaxconn = l.backlog, l.queue, l.somaxconn
		}
		out.Unix = append(out.Unix, st)
	}
	slices.SortFunc(out.Unix, func(a, b UnixPathStats) int {
		return cmp.Or(cmp.Compare(a.Path, b.Path), cmp.Compare(a.NetNS, b.NetNS))
	})

	for k, l := range s.latency {
		cl := ConnectLatency{
			PID: k.Proc.PID, Comm: commString(&l.comm), Destination: k.Dest.String(),
			Count: l.count, SumSeconds: float64(l.sumNs) / 1e9,
		}
		last := 0
		for i, n := range l.buckets {
			if n > 0 {
				last = i
			}
		}
		var cum uint64
		for i := 0; i <= last; i++ {
			cum += l.buckets[i]
			b := LatencyBucket{Count: cum}
			if i == latencyBuckets-1 {
				b.Inf = true
			} else {
				b.LeSeconds = float64(uint64(1)<<i) / 1e6
			}
			cl.Buckets = append(cl.Buckets, b)
		}
		out.ConnectLatency = append(out.ConnectLatency, cl)
	}
	slices.SortFunc(out.ConnectLatency, func(a, b ConnectLatency) int {
		return cmp.Or(cmp.Compare(a.Destination, b.Destination), cmp.Compare(a.PID, b.PID))
	})
	return out
}
