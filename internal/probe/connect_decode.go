package probe

import (
	"net/netip"

	"github.com/conntracer/conntracer/internal/events"
)

// decodeConnect fills ev.Connect from a connect_event record.
func decodeConnect(raw []byte, ev *events.Event) {
	var r connectConnectEvent
	recordInto(raw, &r)
	flags := connectConnectFlags(r.Flags)
	c := &ev.Connect
	ev.Kind = events.KindConnect
	c.Owner = events.Process{
		PID: r.Tgid, TID: r.Tid, Comm: r.Comm, CgroupID: r.CgroupId, StartNs: r.ProcStartNs,
		Source: events.OwnerConnect,
	}
	c.NetNS = r.Netns
	c.Family = events.Family(r.Family)
	c.SockType = events.SockType(r.SockType)
	c.Remote = netip.AddrPort{}
	c.Path = events.UnixPath{}
	switch c.Family {
	case events.FamilyIPv4:
		c.Remote = netip.AddrPortFrom(netip.AddrFrom4([4]byte(r.Daddr[:4])), r.Dport)
	case events.FamilyIPv6:
		a := netip.AddrFrom16(r.Daddr)
		if a.Is4In6() {
			// An IPv6 socket connecting to an IPv4 peer, reported as
			// IPv4 like decodeAddrs does for connections.
			c.Family = events.FamilyIPv4
			a = a.Unmap()
		}
		c.Remote = netip.AddrPortFrom(a, r.Dport)
	case events.FamilyUnix:
		n := min(int(r.PathLen), len(r.Path))
		c.Path.Set(r.Path[:n])
	}
	c.Errno = 0
	if r.Ret < 0 && r.Ret > -256 {
		c.Errno = uint8(-r.Ret)
	}
	c.Count = 1
	c.StartNs = r.StartNs
	c.EndNs = r.EndNs
	c.LatencySumNs = 0
	c.NoLatency = flags&connectConnectFlagsCONNECT_NO_LATENCY != 0 || r.StartNs == 0
	if !c.NoLatency && r.EndNs > r.StartNs {
		c.LatencySumNs = r.EndNs - r.StartNs
	}
	c.NonBlocking = flags&connectConnectFlagsCONNECT_NONBLOCK != 0
	c.AddrFault = flags&connectConnectFlagsCONNECT_ADDR_FAULT != 0
	c.PeerAddr = false
	c.Backlog, c.Queue, c.Somaxconn = 0, 0, 0
}
