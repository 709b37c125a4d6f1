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
		b = appendFrac9(b, uint32(ns))
	}
	return append(b, 'Z')
}

// digitPairs holds "00" to "99": one table read gives two digits.
const digitPairs = "00010203040506070809" +
	"10111213141516171819" +
	"20212223242526272829" +
	"30313233343536373839" +
	"40414243444546474849" +
	"50515253545556575859" +
	"60616263646566676869" +
	"70717273747576777879" +
	"80818283848586878889" +
	"90919293949596979899"

// appendFrac9 appends a fraction of nanoseconds, 0 < ns < 1e9, as "."
// and nine digits with trailing zeros dropped (".012345678", ".5"), as
// time.RFC3339Nano's ".999999999" does. Two digits per division: the
// digit-at-a-time loop it replaced was a sixth of a JSON line in the
// profile, for the time and the lifetime together (BenchmarkPrint/json,
// 7 interleaved A/B rounds: best 227 -> 209 ns/op, medians within noise).
func appendFrac9(b []byte, ns uint32) []byte {
	var frac [10]byte
	frac[0] = '.'
	for i := 8; i >= 2; i -= 2 {
		r := (ns % 100) * 2
		ns /= 100
		frac[i], frac[i+1] = digitPairs[r], digitPairs[r+1]
	}
	frac[1] = byte('0' + ns)
	n := 10
	for frac[n-1] == '0' {
		n--
	}
	return append(b, frac[:n]...)
}

// clockCache formats times as "15:04:05.000" in their own location, byte
// for byte as time.Time.AppendFormat does, reusing the time of day while
// the second and the location do not change: AppendFormat was a third of
// the cost of a text line (BenchmarkPrint/text, interleaved A/B, best of
// 5: 422 -> 282 ns/op). A zone's offset changes only on a whole
// second, so the second and the location decide the prefix.
// Not safe for concurrent use: it belongs to its Stream.
type clockCache struct {
	sec    int64
	loc    *time.Location
	prefix []byte // "15:04:05." of sec in loc
}

// appendClock appends t as t.AppendFormat(b, "15:04:05.000") would.
func (c *clockCache) appendClock(b []byte, t time.Time) []byte {
	if sec, loc := t.Unix(), t.Location(); loc != c.loc || sec != c.sec || len(c.prefix) == 0 {
		c.sec, c.loc = sec, loc
		c.prefix = t.AppendFormat(c.prefix[:0], "15:04:05.")
	}
	ms := t.Nanosecond() / 1e6 // AppendFormat truncates, it does not round
	return append(append(b, c.prefix...), byte('0'+ms/100), byte('0'+ms/10%10), byte('0'+ms%10))
}
