package record

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/conntracer/conntracer/internal/events"
)

// ErrNewerVersion is returned for a recording made by a newer tracer.
var ErrNewerVersion = errors.New("recording format is newer than this tracer")

// ErrNotRecording is returned for a file that is not a recording at all.
var ErrNotRecording = errors.New("not a conntracer recording")

// Damage is a stretch of a file the reader could not use.
type Damage struct {
	Offset int64  // where the unusable bytes start
	Length int64  // how many
	Why    string // what was wrong
}

// Stats say what a Reader read and what it had to skip.
type Stats struct {
	Blocks     int
	Events     uint64
	LostBytes  int64
	LostBlocks int // blocks known missing: gaps in block numbers, a cut last block
	Damage     []Damage
	// RoundsSkipped counts socket-table rounds that could not be rebuilt
	// because the keyframe they depend on was lost.
	RoundsSkipped int
}

// Reader reads the events of one recording in order. It never panics on
// bad input: damaged blocks are skipped and reported in Stats.
type Reader struct {
	name   string
	ra     io.ReaderAt
	size   int64
	off    int64
	closer io.Closer
	header Header

	zdec    *zstd.Decoder
	raw     []byte
	packed  []byte
	dec     decoder
	inBlock bool
	nextSeq uint32
	seqSeen bool
	stats   Stats
	rounds  *roundReader
	marker  roundMarker
	queue   []queued
	qi      int
	scratch events.Event

	// The block being read: where it is, what its header promised and
	// what it held so far (checkBlock, Next).
	blockStart, blockEnd int64
	blockSeq             uint32
	recordsLeft          uint32 // records the header promised, not yet decoded
	blockRounds          int    // socket-table rounds rebuilt from this block
	deltaRounds          int    // rounds rebuilt since the last keyframe
	// Blocks found damaged since the last intact one, to count what is
	// lost before the first intact block and after the last.
	damagedSince  int
	damagedMaxSeq int64 // -1: none whose header could be read
}

// Open opens the recording at path and reads its header. Only regular
// files are read: a recording is read with random access and its size
// bounds what the reader accepts, which a FIFO, pipe or device does not
// give (and a FIFO without a writer would block the open for ever).
func Open(path string) (*Reader, error) {
	// O_NONBLOCK: opening a FIFO that no one writes returns at once, so
	// that it can be refused below instead of hanging silently.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("open recording: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open recording: %w", err)
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%s: %w: it is %s; recordings are read from regular files (copy it to a file first, e.g. cat %s > rec.ctrec)",
			path, ErrNotRegular, describeMode(st.Mode()), path)
	}
	r, err := NewReader(f, st.Size(), path)
	if err != nil {
		f.Close()
		return nil, err
	}
	r.closer = f
	return r, nil
}

// ErrNotRegular is returned by Open for a FIFO, pipe, socket, device or
// directory.
var ErrNotRegular = errors.New("not a regular file")

func describeMode(m os.FileMode) string {
	switch {
	case m&os.ModeNamedPipe != 0:
		return "a FIFO or pipe"
	case m&os.ModeSocket != 0:
		return "a socket"
	case m&os.ModeCharDevice != 0:
		return "a character device"
	case m&os.ModeDevice != 0:
		return "a block device"
	case m.IsDir():
		return "a directory"
	}
	return "not a regular file (" + m.String() + ")"
}

// NewReader reads a recording of size bytes from ra; name is used in
// errors.
func NewReader(ra io.ReaderAt, size int64, name string) (*Reader, error) {
	r := &Reader{name: name, ra: ra, size: size, rounds: newRoundReader(), damagedMaxSeq: -1}
	if size == 0 {
		return nil, fmt.Errorf("%s: empty file: nothing was recorded", name)
	}
	head := make([]byte, min(size, 1<<16))
	if _, err := ra.ReadAt(head, 0); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%s: read header: %w", name, err)
	}
	if len(head) < len(fileMagic)+2 || !bytes.Equal(head[:len(fileMagic)], fileMagic) {
		return nil, fmt.Errorf("%s: %w (no CTREC header): record one with `tracer record -o FILE`", name, ErrNotRecording)
	}
	v := binary.LittleEndian.Uint16(head[len(fileMagic):])
	if v > Version {
		return nil, fmt.Errorf("%s: %w (file version %d, this tracer reads up to %d): use a newer tracer to read it", name, ErrNewerVersion, v, Version)
	}
	p := len(fileMagic) + 2
	n, k := binary.Uvarint(head[p:])
	if k <= 0 || n > uint64(len(head)-p-k) {
		return nil, fmt.Errorf("%s: header cut short or damaged: nothing can be read", name)
	}
	p += k
	if err := json.Unmarshal(head[p:p+int(n)], &r.header); err != nil {
		return nil, fmt.Errorf("%s: header damaged: %v", name, err)
	}
	r.off = int64(p) + int64(n)
	z, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(maxRawBlock))
	if err != nil {
		return nil, fmt.Errorf("zstd decoder: %w", err)
	}
	r.zdec = z
	return r, nil
}

// Header returns the recording's header.
func (r *Reader) Header() Header { return r.header }

// Stats returns what was read and lost so far.
func (r *Reader) Stats() Stats {
	s := r.stats
	s.RoundsSkipped = r.rounds.skipped
	return s
}

// Close releases the file.
func (r *Reader) Close() error {
	if r.zdec != nil {
		r.zdec.Close()
	}
	if r.closer != nil {
		return r.closer.Close()
	}
	return nil
}

// Next reads the next event into ev and returns the time it was applied
// at. It returns io.EOF at the end, or an error when damage left nothing
// readable at all.
func (r *Reader) Next(ev *events.Event) (time.Time, error) {
	for {
		if r.qi < len(r.queue) {
			q := &r.queue[r.qi]
			r.qi++
			*ev = q.ev
			r.stats.Events++
			return time.Unix(0, q.now), nil
		}
		r.queue, r.qi = r.queue[:0], 0
		if !r.inBlock || !r.dec.more() {
			if r.inBlock {
				r.endBlock()
			}
			r.inBlock = false
			ok, err := r.nextBlock()
			if err != nil {
				return time.Time{}, err
			}
			if !ok {
				r.countTail()
				if r.stats.Events == 0 && len(r.stats.Damage) > 0 {
					return time.Time{}, fmt.Errorf("%s: no intact block: %d bytes damaged (%s)", r.name, r.stats.LostBytes, r.stats.Damage[0].Why)
				}
				return time.Time{}, io.EOF
			}
			continue
		}
		if r.recordsLeft == 0 {
			r.blockFails(fmt.Errorf("holds more records than its header's %d", r.blockRecords()))
			continue
		}
		r.recordsLeft--
		now, kind := r.dec.event(&r.scratch)
		if r.dec.err != nil {
			continue
		}
		nowNs := now
		switch {
		case kind == kindRound:
			r.dec.round(&r.marker)
			if r.dec.err == nil {
				r.startRound()
			}
			continue
		case r.rounds.in && r.scratch.Kind == events.KindSockOpen:
			if !r.rounds.skip {
				if _, ok := r.rounds.table[keyOf(&r.scratch)]; !ok && len(r.rounds.table) >= maxRoundSockets {
					r.blockFails(fmt.Errorf("socket-table round of more than %d sockets", maxRoundSockets))
					continue
				}
				r.rounds.table[keyOf(&r.scratch)] = r.scratch
			}
			continue
		case r.rounds.in && r.scratch.Kind == events.KindSockSampleDone:
			r.queue = r.rounds.done(&r.scratch, nowNs, r.queue)
			continue
		}
		*ev = r.scratch
		r.stats.Events++
		return time.Unix(0, nowNs), nil
	}
}

// startRound applies a round marker, within the limits on rounds: a round
// hands out the whole table again, so repeated rounds are what would make
// a small file expand without bound.
func (r *Reader) startRound() {
	r.blockRounds++
	if r.marker.keyframe {
		r.deltaRounds = 0
	} else {
		r.deltaRounds++
	}
	switch {
	case r.blockRounds > maxRoundsPerBlock:
		r.blockFails(fmt.Errorf("more than %d socket-table rounds in one block", maxRoundsPerBlock))
	case r.deltaRounds > maxDeltaRounds:
		r.blockFails(fmt.Errorf("more than %d socket-table rounds since a keyframe", maxDeltaRounds))
	default:
		r.rounds.marker(&r.marker)
	}
}

// blockRecords is what the current block's header promised.
func (r *Reader) blockRecords() uint32 {
	var hdr [blockHeaderLen]byte
	if _, err := r.ra.ReadAt(hdr[:], r.blockStart); err != nil {
		return 0
	}
	return parseBlockHeader(hdr[:]).events
}

// blockFails stops reading the current block: the rest of it is damage,
// and rounds need a new keyframe.
func (r *Reader) blockFails(err error) {
	if r.dec.err == nil {
		r.dec.err = err
	}
	r.dec.off = len(r.dec.data)
	r.queue, r.qi = r.queue[:0], 0
}

// endBlock checks that the block held what its header promised.
func (r *Reader) endBlock() {
	err := r.dec.err
	if err == nil && r.recordsLeft != 0 {
		err = fmt.Errorf("holds %d records fewer than its header's %d", r.recordsLeft, r.blockRecords())
	}
	if err == nil {
		return
	}
	r.damage(r.blockStart, r.blockEnd-r.blockStart, fmt.Sprintf("block %d: %v (events before it were read)", r.blockSeq, err))
	r.rounds.lost()
}

func (r *Reader) damage(off, n int64, why string) {
	r.stats.LostBytes += n
	if len(r.stats.Damage) < 100 {
		r.stats.Damage = append(r.stats.Damage, Damage{Offset: off, Length: n, Why: why})
	}
}

// checkBlock says what is wrong with a block header found at start, ""
// if nothing: the limits of the format (format.go) and of the file.
func (r *Reader) checkBlock(h *blockHeader, start int64) string {
	switch {
	case h.raw > maxRawBlock:
		return fmt.Sprintf("block header damaged: %d bytes decompressed, more than a block may hold (%d)", h.raw, maxRawBlock)
	case int64(h.packed) > maxPacked(h.raw):
		return fmt.Sprintf("block header damaged: %d bytes compressed for %d decompressed", h.packed, h.raw)
	case int64(h.events)*minRecordLen > int64(h.raw):
		return fmt.Sprintf("block header damaged: %d events cannot fit in %d bytes", h.events, h.raw)
	case int64(h.events) > int64(h.packed)*maxRecordsPerPackedByte+64:
		return fmt.Sprintf("block claims %d events from %d compressed bytes: more than recorded events compress to (a zstd bomb?)", h.events, h.packed)
	case start+blockHeaderLen+int64(h.packed) > r.size:
		return cutShort
	}
	return ""
}

const cutShort = "cut short: the recorder stopped while writing a block"

// nextBlock finds, checks and decompresses the next intact block.
func (r *Reader) nextBlock() (bool, error) {
	hdr := make([]byte, blockHeaderLen)
	for r.off < r.size {
		start := r.off
		if r.size-start < blockHeaderLen {
			r.damage(start, r.size-start, cutShort)
			r.damagedSince++
			r.off = r.size
			return false, nil
		}
		if _, err := r.ra.ReadAt(hdr, start); err != nil {
			return false, fmt.Errorf("%s: read at %d: %w", r.name, start, err)
		}
		why := ""
		var h blockHeader
		if !bytes.Equal(hdr[:4], blockMagic) {
			why = "no block starts here"
		} else {
			h = parseBlockHeader(hdr)
			why = r.checkBlock(&h, start)
		}
		if why == "" {
			r.packed = grow(r.packed, int(h.packed))
			if _, err := r.ra.ReadAt(r.packed, start+blockHeaderLen); err != nil {
				return false, fmt.Errorf("%s: read at %d: %w", r.name, start, err)
			}
			if blockCRC(hdr, r.packed) != h.crc {
				why = "checksum mismatch"
			} else if raw, err := r.zdec.DecodeAll(r.packed, r.raw[:0]); err != nil || len(raw) != int(h.raw) {
				why = "does not decompress"
			} else {
				r.raw = raw
				r.off = start + blockHeaderLen + int64(h.packed)
				r.intact(&h)
				r.blockStart, r.blockEnd, r.blockSeq = start, r.off, h.seq
				r.recordsLeft, r.blockRounds = h.events, 0
				r.dec.reset(r.raw, h.first)
				r.inBlock = true
				return true, nil
			}
		}
		// Skip to the next block magic after start. A block whose magic
		// is intact is one block lost; its number, if plausible, says
		// how many were lost at the end of the file (countTail).
		next := r.scan(start + 1)
		if why != "no block starts here" {
			r.damagedSince++
			if r.seqSeen && int64(h.seq) >= int64(r.nextSeq) && int64(h.seq) < int64(r.nextSeq)+r.size/blockHeaderLen {
				r.damagedMaxSeq = max(r.damagedMaxSeq, int64(h.seq))
			}
		}
		r.damage(start, next-start, why)
		r.rounds.lost()
		r.off = next
	}
	return false, nil
}

// intact counts the blocks lost before the intact block h: the gap in
// block numbers since the last intact one, or, before the first, the
// damaged blocks found (a flight recorder's dump starts at any number).
func (r *Reader) intact(h *blockHeader) {
	switch {
	case r.seqSeen && h.seq != r.nextSeq:
		if h.seq > r.nextSeq {
			r.stats.LostBlocks += int(h.seq - r.nextSeq)
		} else {
			r.stats.LostBlocks += r.damagedSince
		}
		r.rounds.lost()
	case !r.seqSeen:
		r.stats.LostBlocks += r.damagedSince
	}
	r.damagedSince, r.damagedMaxSeq = 0, -1
	r.seqSeen, r.nextSeq = true, h.seq+1
	r.stats.Blocks++
}

// countTail counts the blocks lost after the last intact one.
func (r *Reader) countTail() {
	n := r.damagedSince
	if r.damagedMaxSeq >= 0 {
		n = max(n, int(r.damagedMaxSeq-int64(r.nextSeq))+1)
	}
	r.stats.LostBlocks += n
	r.damagedSince, r.damagedMaxSeq = 0, -1
}

// scan returns the offset of the next block magic at or after off, or the
// file size.
func (r *Reader) scan(off int64) int64 {
	buf := make([]byte, 64<<10)
	for off < r.size {
		n, _ := r.ra.ReadAt(buf, off)
		if n <= 0 {
			break
		}
		if i := bytes.Index(buf[:n], blockMagic); i >= 0 {
			return off + int64(i)
		}
		if off+int64(n) >= r.size {
			break
		}
		off += int64(n) - int64(len(blockMagic)-1)
	}
	return r.size
}

func grow(b []byte, n int) []byte {
	if cap(b) >= n {
		return b[:n]
	}
	return make([]byte, n)
}
