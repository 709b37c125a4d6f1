package probe

import (
	"net/netip"

	"github.com/conntracer/conntracer/internal/events"
)

// decodeConnClosed turns a conn_event into a KindConnClosed event.
func decodeConnClosed(raw []byte, ev *events.Event) {
	var r tcplifeConnEvent
	recordInto(raw, &r)
	flags := tcplifeConnFlags(r.Flags)
	c := &ev.Conn
	ev.Kind = events.KindConnClosed
	c.Cookie = r.Cookie
	c.NetNS = r.Netns
	c.Family, c.Local, c.Remote = decodeAddrs(r.Family, &r.Saddr, &r.Daddr, r.Sport, r.Dport)
	c.Role = decodeRole(tcplifeConnRole(r.Role))
	c.OpenNs = r.OpenNs
	c.CloseNs = r.CloseNs
	c.TxBytes = r.TxBytes
	c.RxBytes = r.RxBytes
	c.EndState = decodeEndState(tcplifeConnEndState(r.EndState))
	c.ClosedBy = decodeSide(tcplifeConnSide(r.ClosedBy))
	c.LastState = events.TCPState(r.LastState)
	c.Error = r.Error
	c.SeenOpen = flags&tcplifeConnFlagsCONN_SEEN_OPEN != 0
	c.EstablishedNs = r.EstablishedNs

	o := &c.Owner
	o.Source = decodeOwnerSource(flags)
	o.CgroupPath = ""
	if o.Source == events.OwnerUnknown {
		o.PID, o.TID, o.Comm, o.CgroupID, o.StartNs = 0, 0, [16]byte{}, 0, 0
		return
	}
	o.PID = r.Tgid
	o.TID = r.Tid
	o.Comm = r.Comm
	o.CgroupID = r.CgroupId
	o.StartNs = r.ProcStartNs
}

// decodeAddrs reports IPv4-mapped IPv6 connections (an AF_INET6 socket
// talking to an IPv4 peer) as IPv4, which is how operators think of them.
func decodeAddrs(family uint8, saddr, daddr *[16]uint8, sport, dport uint16) (events.Family, netip.AddrPort, netip.AddrPort) {
	if events.Family(family) == events.FamilyIPv4 {
		l := netip.AddrFrom4([4]byte(saddr[:4]))
		r := netip.AddrFrom4([4]byte(daddr[:4]))
		return events.FamilyIPv4, netip.AddrPortFrom(l, sport), netip.AddrPortFrom(r, dport)
	}
	l := netip.AddrFrom16(*saddr)
	r := netip.AddrFrom16(*daddr)
	if l.Is4In6() && r.Is4In6() {
		return events.FamilyIPv4, netip.AddrPortFrom(l.Unmap(), sport), netip.AddrPortFrom(r.Unmap(), dport)
	}
	return events.FamilyIPv6, netip.AddrPortFrom(l, sport), netip.AddrPortFrom(r, dport)
}

func decodeRole(r tcplifeConnRole) events.Role {
	switch r {
	case tcplifeConnRoleROLE_ACTIVE:
		return events.RoleActive
	case tcplifeConnRoleROLE_PASSIVE:
		return events.RolePassive
	}
	return events.RoleUnknown
}

func decodeEndState(e tcplifeConnEndState) events.EndState {
	switch e {
	case tcplifeConnEndStateEND_CONNECT_FAILED:
		return events.EndConnectFailed
	case tcplifeConnEndStateEND_RESET:
		return events.EndReset
	case tcplifeConnEndStateEND_TIME_WAIT:
		return events.EndTimeWait
	case tcplifeConnEndStateEND_CLOSE_WAIT:
		return events.EndCloseWait
	case tcplifeConnEndStateEND_CLOSED:
		return events.EndClosed
	case tcplifeConnEndStateEND_FIN_WAIT2:
		return events.EndFinWait2
	}
	return events.EndUnknown
}

func decodeSide(s tcplifeConnSide) events.Side {
	switch s {
	case tcplifeConnSideSIDE_LOCAL:
		return events.SideLocal
	case tcplifeConnSideSIDE_REMOTE:
		return events.SideRemote
	}
	return events.SideNone
}

func decodeOwnerSource(f tcplifeConnFlags) events.OwnerSource {
	switch {
	case f&tcplifeConnFlagsCONN_OWNER_CONNECT != 0:
		return events.OwnerConnect
	case f&tcplifeConnFlagsCONN_OWNER_ACCEPT != 0:
		return events.OwnerAccept
	case f&tcplifeConnFlagsCONN_OWNER_LISTENER != 0:
		return events.OwnerListener
	}
	return events.OwnerUnknown
}
