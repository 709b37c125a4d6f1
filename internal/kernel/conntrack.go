package kernel

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/conntracer/conntracer/internal/events"
)

// ctnetlink message types and attributes, from the kernel's stable UAPI
// (include/uapi/linux/netfilter/nfnetlink_conntrack.h).
const (
	ipctnlMsgCtGetStatsCPU = 4 // IPCTNL_MSG_CT_GET_STATS_CPU: one reply per CPU

	ctaStatsFound         = 2  // CTA_STATS_FOUND
	ctaStatsInvalid       = 4  // CTA_STATS_INVALID
	ctaStatsInsert        = 8  // CTA_STATS_INSERT
	ctaStatsInsertFailed  = 9  // CTA_STATS_INSERT_FAILED
	ctaStatsDrop          = 10 // CTA_STATS_DROP
	ctaStatsEarlyDrop     = 11 // CTA_STATS_EARLY_DROP
	ctaStatsError         = 12 // CTA_STATS_ERROR
	ctaStatsSearchRestart = 13 // CTA_STATS_SEARCH_RESTART
)

// ConntrackStats reads the per-CPU conntrack statistics of the network
// namespace open at nsFD through ctnetlink, summed over CPUs. The entry
// count and the max come from ReadNetNSProc: the kernel answers
// IPCTNL_MSG_CT_GET_STATS with a single NLM_F_MULTI message and no
// NLMSG_DONE (measured on 6.18, as `strace conntrack -C` shows), on which
// mdlayher/netlink's Execute waits forever. The
// netlink socket is created inside the namespace (Config.NetNS), so the
// numbers are that namespace's own, as `conntrack -S` run there shows.
// Conntrack must be loaded (nf_conntrack): otherwise the kernel answers
// EOPNOTSUPP or ENOENT, returned wrapped.
func ConntrackStats(nsFD int) (events.Conntrack, error) {
	var c events.Conntrack
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: nsFD})
	if err != nil {
		return c, fmt.Errorf("open ctnetlink socket: %w", err)
	}
	defer conn.Close()

	msgs, err := conn.Execute(ctRequest(ipctnlMsgCtGetStatsCPU, netlink.Request|netlink.Dump))
	if err != nil {
		return c, fmt.Errorf("ctnetlink get per-CPU stats: %w", err)
	}
	for _, m := range msgs {
		if err := decodeCtAttrs(m.Data, func(typ uint16, v uint32) {
			switch typ {
			case ctaStatsFound:
				c.Found += uint64(v)
			case ctaStatsInvalid:
				c.Invalid += uint64(v)
			case ctaStatsInsert:
				c.Insert += uint64(v)
			case ctaStatsInsertFailed:
				c.InsertFailed += uint64(v)
			case ctaStatsDrop:
				c.Drop += uint64(v)
			case ctaStatsEarlyDrop:
				c.EarlyDrop += uint64(v)
			case ctaStatsError:
				c.Error += uint64(v)
			case ctaStatsSearchRestart:
				c.SearchRestart += uint64(v)
			}
		}); err != nil {
			return c, fmt.Errorf("ctnetlink per-CPU stats: %w", err)
		}
	}

	return c, nil
}

// ctRequest builds a ctnetlink request: the nfnetlink header (struct
// nfgenmsg: family, version, resource id) followed by no attributes.
func ctRequest(msg uint16, flags netlink.HeaderFlags) netlink.Message {
	return netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_CTNETLINK<<8 | msg),
			Flags: flags,
		},
		Data: []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, 0},
	}
}

// decodeCtAttrs walks the big-endian u32 attributes after the nfgenmsg
// header of a ctnetlink reply.
func decodeCtAttrs(data []byte, fn func(typ uint16, v uint32)) error {
	if len(data) < 4 {
		return errors.New("reply shorter than its nfgenmsg header")
	}
	ad, err := netlink.NewAttributeDecoder(data[4:])
	if err != nil {
		return err
	}
	ad.ByteOrder = binary.BigEndian
	for ad.Next() {
		if len(ad.Bytes()) == 4 {
			fn(ad.Type(), ad.Uint32())
		}
	}
	return ad.Err()
}
