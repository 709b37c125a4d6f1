package export

import (
	"strconv"
	"time"

	"github.com/conntracer/conntracer/internal/events"
)

// Drop lines share the stream with connection lines. In text they start
// with "DROP" after the time, so that `grep DROP` separates them; in JSON
// their "type" is "drop" or "listen_overflow". Like connection lines they
// are formatted into the reused buffer without allocating.

func (s *Stream) appendDropText(b []byte, ev *events.Event) []byte {
	d := &ev.Drop
	b = s.clock(d.TimeNs).AppendFormat(b, "15:04:05.000")
	if ev.Kind == events.KindListenOverflow {
		b = append(b, " OVERFLOW "...)
		b = d.Dst.AppendTo(b)
		b = append(b, " x"...)
		b = strconv.AppendUint(b, d.Count, 10)
		b = append(b, " backlog "...)
		b = strconv.AppendUint(b, uint64(d.Backlog), 10)
		b = append(b, " somaxconn "...)
		b = strconv.AppendUint(b, uint64(d.Somaxconn), 10)
	} else {
		b = append(b, " DROP "...)
		b = append(b, d.ReasonName...)
		b = append(b, ' ')
		if p := events.ProtoName(d.L4Proto); p != "" {
			b = append(b, p...)
			b = append(b, ' ')
		}
		if d.Family != 0 {
			b = appendEndpoint(b, d)
		}
		b = append(b, " at "...)
		b = append(b, d.Symbol...)
		if d.Ifindex != 0 {
			b = append(b, " if "...)
			b = strconv.AppendUint(b, uint64(d.Ifindex), 10)
		}
	}
	b = append(b, " netns "...)
	b = strconv.AppendUint(b, uint64(d.NetNS), 10)
	if name := s.netnsNameOf(d.NetNS); name != "" {
		b = append(b, " ("...)
		b = append(b, name...)
		b = append(b, ')')
	}
	if d.Owner.PID != 0 {
		b = append(b, " pid "...)
		b = strconv.AppendUint(b, uint64(d.Owner.PID), 10)
		b = append(b, ' ')
		b = appendPrintable(b, d.Owner.CommBytes())
	}
	return append(b, '\n')
}

func appendEndpoint(b []byte, d *events.Drop) []byte {
	if d.HasPorts {
		b = d.Src.AppendTo(b)
		b = append(b, " -> "...)
		return d.Dst.AppendTo(b)
	}
	b = d.Src.Addr().AppendTo(b)
	b = append(b, " -> "...)
	return d.Dst.Addr().AppendTo(b)
}

// JSON fields of drop lines: documented with the connection fields, never
// renamed.
func (s *Stream) appendDropJSON(b []byte, ev *events.Event) []byte {
	d := &ev.Drop
	b = append(b, `{"time":"`...)
	b = s.clock(d.TimeNs).UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","type":"`...)
	b = append(b, ev.Kind.String()...)
	b = append(b, `","reason":"`...)
	b = append(b, d.ReasonName...)
	b = append(b, `","location":"`...)
	b = append(b, d.Symbol...)
	b = append(b, `","netns":`...)
	b = strconv.AppendUint(b, uint64(d.NetNS), 10)
	b = s.appendJSONNetNSName(b, d.NetNS)
	b = append(b, `,"ifindex":`...)
	b = strconv.AppendUint(b, uint64(d.Ifindex), 10)
	b = append(b, `,"family":"`...)
	b = append(b, d.Family.String()...)
	b = append(b, `","proto":"`...)
	b = append(b, events.ProtoName(d.L4Proto)...)
	b = append(b, `","src_addr":"`...)
	if d.Src.IsValid() {
		b = d.Src.Addr().AppendTo(b)
	}
	b = append(b, `","src_port":`...)
	b = strconv.AppendUint(b, uint64(d.Src.Port()), 10)
	b = append(b, `,"dst_addr":"`...)
	if d.Dst.IsValid() {
		b = d.Dst.Addr().AppendTo(b)
	}
	b = append(b, `","dst_port":`...)
	b = strconv.AppendUint(b, uint64(d.Dst.Port()), 10)
	b = append(b, `,"tcp_flags":`...)
	b = strconv.AppendUint(b, uint64(d.TCPFlags), 10)
	b = append(b, `,"no_conntrack_entry":`...)
	b = strconv.AppendBool(b, d.NoCT)
	b = append(b, `,"pid":`...)
	b = strconv.AppendUint(b, uint64(d.Owner.PID), 10)
	b = append(b, `,"comm":`...)
	b = appendJSONString(b, d.Owner.CommBytes())
	b = append(b, `,"owner":"`...)
	b = append(b, d.Owner.Source.String()...)
	b = append(b, `","count":`...)
	b = strconv.AppendUint(b, d.Count, 10)
	if ev.Kind == events.KindListenOverflow {
		b = append(b, `,"backlog":`...)
		b = strconv.AppendUint(b, uint64(d.Backlog), 10)
		b = append(b, `,"queue_len":`...)
		b = strconv.AppendUint(b, uint64(d.QueueLen), 10)
		b = append(b, `,"somaxconn":`...)
		b = strconv.AppendUint(b, uint64(d.Somaxconn), 10)
	}
	return append(b, "}\n"...)
}
