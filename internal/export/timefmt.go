package export

import "time"

// rfc3339Cache formats times as time.RFC3339Nano in UTC, byte for byte,
// reusing the date and time of day while the second does not change: a
// busy stream prints thousands of lines a second, and AppendFormat was a
// third of the cost of a JSON line (measured by BenchmarkRecordPathJSON).
// Not safe for concurrent use: it belongs to its Stream.
type rfc3339Cache struct {
	sec    int64
	valid  bool
	prefix []byte // "2006-01-02T15:04:05" of sec
}

// appendTime appends t in UTC as time.RFC3339Nano would.
func (c *rfc3339Cache) appendTime(b []byte, t time.Time) []byte {
	t = t.UTC()
	if sec := t.Unix(); !c.valid || sec != c.sec {
		c.sec, c.valid = sec, true
		c.prefix = t.AppendFormat(c.prefix[:0], "2006-01-02T15:04:05")
	}
	b = append(b, c.prefix...)
	if ns := t.Nanosecond(); ns != 0 {
		// ".999999999": nine digits, trailing zeros dropped.
		var frac [10]byte
		frac[0] = '.'
		for i := 9; i >= 1; i-- {
			frac[i] = byte('0' + ns%10)
			ns /= 10
		}
		n := 10
		for frac[n-1] == '0' {
			n--
		}
		b = append(b, frac[:n]...)
	}
	return append(b, 'Z')
}
