package probe

import (
	"errors"
	"fmt"
	"time"

	"github.com/cilium/ebpf"

	"github.com/conntracer/conntracer/internal/events"
)

const (
	// unixPollInterval is how often the event loop reads the kernel's
	// Unix connect counts: a failing Unix connect shows up at most this
	// late in the stream.
	unixPollInterval = 500 * time.Millisecond
	// unixIdleDelete: keys that saw no call for this long are deleted
	// from the kernel map (their counts were reported), so that it holds
	// the active callers only.
	unixIdleDelete = time.Minute
)

// unixSeen is what the poller last reported for one kernel key.
type unixSeen struct {
	calls, latencySum uint64
	changed           time.Time
}

// unixPoller turns the kernel's per-key counts of Unix connects (or of
// failed Unix datagram sends: same key and value) into events carrying the
// calls made since the previous poll. It belongs to the event loop
// goroutine.
type unixPoller struct {
	m    *ebpf.Map
	kind events.Kind // KindConnect or KindUnixDgramSend
	last time.Time
	seen map[connectUnixConnectKey]unixSeen
	// Reused across polls so that polling does not allocate per key.
	key  connectUnixConnectKey
	val  connectUnixConnectStats
	idle []connectUnixConnectKey
}

func newUnixPoller(m *ebpf.Map, kind events.Kind) *unixPoller {
	return &unixPoller{m: m, kind: kind, seen: map[connectUnixConnectKey]unixSeen{}}
}

// poll reads the map if the interval has passed (always when final) and
// hands one event of u.kind per changed key to h, through ev.
func (u *unixPoller) poll(ev *events.Event, h Handler, final bool) error {
	now := time.Now()
	if !final && now.Sub(u.last) < unixPollInterval {
		return nil
	}
	u.last = now
	u.idle = u.idle[:0]
	it := u.m.Iterate()
	for it.Next(&u.key, &u.val) {
		s, ok := u.seen[u.key]
		if ok && s.calls == u.val.Calls {
			if now.Sub(s.changed) > unixIdleDelete {
				u.idle = append(u.idle, u.key)
			}
			continue
		}
		u.emit(ev, h, &u.key, &u.val, s)
		u.seen[u.key] = unixSeen{calls: u.val.Calls, latencySum: u.val.LatencySumNs, changed: now}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read unix_connects: %w", err)
	}
	for i := range u.idle {
		k := &u.idle[i]
		// LookupAndDelete returns the final counts: a call made since
		// the read above is still reported.
		if err := u.m.LookupAndDelete(k, &u.val); err != nil {
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				delete(u.seen, *k)
				continue
			}
			return fmt.Errorf("delete idle unix_connects key: %w", err)
		}
		if s := u.seen[*k]; s.calls != u.val.Calls {
			u.emit(ev, h, k, &u.val, s)
		}
		delete(u.seen, *k)
	}
	return nil
}

func (u *unixPoller) emit(ev *events.Event, h Handler, k *connectUnixConnectKey, v *connectUnixConnectStats, prev unixSeen) {
	flags := connectConnectFlags(v.Flags)
	c := &ev.Connect
	ev.Kind = u.kind
	*c = events.Connect{
		Owner: events.Process{
			PID: k.Tgid, TID: v.Tid, Comm: v.Comm, CgroupID: v.CgroupId, StartNs: k.ProcStartNs,
			Source: events.OwnerConnect,
		},
		NetNS:        k.Netns,
		Family:       events.FamilyUnix,
		SockType:     events.SockType(v.SockType),
		Errno:        k.Errno,
		Count:        v.Calls - prev.calls,
		StartNs:      v.FirstNs,
		EndNs:        v.LastNs,
		LatencySumNs: v.LatencySumNs - prev.latencySum,
		NonBlocking:  flags&connectConnectFlagsCONNECT_NONBLOCK != 0,
		AddrFault:    flags&connectConnectFlagsCONNECT_ADDR_FAULT != 0,
		PeerAddr:     flags&connectConnectFlagsCONNECT_PEER != 0,
		NoLatency:    flags&connectConnectFlagsCONNECT_NO_LATENCY != 0,
	}
	n := min(int(k.PathLen), len(k.Path))
	c.Path.Set(k.Path[:n])
	h.HandleEvent(ev)
}
