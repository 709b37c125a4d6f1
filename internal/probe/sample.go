package probe

// The sockets open right now: the kernel's socks map read in batches.

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"

	"github.com/conntracer/conntracer/internal/bootclock"
	"github.com/conntracer/conntracer/internal/events"
)

// sampleBatch is how many entries one BPF_MAP_LOOKUP_BATCH call returns:
// 4096 x 128 bytes, half a megabyte of buffer reused across rounds.
const sampleBatch = 4096

// SocketSampler reads the kernel's table of live connections (the socks
// map of bpf/tcplife.bpf.c) and turns each entry into a KindSockOpen
// event. The tracer emits one record per connection when it closes; this
// is how it knows what is open in between, without a record per state
// change (which costs a churning workload a fifth of its rate).
//
// A round is not atomic: the kernel keeps changing the map while it is
// read, so a socket that changes bucket mid-read may be missed or seen
// twice in one round. Each round stands alone, so such an error lasts one
// interval.
//
// Not safe for concurrent use; it reuses its buffers from round to round.
type SocketSampler struct {
	m      *ebpf.Map
	keys   []uint64
	vals   []tcplifeSockState
	ev     events.Event
	cursor ebpf.MapBatchCursor
}

// SocketSampler returns a sampler of the probe's socket table. It is valid
// until the probe is closed.
func (p *Probe) SocketSampler() (*SocketSampler, error) {
	o := objectOf[*tcplifeObject](p)
	if o == nil || o.socks == nil {
		return nil, errors.New("socket table (map socks) not loaded")
	}
	return &SocketSampler{
		m:    o.socks,
		keys: make([]uint64, sampleBatch),
		vals: make([]tcplifeSockState, sampleBatch),
	}, nil
}

// Sample reads the whole table and calls emit once per socket, then once
// with KindSockSampleDone. Every event carries the round's time (boot
// ns, read before the table), so that an open time is never after it.
// emit must not keep the event. It returns the number of sockets read.
func (s *SocketSampler) Sample(emit func(*events.Event)) (int, error) {
	now := bootclock.Now()
	s.cursor = ebpf.MapBatchCursor{}
	total := 0
	for {
		n, err := s.m.BatchLookup(&s.cursor, s.keys, s.vals, nil)
		for i := 0; i < n; i++ {
			if s.fill(&s.vals[i], now) {
				emit(&s.ev)
				total++
			}
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			break
		}
		if err != nil {
			return total, fmt.Errorf("read socket table: %w", err)
		}
	}
	s.ev = events.Event{Kind: events.KindSockSampleDone, Sample: events.Sample{TimeNs: now}}
	emit(&s.ev)
	return total, nil
}

// fill turns one map value into s.ev; false for entries that are not open
// connections (a LISTEN or CLOSE state left over, no tuple).
func (s *SocketSampler) fill(v *tcplifeSockState, now uint64) bool {
	st := events.TCPState(v.State)
	if st == 0 || st == events.TCPClose || st == events.TCPListen || v.Family == 0 {
		return false
	}
	ev := &s.ev
	ev.Kind = events.KindSockOpen
	ev.Sample = events.Sample{TimeNs: now}
	flags := tcplifeConnFlags(v.Flags)
	c := &ev.Conn
	*c = events.Conn{}
	c.Cookie = v.Cookie
	c.NetNS = v.Netns
	c.Family, c.Local, c.Remote = decodeAddrs(v.Family, &v.Saddr, &v.Daddr, v.Sport, v.Dport)
	c.Role = decodeRole(tcplifeConnRole(v.Role))
	c.OpenNs = v.OpenNs
	c.LastState = st
	c.SeenOpen = flags&tcplifeConnFlagsCONN_SEEN_OPEN != 0
	c.TxBytes, c.RxBytes = 0, 0
	o := &c.Owner
	o.Source = decodeOwnerSource(flags)
	if o.Source != events.OwnerUnknown {
		o.PID = v.Owner.Tgid
		o.TID = v.Owner.Tid
		o.Comm = v.Owner.Comm
		o.CgroupID = v.Owner.CgroupId
		o.StartNs = v.Owner.StartNs
	}
	return true
}
