package export

import (
	"net/netip"
	"strconv"
	"time"

	"github.com/conntracer/conntracer/internal/events"
)

// Streamed says whether the live stream (Stream.Print) has a line format
// for ev: closed connections, failed connects, drops and listen
// overflows. `tracer export` writes those as the stream does and the
// other kinds as EventJSON.
func Streamed(ev *events.Event) bool {
	switch ev.Kind {
	case events.KindConnClosed, events.KindDrop, events.KindListenOverflow:
		return true
	case events.KindConnect:
		return ev.Connect.Failed()
	}
	return false
}

// EventJSON is the JSON shape `tracer export` gives the kinds the live
// stream does not print (sampler rounds, conntrack statistics and
// entries, successful connects...): the time the event was applied, its
// type, and only the parts that are set. One schema, documented in the
// README: snake_case names, enums by name, kernel times as wall-clock
// RFC 3339 times, kernel addresses as hex strings (a JSON number above
// 2^53 is rounded by jq and JavaScript), null for what is not known.
// Names are stable; fields may be added.
type EventJSON struct {
	Time           time.Time           `json:"time"`
	Kind           string              `json:"type"`
	Comm           string              `json:"comm,omitempty"` // the owner's command name
	Conn           *ConnJSON           `json:"conn,omitempty"`
	Connect        *ConnectJSON        `json:"connect,omitempty"`
	Drop           *DropJSON           `json:"drop,omitempty"`
	Conntrack      *ConntrackJSON      `json:"conntrack,omitempty"`
	ConntrackEntry *ConntrackEntryJSON `json:"conntrack_entry,omitempty"`
	Sample         *SampleJSON         `json:"sample,omitempty"`
	Counters       *CountersJSON       `json:"counters,omitempty"`
	Cgroup         *CgroupJSON         `json:"cgroup,omitempty"`
	NetNSName      *NetNSNameJSON      `json:"netns_name,omitempty"`
}

// NetNSNameJSON is a network namespace's name (netns_name records): its
// inode, the name and where it came from (pod, container, netns, host).
type NetNSNameJSON struct {
	NetNS  uint32 `json:"netns"`
	Name   string `json:"name"`
	Source string `json:"source"`
}

// CgroupJSON is a cgroup's identity (cgroup_identity records): its id and
// path, what runs in it (the identity's fields, each only when known) and
// whether it was gone when recorded.
type CgroupJSON struct {
	ID   uint64 `json:"id"`
	Path string `json:"path"`
	events.Identity
	Workload string `json:"workload,omitempty"`
	Gone     bool   `json:"gone"`
}

// OwnerJSON is a process.
type OwnerJSON struct {
	PID        uint32 `json:"pid"`
	TID        uint32 `json:"tid"`
	Comm       string `json:"comm"`
	CgroupID   uint64 `json:"cgroup_id"`
	CgroupPath string `json:"cgroup_path,omitempty"`
	// Source says how the owner was learnt: connect, accept, listener,
	// scan... or "unknown" (then the other fields are 0).
	Source string `json:"source"`
}

// ConnJSON is a connection or a sampled socket.
type ConnJSON struct {
	Cookie          uint64     `json:"cookie"`
	NetNS           uint32     `json:"netns"`
	Family          string     `json:"family"`
	LocalAddr       *string    `json:"local_addr"`
	LocalPort       uint16     `json:"local_port"`
	RemoteAddr      *string    `json:"remote_addr"`
	RemotePort      uint16     `json:"remote_port"`
	Role            string     `json:"role"`
	Owner           OwnerJSON  `json:"owner"`
	OpenTime        *time.Time `json:"open_time"`        // null: opened before tracing
	EstablishedTime *time.Time `json:"established_time"` // null: not seen
	CloseTime       *time.Time `json:"close_time"`       // null: still open
	TxBytes         uint64     `json:"tx_bytes"`
	RxBytes         uint64     `json:"rx_bytes"`
	EndState        string     `json:"end_state"`
	ClosedBy        string     `json:"closed_by"`
	LastState       string     `json:"last_state"`
	Error           *string    `json:"error"` // errno name, null: none
	SeenOpen        bool       `json:"seen_open"`
}

// ConnectJSON is a connect() result, a Unix listener's sample or a Unix
// datagram send failure.
type ConnectJSON struct {
	Owner        OwnerJSON  `json:"owner"`
	NetNS        uint32     `json:"netns"`
	Family       string     `json:"family"`
	SockType     string     `json:"sock_type"`
	RemoteAddr   *string    `json:"remote_addr"`
	RemotePort   uint16     `json:"remote_port"`
	Path         *string    `json:"path"`
	Errno        *string    `json:"errno"` // null: success
	Count        uint64     `json:"count"`
	StartTime    *time.Time `json:"start_time"`
	EndTime      *time.Time `json:"end_time"`
	LatencySumNs *uint64    `json:"latency_sum_ns"` // null: not measured
	NonBlocking  bool       `json:"non_blocking"`
	AddrFault    bool       `json:"addr_fault"`
	PeerAddr     bool       `json:"peer_addr"`
	Backlog      uint32     `json:"backlog"`
	Queue        uint32     `json:"queue"`
	Somaxconn    uint32     `json:"somaxconn"`
}

// DropJSON is a dropped packet, a count of drops or a listen overflow.
type DropJSON struct {
	Reason     uint32     `json:"reason"`
	ReasonName string     `json:"reason_name"`
	Location   *string    `json:"location"` // kernel address, "0xffffffff81234567"
	Symbol     string     `json:"symbol,omitempty"`
	NetNS      uint32     `json:"netns"`
	Ifindex    uint32     `json:"ifindex"`
	Family     string     `json:"family"`
	Proto      uint8      `json:"proto"`
	TCPFlags   uint8      `json:"tcp_flags"`
	SrcAddr    *string    `json:"src_addr"`
	SrcPort    *uint16    `json:"src_port"`
	DstAddr    *string    `json:"dst_addr"`
	DstPort    *uint16    `json:"dst_port"`
	Owner      *OwnerJSON `json:"owner"`
	NoCT       bool       `json:"no_conntrack"`
	KernelTime *time.Time `json:"kernel_time"`
	Count      uint64     `json:"count"`
	QueueLen   uint32     `json:"queue_len"`
	Backlog    uint32     `json:"backlog"`
	Somaxconn  uint32     `json:"somaxconn"`
}

// ConntrackJSON is a namespace's conntrack table and statistics.
type ConntrackJSON struct {
	NetNS              uint32     `json:"netns"`
	KernelTime         *time.Time `json:"kernel_time"`
	Entries            uint64     `json:"entries"`
	Max                uint64     `json:"max"`
	Found              uint64     `json:"found"`
	Invalid            uint64     `json:"invalid"`
	Insert             uint64     `json:"insert"`
	InsertFailed       uint64     `json:"insert_failed"`
	Drop               uint64     `json:"drop"`
	EarlyDrop          uint64     `json:"early_drop"`
	Error              uint64     `json:"error"`
	SearchRestart      uint64     `json:"search_restart"`
	TimeoutEstablished *uint32    `json:"timeout_established"` // seconds, null: unreadable
	TimeoutTimeWait    *uint32    `json:"timeout_time_wait"`
	TimeoutCloseWait   *uint32    `json:"timeout_close_wait"`
	TimeoutSynSent     *uint32    `json:"timeout_syn_sent"`
}

// ConntrackEntryJSON is a conntrack entry's event.
type ConntrackEntryJSON struct {
	NetNS       uint32     `json:"netns"`
	KernelTime  *time.Time `json:"kernel_time"`
	ID          uint32     `json:"id"`
	Family      string     `json:"family"`
	Proto       uint8      `json:"proto"`
	OrigSrc     *string    `json:"orig_src"` // "addr:port"
	OrigDst     *string    `json:"orig_dst"`
	ReplySrc    *string    `json:"reply_src"`
	ReplyDst    *string    `json:"reply_dst"`
	TCPState    uint8      `json:"tcp_state"` // TCP_CONNTRACK_*, 0: not TCP
	Timeout     uint32     `json:"timeout"`
	Dump        bool       `json:"dump"`
	Generation  uint64     `json:"generation"`
	Lost        uint64     `json:"lost"`
	DumpEntries uint64     `json:"dump_entries"`
}

// SampleJSON holds the extra fields of sampler events.
type SampleJSON struct {
	SampledAt      *time.Time `json:"sampled_at"`
	ExpiresSeconds *float64   `json:"expires_seconds,omitempty"` // TIME_WAIT: left from sampled_at
	PortLow        *uint16    `json:"port_low,omitempty"`
	PortHigh       *uint16    `json:"port_high,omitempty"`
}

// CountersJSON are kernel or tracer counters by name, not index.
type CountersJSON struct {
	NetNS      uint32            `json:"netns"`
	Object     string            `json:"object,omitempty"`
	KernelTime *time.Time        `json:"kernel_time"`
	Values     map[string]uint64 `json:"values"`
}

// NewEventJSON converts ev, applied at now; wall converts kernel times
// (CLOCK_BOOTTIME ns) into wall-clock times of the recording host.
func NewEventJSON(ev *events.Event, now time.Time, wall func(uint64) time.Time) *EventJSON {
	kt := func(ns uint64) *time.Time {
		if ns == 0 {
			return nil
		}
		t := wall(ns).UTC()
		return &t
	}
	x := &EventJSON{Time: now.UTC(), Kind: ev.Kind.String()}
	if c := &ev.Conn; *c != (events.Conn{}) {
		x.Conn = &ConnJSON{Cookie: c.Cookie, NetNS: c.NetNS, Family: c.Family.String(),
			LocalAddr: addrOf(c.Local), LocalPort: c.Local.Port(), RemoteAddr: addrOf(c.Remote), RemotePort: c.Remote.Port(),
			Role: c.Role.String(), Owner: ownerJSON(&c.Owner), OpenTime: kt(c.OpenNs), EstablishedTime: kt(c.EstablishedNs),
			CloseTime: kt(c.CloseNs), TxBytes: c.TxBytes, RxBytes: c.RxBytes, EndState: c.EndState.String(),
			ClosedBy: c.ClosedBy.String(), LastState: c.LastState.String(), Error: errnoOf(c.Error), SeenOpen: c.SeenOpen}
		x.Comm = x.Conn.Owner.Comm
	}
	if c := &ev.Connect; *c != (events.Connect{}) {
		cj := &ConnectJSON{Owner: ownerJSON(&c.Owner), NetNS: c.NetNS, Family: c.Family.String(), SockType: c.SockType.String(),
			RemoteAddr: addrOf(c.Remote), RemotePort: c.Remote.Port(), Errno: errnoOf(c.Errno), Count: c.Count,
			StartTime: kt(c.StartNs), EndTime: kt(c.EndNs), NonBlocking: c.NonBlocking, AddrFault: c.AddrFault,
			PeerAddr: c.PeerAddr, Backlog: c.Backlog, Queue: c.Queue, Somaxconn: c.Somaxconn}
		if p := c.Path.String(); p != "" {
			cj.Path = &p
		}
		if !c.NoLatency {
			v := c.LatencySumNs
			cj.LatencySumNs = &v
		}
		x.Connect = cj
		x.Comm = cj.Owner.Comm
	}
	if d := &ev.Drop; *d != (events.Drop{}) {
		dj := &DropJSON{Reason: d.Reason, ReasonName: d.ReasonName, Symbol: d.Symbol, NetNS: d.NetNS, Ifindex: d.Ifindex,
			Family: d.Family.String(), Proto: d.L4Proto, TCPFlags: d.TCPFlags, SrcAddr: addrOf(d.Src), DstAddr: addrOf(d.Dst),
			NoCT: d.NoCT, KernelTime: kt(d.TimeNs), Count: d.Count, QueueLen: d.QueueLen, Backlog: d.Backlog, Somaxconn: d.Somaxconn}
		if d.Location != 0 {
			loc := "0x" + strconv.FormatUint(d.Location, 16)
			dj.Location = &loc
		}
		if d.HasPorts {
			sp, dp := d.Src.Port(), d.Dst.Port()
			dj.SrcPort, dj.DstPort = &sp, &dp
		}
		if d.Owner.Known() {
			o := ownerJSON(&d.Owner)
			dj.Owner = &o
		}
		x.Drop = dj
	}
	if c := &ev.Conntrack; *c != (events.Conntrack{}) {
		x.Conntrack = &ConntrackJSON{NetNS: c.NetNS, KernelTime: kt(c.TimeNs), Entries: c.Entries, Max: c.Max, Found: c.Found,
			Invalid: c.Invalid, Insert: c.Insert, InsertFailed: c.InsertFailed, Drop: c.Drop, EarlyDrop: c.EarlyDrop, Error: c.Error,
			SearchRestart: c.SearchRestart, TimeoutEstablished: nonZero(c.TimeoutEstablished), TimeoutTimeWait: nonZero(c.TimeoutTimeWait),
			TimeoutCloseWait: nonZero(c.TimeoutCloseWait), TimeoutSynSent: nonZero(c.TimeoutSynSent)}
	}
	if c := &ev.ConntrackEntry; *c != (events.ConntrackEntry{}) {
		x.ConntrackEntry = &ConntrackEntryJSON{NetNS: c.NetNS, KernelTime: kt(c.TimeNs), ID: c.ID, Family: c.Family.String(),
			Proto: c.Proto, OrigSrc: addrPortOf(c.OrigSrc), OrigDst: addrPortOf(c.OrigDst), ReplySrc: addrPortOf(c.ReplySrc),
			ReplyDst: addrPortOf(c.ReplyDst), TCPState: c.TCPState, Timeout: c.Timeout, Dump: c.Dump, Generation: c.Generation,
			Lost: c.Lost, DumpEntries: c.DumpEntries}
	}
	if s := &ev.Sample; *s != (events.Sample{}) {
		sj := &SampleJSON{SampledAt: kt(s.TimeNs)}
		if ev.Kind == events.KindTimeWait {
			v := float64(s.ExpiresNs) / 1e9
			sj.ExpiresSeconds = &v
		}
		if ev.Kind == events.KindPortRange {
			lo, hi := s.PortLow, s.PortHigh
			sj.PortLow, sj.PortHigh = &lo, &hi
		}
		x.Sample = sj
	}
	if c := &ev.Cgroup; *c != (events.CgroupRecord{}) {
		x.Cgroup = &CgroupJSON{ID: c.ID, Path: c.Info.Path, Identity: c.Info.Identity, Workload: c.Info.Workload, Gone: c.Info.Gone}
	}
	if n := ev.NetNSName; ev.Kind == events.KindNetNSName {
		x.NetNSName = &NetNSNameJSON{NetNS: n.Inode, Name: n.Name, Source: n.Source}
	}
	if ev.Counters != (events.Counters{}) {
		c := ev.Counters
		x.Counters = &CountersJSON{NetNS: c.NetNS, Object: c.Object, KernelTime: kt(c.TimeNs), Values: map[string]uint64{}}
		names := events.KernelCounterNames[:]
		if ev.Kind == events.KindTracerCounters {
			names = events.TracerCounterNames[:]
		}
		for i, n := range names {
			x.Counters.Values[n] = c.Values[i]
		}
	}
	return x
}

func ownerJSON(p *events.Process) OwnerJSON {
	return OwnerJSON{PID: p.PID, TID: p.TID, Comm: string(p.CommBytes()), CgroupID: p.CgroupID, CgroupPath: p.CgroupPath, Source: p.Source.String()}
}

// addrOf is ap's address, nil when there is none.
func addrOf(ap netip.AddrPort) *string {
	if !ap.Addr().IsValid() {
		return nil
	}
	s := ap.Addr().String()
	return &s
}

// addrPortOf is "addr:port", nil when there is no address.
func addrPortOf(ap netip.AddrPort) *string {
	if !ap.Addr().IsValid() {
		return nil
	}
	s := ap.String()
	return &s
}

// errnoOf names a socket error, nil for none.
func errnoOf(e uint8) *string {
	if e == 0 {
		return nil
	}
	s := events.ErrnoName(e)
	return &s
}

// nonZero is &v, nil for 0 (unknown).
func nonZero(v uint32) *uint32 {
	if v == 0 {
		return nil
	}
	return &v
}
