package kernel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/conntracer/conntracer/internal/events"
)

// ctnetlink entry messages and attributes, from the kernel's stable UAPI
// (include/uapi/linux/netfilter/nfnetlink_conntrack.h). Every CTA_*
// attribute is big-endian; tuples are nested.
const (
	ipctnlMsgCtNew    = 0 // IPCTNL_MSG_CT_NEW: an event, or one entry of a dump
	ipctnlMsgCtGet    = 1 // IPCTNL_MSG_CT_GET (with NLM_F_DUMP: the whole table)
	ipctnlMsgCtDelete = 2 // IPCTNL_MSG_CT_DELETE: a destroy event

	ctaTupleOrig  = 1  // CTA_TUPLE_ORIG (nested ctattr_tuple)
	ctaTupleReply = 2  // CTA_TUPLE_REPLY
	ctaProtoinfo  = 4  // CTA_PROTOINFO (nested ctattr_protoinfo)
	ctaTimeout    = 7  // CTA_TIMEOUT, u32 seconds
	ctaID         = 12 // CTA_ID, u32

	ctaTupleIP    = 1 // CTA_TUPLE_IP (nested ctattr_ip)
	ctaTupleProto = 2 // CTA_TUPLE_PROTO (nested ctattr_l4proto)

	ctaIPv4Src = 1 // CTA_IP_V4_SRC
	ctaIPv4Dst = 2 // CTA_IP_V4_DST
	ctaIPv6Src = 3 // CTA_IP_V6_SRC
	ctaIPv6Dst = 4 // CTA_IP_V6_DST

	ctaProtoNum     = 1 // CTA_PROTO_NUM, u8
	ctaProtoSrcPort = 2 // CTA_PROTO_SRC_PORT, be16
	ctaProtoDstPort = 3 // CTA_PROTO_DST_PORT, be16

	ctaProtoinfoTCP      = 1 // CTA_PROTOINFO_TCP (nested)
	ctaProtoinfoTCPState = 1 // CTA_PROTOINFO_TCP_STATE, u8 (enum tcp_conntrack)

	// Multicast groups of NETLINK_NETFILTER (enum nfnetlink_groups).
	nfnlgrpConntrackNew     = 1 // NFNLGRP_CONNTRACK_NEW
	nfnlgrpConntrackUpdate  = 2 // NFNLGRP_CONNTRACK_UPDATE
	nfnlgrpConntrackDestroy = 3 // NFNLGRP_CONNTRACK_DESTROY
)

// decodeCtEntry decodes one ctnetlink entry message (an event or an entry
// of a dump) into ev, in place, for namespace netns. It returns false for
// messages that are not entries (another subsystem or message type).
//
// What the kernel sends (net/netfilter/nf_conntrack_netlink.c,
// ctnetlink_conntrack_event): a confirmed new entry is IPCTNL_MSG_CT_NEW
// with NLM_F_CREATE|NLM_F_EXCL; a change of an existing entry (its TCP
// state, its status) is IPCTNL_MSG_CT_NEW without NLM_F_CREATE, which is
// not a new entry: it becomes KindConntrackUpdate; a removal is
// IPCTNL_MSG_CT_DELETE. Dump entries are IPCTNL_MSG_CT_NEW with
// NLM_F_MULTI, decoded as KindConntrackNew: the caller marks them Dump.
func decodeCtEntry(m *netlink.Message, netns uint32, ev *events.Event) (bool, error) {
	if uint16(m.Header.Type)>>8 != unix.NFNL_SUBSYS_CTNETLINK {
		return false, nil
	}
	switch uint16(m.Header.Type) & 0xff {
	case ipctnlMsgCtNew:
		ev.Kind = events.KindConntrackUpdate
		if m.Header.Flags&netlink.Create != 0 || m.Header.Flags&netlink.Multi != 0 {
			ev.Kind = events.KindConntrackNew
		}
	case ipctnlMsgCtDelete:
		ev.Kind = events.KindConntrackDestroy
	default:
		return false, nil
	}
	if len(m.Data) < 4 {
		return false, errors.New("ctnetlink entry shorter than its nfgenmsg header")
	}
	e := &ev.ConntrackEntry
	*e = events.ConntrackEntry{NetNS: netns, Family: events.Family(m.Data[0])}
	ad, err := netlink.NewAttributeDecoder(m.Data[4:])
	if err != nil {
		return false, fmt.Errorf("ctnetlink entry: %w", err)
	}
	ad.ByteOrder = binary.BigEndian
	for ad.Next() {
		switch ad.Type() {
		case ctaTupleOrig:
			ad.Nested(func(nad *netlink.AttributeDecoder) error {
				e.Proto = decodeCtTuple(nad, &e.OrigSrc, &e.OrigDst)
				return nil
			})
		case ctaTupleReply:
			ad.Nested(func(nad *netlink.AttributeDecoder) error {
				decodeCtTuple(nad, &e.ReplySrc, &e.ReplyDst)
				return nil
			})
		case ctaProtoinfo:
			ad.Nested(func(nad *netlink.AttributeDecoder) error {
				for nad.Next() {
					if nad.Type() != ctaProtoinfoTCP {
						continue
					}
					nad.Nested(func(tad *netlink.AttributeDecoder) error {
						for tad.Next() {
							if tad.Type() == ctaProtoinfoTCPState {
								e.TCPState = tad.Uint8()
							}
						}
						return nil
					})
				}
				return nil
			})
		case ctaTimeout:
			e.Timeout = ad.Uint32()
		case ctaID:
			e.ID = ad.Uint32()
		}
	}
	if err := ad.Err(); err != nil {
		return false, fmt.Errorf("ctnetlink entry: %w", err)
	}
	return true, nil
}

// decodeCtTuple reads a nested ctattr_tuple into src and dst, returning
// its layer 4 protocol. IPv4-mapped addresses stay as the kernel sent them.
func decodeCtTuple(ad *netlink.AttributeDecoder, src, dst *netip.AddrPort) uint8 {
	var (
		proto            uint8
		saddr, daddr     netip.Addr
		sport, dport     uint16
		haveSrc, haveDst bool
	)
	for ad.Next() {
		switch ad.Type() {
		case ctaTupleIP:
			ad.Nested(func(iad *netlink.AttributeDecoder) error {
				for iad.Next() {
					a, ok := netip.AddrFromSlice(iad.Bytes())
					if !ok {
						continue
					}
					switch iad.Type() {
					case ctaIPv4Src, ctaIPv6Src:
						saddr, haveSrc = a, true
					case ctaIPv4Dst, ctaIPv6Dst:
						daddr, haveDst = a, true
					}
				}
				return nil
			})
		case ctaTupleProto:
			ad.Nested(func(pad *netlink.AttributeDecoder) error {
				for pad.Next() {
					switch pad.Type() {
					case ctaProtoNum:
						proto = pad.Uint8()
					case ctaProtoSrcPort:
						sport = pad.Uint16()
					case ctaProtoDstPort:
						dport = pad.Uint16()
					}
				}
				return nil
			})
		}
	}
	if haveSrc {
		*src = netip.AddrPortFrom(saddr, sport)
	}
	if haveDst {
		*dst = netip.AddrPortFrom(daddr, dport)
	}
	return proto
}
