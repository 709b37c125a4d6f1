// Package export turns events and aggregates into what users read: the
// streamed text and JSON lines of `tracer` (Stream), the JSON lines of
// `tracer export` for the kinds the stream does not print (EventJSON), the
// Prometheus collector and the tracer's self-metrics (Collector, Health),
// and the renderings of an aggregate.Snapshot: the text table of the
// terminal view and `tracer top --once` (RenderText) and its JSON document
// (Document). It sits at the end of the pipeline and never reaches back
// into the kernel-facing code. May import: internal/events,
// internal/aggregate (its Snapshot), prometheus client_golang.
package export

import (
	"bufio"
	"fmt"
	"io"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/conntracer/conntracer/internal/events"
)

// Format selects the stream's output format.
type Format string

// Output formats.
const (
	FormatText Format = "text"
	FormatJSON Format = "json"
)

// ParseFormat validates a user-supplied format.
func ParseFormat(s string) (Format, error) {
	switch f := Format(s); f {
	case FormatText, FormatJSON:
		return f, nil
	}
	return "", fmt.Errorf("unknown output format %q: use text or json", s)
}

// Clock converts the kernel's CLOCK_BOOTTIME nanoseconds to wall-clock time.
type Clock func(bootNs uint64) time.Time

// Stream prints one line per finished connection. It formats into a reused
// buffer, so printing does not allocate. Not safe for concurrent use: it
// belongs to the event loop.
type Stream struct {
	w      *bufio.Writer
	format Format
	clock  Clock
	buf    []byte
	header bool
	// scratch holds a field while it is escaped into buf.
	scratch []byte
	// times formats the JSON lines' RFC 3339 times (timefmt.go).
	times rfc3339Cache
	// clocks formats the text lines' times of day (timefmt.go).
	clocks clockCache
	// addrs formats the addresses of recent lines (stream_addr.go).
	addrs addrCache
	// owners formats the owner columns of recent lines (stream_owner.go).
	owners ownerCache
	// endings formats the JSON lines' end fields (stream_ending.go).
	endings endingCache
	// identities names owners' containers, netnsNames namespaces
	// (stream_identity.go); nil: off.
	identities events.CgroupLookup
	netnsNames events.NetNSLookup
}

// NewStream writes lines in the given format to w.
func NewStream(w io.Writer, format Format, clock Clock) *Stream {
	return &Stream{
		w:      bufio.NewWriterSize(w, 64<<10),
		format: format,
		clock:  clock,
		buf:    make([]byte, 0, 512),
	}
}

// textHeader names the columns of the text format.
const textHeader = "TIME         PID     COMM            LOCAL                                   REMOTE                                  ROLE    LIFETIME   TX_BYTES   RX_BYTES   END\n"

// Print writes ev if it is a finished connection or a failed connect();
// other kinds are ignored.
func (s *Stream) Print(ev *events.Event) error {
	if ev.Kind == events.KindDrop || ev.Kind == events.KindListenOverflow {
		return s.printDrop(ev)
	}
	isConnect := ev.Kind == events.KindConnect && ev.Connect.Failed()
	if ev.Kind != events.KindConnClosed && !isConnect {
		return nil
	}
	b, inPlace := s.lineBuf()
	switch {
	case s.format == FormatJSON && isConnect:
		b = s.appendConnectJSON(b, &ev.Connect)
	case s.format == FormatJSON:
		b = s.appendJSON(b, ev)
	default:
		if !s.header {
			s.header = true
			b = append(b, textHeader...)
			b = s.appendTextHeaderTail(b)
		}
		if isConnect {
			b = s.appendConnectText(b, &ev.Connect)
		} else {
			b = s.appendText(b, ev)
		}
	}
	return s.write(b, inPlace)
}

// inPlaceRoom is the free space the bufio.Writer must have for a line to
// be formatted straight into it: more than any line takes (the longest, a
// JSON line with an escaped comm and two IPv6 addresses, is under 800
// bytes), so that appending never outgrows it.
const inPlaceRoom = 1024

// lineBuf returns where to format the next line: the bufio.Writer's free
// space when it has room (inPlace), so that Write finds the line already
// in place, instead of copying it from the stream's reused buffer: that
// copy was a tenth of a JSON line's cost in the profile (BenchmarkPrint/
// json, 9 interleaved A/B rounds on a loaded machine: median 635 -> 537
// ns/op, best 564 -> 415).
func (s *Stream) lineBuf() (b []byte, inPlace bool) {
	if s.w.Available() >= inPlaceRoom {
		return s.w.AvailableBuffer(), true
	}
	return s.buf[:0], false
}

// write hands a line from lineBuf to the writer, and keeps the reused
// buffer, which the line may have grown.
func (s *Stream) write(b []byte, inPlace bool) error {
	if !inPlace {
		s.buf = b
	}
	_, err := s.w.Write(b)
	return err
}

// printDrop writes a drop or listen-overflow line (dropstream.go).
func (s *Stream) printDrop(ev *events.Event) error {
	b, inPlace := s.lineBuf()
	if s.format == FormatJSON {
		b = s.appendDropJSON(b, ev)
	} else {
		b = s.appendDropText(b, ev)
	}
	return s.write(b, inPlace)
}

// Flush writes buffered lines out. The event loop calls it whenever the
// kernel's buffer has been drained, so lines appear promptly without a
// write per event.
func (s *Stream) Flush() error { return s.w.Flush() }

func (s *Stream) appendText(b []byte, ev *events.Event) []byte {
	c := &ev.Conn
	b = s.clocks.appendClock(b, s.clock(c.CloseNs))
	b = append(b, ' ')
	b = s.appendTextOwner(b, ev.Kind, &c.Owner, c.Owner.Known())
	start := len(b)
	b = s.addrs.appendAddrPort(b, c.Local)
	b = pad(b, start, 40)
	start = len(b)
	b = s.addrs.appendAddrPort(b, c.Remote)
	b = pad(b, start, 40)
	start = len(b)
	b = append(b, c.Role.String()...)
	b = pad(b, start, 8)
	start = len(b)
	if lt := c.LifetimeNs(); c.SeenOpen {
		b = appendDuration(b, lt)
	} else {
		b = append(b, '-')
	}
	b = pad(b, start, 11)
	start = len(b)
	b = strconv.AppendUint(b, c.TxBytes, 10)
	b = pad(b, start, 11)
	start = len(b)
	b = strconv.AppendUint(b, c.RxBytes, 10)
	b = pad(b, start, 11)
	start = len(b)
	b = append(b, c.EndState.String()...)
	if c.Error != 0 {
		b = append(b, " ("...)
		b = append(b, events.ErrnoName(c.Error)...)
		b = append(b, ')')
	}
	b = s.appendTextWorkload(b, start, c.Owner.CgroupID, c.NetNS)
	return append(b, '\n')
}

// JSON field names are part of the tracer's interface: documented in the
// README and never renamed.
func (s *Stream) appendJSON(b []byte, ev *events.Event) []byte {
	c := &ev.Conn
	b = append(b, `{"time":"`...)
	b = s.times.appendTime(b, s.clock(c.CloseNs))
	b = s.appendJSONOwner(b, ev) // through `"local_addr":"`
	b = s.addrs.appendAddr(b, c.Local.Addr())
	b = append(b, `","local_port":`...)
	b = strconv.AppendUint(b, uint64(c.Local.Port()), 10)
	b = append(b, `,"remote_addr":"`...)
	b = s.addrs.appendAddr(b, c.Remote.Addr())
	b = append(b, `","remote_port":`...)
	b = strconv.AppendUint(b, uint64(c.Remote.Port()), 10)
	b = append(b, `,"role":"`...)
	b = append(b, c.Role.String()...)
	b = append(b, `","lifetime_seconds":`...)
	if c.SeenOpen {
		b = appendSeconds(b, c.LifetimeNs())
	} else {
		b = append(b, "null"...)
	}
	b = append(b, `,"tx_bytes":`...)
	b = strconv.AppendUint(b, c.TxBytes, 10)
	b = append(b, `,"rx_bytes":`...)
	b = strconv.AppendUint(b, c.RxBytes, 10)
	b = s.appendJSONEnding(b, c) // through `"cookie":`
	b = strconv.AppendUint(b, c.Cookie, 10)
	b = s.appendJSONIdentity(b, c.Owner.CgroupID)
	b = s.appendJSONNetNSName(b, c.NetNS)
	return append(b, "}\n"...)
}

// spaces is what pad copies from: wider than any column.
const spaces = "                                                "

// pad appends spaces until the field that began at start is width wide,
// and always at least one. One append of a slice of spaces instead of a
// loop of single-byte appends: the loop was a fifth of a text line's cost
// (BenchmarkPrint/text, interleaved A/B, best of 5: 513 -> 439 ns/op).
func pad(b []byte, start, width int) []byte {
	n := width - (len(b) - start)
	if n < 1 {
		n = 1
	}
	return append(b, spaces[:n]...) // width <= len(spaces) for every column
}

// appendDuration prints a lifetime with a unit suited to its size:
// "499us", "12.3ms", "3600.000s", as strconv.AppendFloat of the quotient
// printed them. Integer rounding gives the same digits whenever the exact
// quotient is not halfway between two outputs: it is then at least 1e-6
// (ms) or 1e-9 (s) away from the halfway point, more than the float
// quotient's rounding error (half an ulp: under 6e-14 below 1000 ms, under
// 5e-10 below 2^52 ns). Exact halves and lifetimes from 2^52 ns (52 days)
// go through AppendFloat. The float formatting was a sixth of a text line
// (BenchmarkPrint/text, 7 interleaved A/B rounds: median 253 -> 186
// ns/op).
func appendDuration(b []byte, ns uint64) []byte {
	switch {
	case ns < 1e6:
		b = strconv.AppendUint(b, ns/1e3, 10)
		return append(b, "us"...)
	case ns < 1e9:
		tenths, rem := ns/1e5, ns%1e5
		if rem == 5e4 {
			b = strconv.AppendFloat(b, float64(ns)/1e6, 'f', 1, 64)
			return append(b, "ms"...)
		}
		if rem > 5e4 {
			tenths++
		}
		b = strconv.AppendUint(b, tenths/10, 10)
		return append(b, '.', byte('0'+tenths%10), 'm', 's')
	default:
		ms, rem := ns/1e6, ns%1e6
		if rem == 5e5 || ns >= 1<<52 {
			b = strconv.AppendFloat(b, float64(ns)/1e9, 'f', 3, 64)
			return append(b, 's')
		}
		if rem > 5e5 {
			ms++
		}
		b = strconv.AppendUint(b, ms/1000, 10)
		f := ms % 1000
		return append(b, '.', byte('0'+f/100), byte('0'+f/10%10), byte('0'+f%10), 's')
	}
}

// appendSeconds prints nanoseconds as decimal seconds, exactly and without
// trailing zeros ("0.012345678", "3600"), using integer arithmetic: float
// formatting was a fifth of the cost of a JSON line. The fraction shares
// the JSON time's two-digits-at-a-time printer (timefmt.go).
func appendSeconds(b []byte, ns uint64) []byte {
	b = strconv.AppendUint(b, ns/1e9, 10)
	if frac := ns % 1e9; frac != 0 {
		b = appendFrac9(b, uint32(frac))
	}
	return b
}

// appendPrintable copies a process name, replacing control bytes so that a
// hostile comm cannot corrupt the terminal.
func appendPrintable(b, s []byte) []byte {
	for _, c := range s {
		if c < 0x20 || c == 0x7f {
			c = '?'
		}
		b = append(b, c)
	}
	return b
}

// appendJSONString quotes s as a JSON string. Process names are arbitrary
// bytes: invalid UTF-8 becomes U+FFFD, control characters are escaped.
func appendJSONString(b, s []byte) []byte {
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
