package export

// The stream's line formatting as it was before the formatting was made
// faster (commit eed9e6e), kept verbatim (helpers renamed ref*, the JSON
// time printed by the standard library instead of the per-second cache) as
// the oracle that stream_equiv_test.go compares every faster form with.
// Do not "improve" this file: its only job is to stay what it was.

import (
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/conntracer/conntracer/internal/events"
)

// refStream formats lines the way Stream did.
type refStream struct {
	clock   Clock
	scratch []byte
}

// line returns the reference line for ev ("" for kinds Stream ignores),
// without the text header.
func (s *refStream) line(ev *events.Event, format Format) string {
	isConnect := ev.Kind == events.KindConnect && ev.Connect.Failed()
	switch {
	case ev.Kind != events.KindConnClosed && !isConnect:
		return ""
	case format == FormatJSON && isConnect:
		return string(s.refAppendConnectJSON(nil, &ev.Connect))
	case format == FormatJSON:
		return string(s.refAppendJSON(nil, ev))
	case isConnect:
		return string(s.refAppendConnectText(nil, &ev.Connect))
	}
	return string(s.refAppendText(nil, ev))
}

func (s *refStream) refAppendText(b []byte, ev *events.Event) []byte {
	c := &ev.Conn
	b = s.clock(c.CloseNs).AppendFormat(b, "15:04:05.000")
	b = append(b, ' ')
	start := len(b)
	if c.Owner.Known() {
		b = strconv.AppendUint(b, uint64(c.Owner.PID), 10)
	} else {
		b = append(b, '-')
	}
	b = refPad(b, start, 8)
	start = len(b)
	if c.Owner.Known() {
		b = refAppendPrintable(b, c.Owner.CommBytes())
	} else {
		b = append(b, '?')
	}
	b = refPad(b, start, 16)
	start = len(b)
	b = c.Local.AppendTo(b)
	b = refPad(b, start, 40)
	start = len(b)
	b = c.Remote.AppendTo(b)
	b = refPad(b, start, 40)
	start = len(b)
	b = append(b, c.Role.String()...)
	b = refPad(b, start, 8)
	start = len(b)
	if lt := c.LifetimeNs(); c.SeenOpen {
		b = refAppendDuration(b, lt)
	} else {
		b = append(b, '-')
	}
	b = refPad(b, start, 11)
	start = len(b)
	b = strconv.AppendUint(b, c.TxBytes, 10)
	b = refPad(b, start, 11)
	start = len(b)
	b = strconv.AppendUint(b, c.RxBytes, 10)
	b = refPad(b, start, 11)
	b = append(b, c.EndState.String()...)
	if c.Error != 0 {
		b = append(b, " ("...)
		b = append(b, events.ErrnoName(c.Error)...)
		b = append(b, ')')
	}
	return append(b, '\n')
}

func (s *refStream) refAppendJSON(b []byte, ev *events.Event) []byte {
	c := &ev.Conn
	b = append(b, `{"time":"`...)
	b = s.clock(c.CloseNs).UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","type":"`...)
	b = append(b, ev.Kind.String()...)
	b = append(b, `","pid":`...)
	b = strconv.AppendUint(b, uint64(c.Owner.PID), 10)
	b = append(b, `,"tid":`...)
	b = strconv.AppendUint(b, uint64(c.Owner.TID), 10)
	b = append(b, `,"comm":`...)
	b = refAppendJSONString(b, c.Owner.CommBytes())
	b = append(b, `,"owner":"`...)
	b = append(b, c.Owner.Source.String()...)
	b = append(b, `","cgroup_id":`...)
	b = strconv.AppendUint(b, c.Owner.CgroupID, 10)
	b = append(b, `,"netns":`...)
	b = strconv.AppendUint(b, uint64(c.NetNS), 10)
	b = append(b, `,"family":"`...)
	b = append(b, c.Family.String()...)
	b = append(b, `","local_addr":"`...)
	b = c.Local.Addr().AppendTo(b)
	b = append(b, `","local_port":`...)
	b = strconv.AppendUint(b, uint64(c.Local.Port()), 10)
	b = append(b, `,"remote_addr":"`...)
	b = c.Remote.Addr().AppendTo(b)
	b = append(b, `","remote_port":`...)
	b = strconv.AppendUint(b, uint64(c.Remote.Port()), 10)
	b = append(b, `,"role":"`...)
	b = append(b, c.Role.String()...)
	b = append(b, `","lifetime_seconds":`...)
	if c.SeenOpen {
		b = refAppendSeconds(b, c.LifetimeNs())
	} else {
		b = append(b, "null"...)
	}
	b = append(b, `,"tx_bytes":`...)
	b = strconv.AppendUint(b, c.TxBytes, 10)
	b = append(b, `,"rx_bytes":`...)
	b = strconv.AppendUint(b, c.RxBytes, 10)
	b = append(b, `,"end_state":"`...)
	b = append(b, c.EndState.String()...)
	b = append(b, `","closed_by":"`...)
	b = append(b, c.ClosedBy.String()...)
	b = append(b, `","last_state":"`...)
	b = append(b, c.LastState.String()...)
	b = append(b, `","error":"`...)
	b = append(b, events.ErrnoName(c.Error)...)
	b = append(b, `","seen_open":`...)
	b = strconv.AppendBool(b, c.SeenOpen)
	b = append(b, `,"cookie":`...)
	b = strconv.AppendUint(b, c.Cookie, 10)
	return append(b, "}\n"...)
}

func refPad(b []byte, start, width int) []byte {
	n := width - (len(b) - start)
	if n < 1 {
		n = 1
	}
	for ; n > 0; n-- {
		b = append(b, ' ')
	}
	return b
}

func refAppendDuration(b []byte, ns uint64) []byte {
	switch {
	case ns < 1e6:
		b = strconv.AppendUint(b, ns/1e3, 10)
		return append(b, "us"...)
	case ns < 1e9:
		b = strconv.AppendFloat(b, float64(ns)/1e6, 'f', 1, 64)
		return append(b, "ms"...)
	default:
		b = strconv.AppendFloat(b, float64(ns)/1e9, 'f', 3, 64)
		return append(b, 's')
	}
}

func refAppendSeconds(b []byte, ns uint64) []byte {
	b = strconv.AppendUint(b, ns/1e9, 10)
	frac := ns % 1e9
	if frac == 0 {
		return b
	}
	var digits [10]byte
	digits[0] = '.'
	for i := 9; i >= 1; i-- {
		digits[i] = byte('0' + frac%10)
		frac /= 10
	}
	n := 10
	for digits[n-1] == '0' {
		n--
	}
	return append(b, digits[:n]...)
}

func refAppendPrintable(b, s []byte) []byte {
	for _, c := range s {
		if c < 0x20 || c == 0x7f {
			c = '?'
		}
		b = append(b, c)
	}
	return b
}

func refAppendJSONString(b, s []byte) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c < 0x20 || c == 0x7f:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRune(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, `\ufffd`...)
		} else {
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return append(b, '"')
}

func (s *refStream) refAppendConnectText(b []byte, c *events.Connect) []byte {
	b = s.clock(c.EndNs).AppendFormat(b, "15:04:05.000")
	b = append(b, ' ')
	start := len(b)
	b = strconv.AppendUint(b, uint64(c.Owner.PID), 10)
	b = refPad(b, start, 8)
	start = len(b)
	b = refAppendPrintable(b, c.Owner.CommBytes())
	b = refPad(b, start, 16)
	start = len(b)
	b = append(b, '-')
	b = refPad(b, start, 40)
	start = len(b)
	b = refAppendPrintableDest(b, c)
	b = refPad(b, start, 40)
	start = len(b)
	b = append(b, "connect"...)
	b = refPad(b, start, 8)
	start = len(b)
	b = refAppendDuration(b, c.LatencyNs())
	b = refPad(b, start, 11)
	start = len(b)
	b = append(b, '-')
	b = refPad(b, start, 11)
	start = len(b)
	b = append(b, '-')
	b = refPad(b, start, 11)
	b = append(b, "connect_failed ("...)
	b = append(b, events.ErrnoName(c.Errno)...)
	b = append(b, ')')
	if c.Count > 1 {
		b = append(b, " x"...)
		b = strconv.AppendUint(b, c.Count, 10)
	}
	return append(b, '\n')
}

func refAppendPrintableDest(b []byte, c *events.Connect) []byte {
	start := len(b)
	b = c.AppendDestination(b)
	for i := start; i < len(b); i++ {
		if b[i] < 0x20 || b[i] == 0x7f {
			b[i] = '?'
		}
	}
	return b
}

func (s *refStream) refAppendConnectJSON(b []byte, c *events.Connect) []byte {
	b = append(b, `{"time":"`...)
	b = s.clock(c.EndNs).UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","type":"connect_failed","pid":`...)
	b = strconv.AppendUint(b, uint64(c.Owner.PID), 10)
	b = append(b, `,"tid":`...)
	b = strconv.AppendUint(b, uint64(c.Owner.TID), 10)
	b = append(b, `,"comm":`...)
	b = refAppendJSONString(b, c.Owner.CommBytes())
	b = append(b, `,"cgroup_id":`...)
	b = strconv.AppendUint(b, c.Owner.CgroupID, 10)
	b = append(b, `,"netns":`...)
	b = strconv.AppendUint(b, uint64(c.NetNS), 10)
	b = append(b, `,"family":"`...)
	b = append(b, c.Family.String()...)
	b = append(b, `","sock_type":"`...)
	b = append(b, c.SockType.String()...)
	b = append(b, `","destination":`...)
	start := len(b)
	b = c.AppendDestination(b)
	// Quote in place: render, then escape from a copy kept in the
	// stream's buffer tail (no allocation once it has grown).
	dest := append(s.scratch[:0], b[start:]...)
	s.scratch = dest
	b = refAppendJSONString(b[:start], dest)
	if c.Family == events.FamilyIPv4 || c.Family == events.FamilyIPv6 {
		b = append(b, `,"remote_addr":"`...)
		b = c.Remote.Addr().AppendTo(b)
		b = append(b, `","remote_port":`...)
		b = strconv.AppendUint(b, uint64(c.Remote.Port()), 10)
	}
	b = append(b, `,"errno":"`...)
	b = append(b, events.ErrnoName(c.Errno)...)
	b = append(b, `","count":`...)
	b = strconv.AppendUint(b, c.Count, 10)
	b = append(b, `,"latency_seconds":`...)
	b = refAppendSeconds(b, c.LatencyNs())
	b = append(b, `,"nonblocking":`...)
	b = strconv.AppendBool(b, c.NonBlocking)
	return append(b, "}\n"...)
}
