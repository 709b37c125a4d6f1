package aggregate

import (
	"github.com/conntracer/conntracer/internal/events"

	"cmp"
	"fmt"
	"slices"
	"time"
)

// ConnectRules are the thresholds of the connect path's findings. A rule
// fires on counts accumulated since tracing started whose last failure is
// within Window of now.
type ConnectRules struct {
	Window time.Duration
	// MinBacklogOverflows: EAGAIN connects to one Unix path.
	MinBacklogOverflows uint64
	// MinExhaustion: EADDRNOTAVAIL connects of one process to one
	// destination.
	MinExhaustion uint64
	// MinRefused, MinTimeouts: per destination, all processes together.
	MinRefused  uint64
	MinTimeouts uint64
	// MinDgramQueueFull: datagram sends to one Unix path failing with
	// EAGAIN, all senders together.
	MinDgramQueueFull uint64
}

// DefaultConnectRules: one overflow or exhausted port range is already a
// user-visible failure; refusals and timeouts are only a storm in numbers.
func DefaultConnectRules() ConnectRules {
	return ConnectRules{Window: 5 * time.Minute, MinBacklogOverflows: 1, MinExhaustion: 1, MinRefused: 20, MinTimeouts: 5, MinDgramQueueFull: 1}
}

// PortInfoFunc looks up the port information of a namespace; nil, or
// ok false, when unknown. The caller injects it (SetConnectRules): this
// package cannot read the kernel (internal/kernel's PortInfoCache.Lookup
// is one).
type PortInfoFunc func(netns uint32) (events.PortInfo, bool)

// ConnectFindings evaluates the connect path's rules. ports may be nil.
func (s *ConnectStats) ConnectFindings(now time.Time, r ConnectRules, ports PortInfoFunc) []Finding {
	var out []Finding
	out = append(out, s.unixBacklogFindings(now, r)...)
	out = append(out, s.unixDgramFindings(now, r)...)
	out = append(out, s.portExhaustionFindings(now, r, ports)...)
	out = append(out, s.stormFindings(now, r, events.ErrnoECONNREFUSED, r.MinRefused, "connect_refused",
		"connections to %s are refused (%d times): nothing listens there, or its accept queue overflowed",
		"check that the service at the destination is up and listening on that port; if it restarts, make clients back off and retry")...)
	out = append(out, s.stormFindings(now, r, events.ErrnoETIMEDOUT, r.MinTimeouts, "connect_timeouts",
		"connects to %s time out (%d times): SYNs get no answer (host down, a firewall dropping, a full SYN queue)",
		"check routing and firewall rules towards the destination (nft list ruleset, iptables -S), and the peer's SYN backlog (ListenOverflows in nstat)")...)
	slices.SortFunc(out, func(a, b Finding) int {
		return cmp.Or(cmp.Compare(a.Kind, b.Kind), cmp.Compare(a.Path, b.Path), cmp.Compare(a.Remote, b.Remote), cmp.Compare(a.PID, b.PID))
	})
	return out
}

func (s *ConnectStats) recent(last, now time.Time, r ConnectRules) bool {
	return r.Window <= 0 || now.Sub(last) <= r.Window
}

// unixBacklogFindings: a Unix path whose connects fail with EAGAIN, the
// listener's backlog being full (field note 4).
func (s *ConnectStats) unixBacklogFindings(now time.Time, r ConnectRules) []Finding {
	var out []Finding
	for k, u := range s.unix {
		if !s.recent(u.last, now, r) {
			continue
		}
		total, top, ev := eagainByCaller(u.callers, "caller")
		if total < max(r.MinBacklogOverflows, 1) {
			continue
		}
		path := k.Path.String()
		ev["eagain"] = float64(total)
		ev["callers"] = float64(len(u.callers))
		f := Finding{
			Kind: "unix_backlog_overflow", PID: top.PID, Comm: commString(&u.callers[top].comm),
			Path: path, NetNS: k.NetNS, Last: u.last, Since: u.first, Evidence: ev,
		}
		listener := "no listener sampled"
		if l := s.listeners[k]; l != nil {
			ev["listener_pid"] = float64(l.owner.PID)
			ev["backlog"] = float64(l.backlog)
			ev["queue"] = float64(l.queue)
			ev["somaxconn"] = float64(l.somaxconn)
			listener = fmt.Sprintf("listener %s (pid %d) has %d of %d queued", l.owner.CommBytes(), l.owner.PID, l.queue, l.backlog)
		}
		f.Message = fmt.Sprintf("%d connects to %s failed with EAGAIN: its accept backlog is full (%s); %d caller(s), most from %s (pid %d)",
			total, path, listener, len(u.callers), f.Comm, f.PID)
		f.Remedy = "the listener accepts too slowly: add workers, or raise its backlog (PHP-FPM listen.backlog, nginx listen ... backlog=) and net.core.somaxconn, which caps it"
		out = append(out, f)
	}
	return out
}

// unixDgramFindings: datagrams to a Unix path failing with EAGAIN, the
// receiver's queue being full (a syslog or journald socket under a burst
// of logging, a metrics agent that stalls).
func (s *ConnectStats) unixDgramFindings(now time.Time, r ConnectRules) []Finding {
	var out []Finding
	for k, u := range s.unix {
		if len(u.dgram) == 0 || !s.recent(u.dgramLast, now, r) {
			continue
		}
		total, top, ev := eagainByCaller(u.dgram, "sender")
		if total < max(r.MinDgramQueueFull, 1) {
			continue
		}
		path := k.Path.String()
		if k.Path.Len == 0 {
			path = "(the connected peer, gone)"
		}
		ev["eagain"] = float64(total)
		ev["senders"] = float64(len(u.dgram))
		f := Finding{
			Kind: "unix_dgram_queue_full", PID: top.PID, Comm: commString(&u.dgram[top].comm),
			Path: k.Path.String(), NetNS: k.NetNS, Last: u.dgramLast, Since: u.dgramFirst, Evidence: ev,
		}
		f.Message = fmt.Sprintf("%d datagrams to %s failed with EAGAIN: the receiver's queue is full; %d sender(s), most from %s (pid %d)",
			total, path, len(u.dgram), f.Comm, f.PID)
		f.Remedy = "the receiver reads too slowly (journald or rsyslog under a burst of logging, say): make it keep up, " +
			"or raise net.unix.max_dgram_qlen (datagrams a receiving socket may queue, default 10; " +
			"read when the socket is created, so restart the receiver) and the senders' SO_SNDBUF, which also holds unread datagrams"
		out = append(out, f)
	}
	return out
}

// portExhaustionFindings: connects failing with EADDRNOTAVAIL, the
// ephemeral port range being used up towards a destination (field note 2).
func (s *ConnectStats) portExhaustionFindings(now time.Time, r ConnectRules, ports PortInfoFunc) []Finding {
	var out []Finding
	for k, f := range s.failures {
		n := f.counts.get(events.ErrnoEADDRNOTAVAIL)
		if n < max(r.MinExhaustion, 1) || !s.recent(f.last, now, r) {
			continue
		}
		dest := k.Dest.String()
		ev := map[string]float64{"eaddrnotavail": float64(n)}
		detail := ""
		if ports != nil {
			if pi, ok := ports(f.netns); ok {
				size := int(pi.High) - int(pi.Low) + 1
				ev["port_range_low"], ev["port_range_high"] = float64(pi.Low), float64(pi.High)
				ev["port_range_size"] = float64(size)
				inUse := pi.InUse[k.Dest.Remote]
				ev["ports_in_use"] = float64(inUse)
				detail = fmt.Sprintf(" (%d ports in use towards it, range %d-%d)", inUse, pi.Low, pi.High)
			}
		}
		out = append(out, Finding{
			Kind: "port_exhaustion", PID: k.Proc.PID, Comm: commString(&f.comm), Remote: dest, NetNS: f.netns,
			Since: f.first, Last: f.last, Evidence: ev,
			Message: fmt.Sprintf("%d connects from %s (pid %d) to %s failed with EADDRNOTAVAIL: no free ephemeral port%s",
				n, commString(&f.comm), k.Proc.PID, dest, detail),
			Remedy: "reuse connections (keep-alive, a pool); widen net.ipv4.ip_local_port_range; set net.ipv4.tcp_tw_reuse=1 for outgoing connections stuck in TIME_WAIT",
		})
	}
	return out
}

// stormFindings: one finding per destination whose connects failed with
// errno at least min times, all processes together; named after the
// process that failed most.
func (s *ConnectStats) stormFindings(now time.Time, r ConnectRules, errno uint8, min uint64, kind, msg, remedy string) []Finding {
	type agg struct {
		total       uint64
		top         procKey
		topN        uint64
		comm        [16]byte
		netns       uint32
		first, last time.Time
		procs       int
	}
	byDest := map[destKey]*agg{}
	for k, f := range s.failures {
		n := f.counts.get(errno)
		if n == 0 || !s.recent(f.last, now, r) {
			continue
		}
		a := byDest[k.Dest]
		if a == nil {
			a = &agg{first: f.first}
			byDest[k.Dest] = a
		}
		a.total += n
		a.procs++
		if n > a.topN {
			a.top, a.topN, a.comm, a.netns = k.Proc, n, f.comm, f.netns
		}
		if f.first.Before(a.first) {
			a.first = f.first
		}
		if f.last.After(a.last) {
			a.last = f.last
		}
	}
	var out []Finding
	for d, a := range byDest {
		if a.total < max(min, 1) {
			continue
		}
		dest := d.String()
		f := Finding{
			Kind: kind, PID: a.top.PID, Comm: commString(&a.comm), Remote: dest, NetNS: a.netns,
			Since: a.first, Last: a.last, Message: fmt.Sprintf(msg, dest, a.total), Remedy: remedy,
			Evidence: map[string]float64{"failures": float64(a.total), "processes": float64(a.procs)},
		}
		if d.Family == events.FamilyUnix {
			f.Remote, f.Path = "", dest
		}
		out = append(out, f)
	}
	return out
}

// eagainByCaller sums the EAGAIN failures of a Unix path's callers (or
// datagram senders) and names the one with the most; the evidence holds
// each one's count as "<role>_<pid>_<comm>_eagain".
func eagainByCaller(callers map[procKey]*unixCaller, role string) (total uint64, top procKey, ev map[string]float64) {
	ev = map[string]float64{}
	var topN uint64
	for pk, c := range callers {
		n := c.counts.get(events.ErrnoEAGAIN)
		total += n
		if n > topN {
			top, topN = pk, n
		}
		if n > 0 {
			ev[fmt.Sprintf("%s_%d_%s_eagain", role, pk.PID, commString(&c.comm))] = float64(n)
		}
	}
	return total, top, ev
}
