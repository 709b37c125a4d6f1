package record

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
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
}

// Open opens the recording at path and reads its header.
func Open(path string) (*Reader, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open recording: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open recording: %w", err)
	}
	r, err := NewReader(f, st.Size(), path)
	if err != nil {
		f.Close()
		return nil, err
	}
	r.closer = f
	return r, nil
}

// NewReader reads a recording of size bytes from ra; name is used in
// errors.
func NewReader(ra io.ReaderAt, size int64, name string) (*Reader, error) {
	r := &Reader{name: name, ra: ra, size: size, rounds: newRoundReader()}
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
			if r.inBlock && r.dec.err != nil {
				r.damage(r.off, 0, fmt.Sprintf("block %d: %v", r.nextSeq-1, r.dec.err))
			}
			r.inBlock = false
			ok, err := r.nextBlock()
			if err != nil {
				return time.Time{}, err
			}
			if !ok {
				if r.stats.Events == 0 && len(r.stats.Damage) > 0 {
					return time.Time{}, fmt.Errorf("%s: no intact block: %d bytes damaged (%s)", r.name, r.stats.LostBytes, r.stats.Damage[0].Why)
				}
				return time.Time{}, io.EOF
			}
			continue
		}
		now, kind := r.dec.event(&r.scratch)
		if r.dec.err != nil {
			continue
		}
		nowNs := now
		switch {
		case kind == kindRound:
			r.dec.round(&r.marker)
			if r.dec.err == nil {
				r.rounds.marker(&r.marker)
			}
			continue
		case r.rounds.in && r.scratch.Kind == events.KindSockOpen:
			if !r.rounds.skip {
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

func (r *Reader) damage(off, n int64, why string) {
	r.stats.LostBytes += n
	if len(r.stats.Damage) < 100 {
		r.stats.Damage = append(r.stats.Damage, Damage{Offset: off, Length: n, Why: why})
	}
}

// nextBlock finds, checks and decompresses the next intact block.
func (r *Reader) nextBlock() (bool, error) {
	hdr := make([]byte, blockHeaderLen)
	for r.off < r.size {
		start := r.off
		if r.size-start < blockHeaderLen {
			r.damage(start, r.size-start, "cut short: the recorder stopped while writing a block")
			r.stats.LostBlocks++
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
			switch {
			case h.raw > maxRawBlock || int64(h.packed) > r.size:
				why = "block header damaged"
			case start+blockHeaderLen+int64(h.packed) > r.size:
				why = "cut short: the recorder stopped while writing a block"
			}
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
				if r.seqSeen && h.seq != r.nextSeq {
					if h.seq > r.nextSeq {
						r.stats.LostBlocks += int(h.seq - r.nextSeq)
					}
					r.rounds.lost()
				}
				r.seqSeen, r.nextSeq = true, h.seq+1
				r.stats.Blocks++
				r.dec.reset(r.raw, h.first)
				r.inBlock = true
				return true, nil
			}
		}
		// Skip to the next block magic after start.
		next := r.scan(start + 1)
		if why == "cut short: the recorder stopped while writing a block" && next == r.size {
			r.stats.LostBlocks++
		}
		r.damage(start, next-start, why)
		r.rounds.lost()
		r.off = next
	}
	return false, nil
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
