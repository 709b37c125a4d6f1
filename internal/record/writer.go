package record

import (
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

// Options tune a Writer. The zero value is usable: defaults are filled in.
type Options struct {
	// Header is written at the start of every file; Version and Created
	// are set by the writer.
	Header Header
	// BlockEvery seals a block once its first event is this old (default
	// 1 s): the most a crash can lose.
	BlockEvery time.Duration
	// MaxBlockEvents seals a block at this many events (default 65536).
	MaxBlockEvents int
	// KeyframeEvery writes a full socket-table round this often (default
	// 60 s); rounds in between are written as changes.
	KeyframeEvery time.Duration
	// VerbatimRounds records socket-table rounds as they come, every
	// socket every round (for comparisons).
	VerbatimRounds bool
	// RotateSize and RotateAge start a new file when the current one is
	// this big or this old (0: never). The old file is renamed FILE.1,
	// FILE.1 becomes FILE.2 and so on; Keep of them are kept (default 5).
	RotateSize int64
	RotateAge  time.Duration
	Keep       int
}

func (o *Options) defaults() {
	if o.BlockEvery <= 0 {
		o.BlockEvery = time.Second
	}
	if o.MaxBlockEvents <= 0 {
		o.MaxBlockEvents = 65536
	}
	if o.KeyframeEvery <= 0 {
		o.KeyframeEvery = time.Minute
	}
	if o.Keep <= 0 {
		o.Keep = 5
	}
}

// Writer appends events to a recording. It is owned by one goroutine (the
// event loop): Write encodes into the open block, and the block is
// compressed and written out once it is BlockEvery old, on Write or Tick.
type Writer struct {
	opts Options
	dst  io.Writer
	file *os.File // nil when writing to a caller's io.Writer
	path string

	enc    *encoder
	zenc   *zstd.Encoder
	rounds *roundWriter
	out    []byte

	seq          uint32
	nEvents      int
	first, last  int64
	fileStart    time.Time
	fileSize     int64
	totalEvents  uint64
	totalBlocks  int
	totalWritten int64
	rotations    int
	err          error // sticky: the first write error
}

// Create makes a recording at path, mode 0600 (it holds addresses and
// process names), replacing any file there.
func Create(path string, opts Options) (*Writer, error) {
	w, err := newWriter(opts)
	if err != nil {
		return nil, err
	}
	w.path = path
	if err := w.openFile(); err != nil {
		return nil, err
	}
	return w, nil
}

// NewWriter writes a recording to dst: the header in one Write call, then
// each block in one Write call (the flight recorder relies on it).
func NewWriter(dst io.Writer, opts Options) (*Writer, error) {
	w, err := newWriter(opts)
	if err != nil {
		return nil, err
	}
	w.dst = dst
	if err := w.writeHeader(); err != nil {
		return nil, err
	}
	return w, nil
}

func newWriter(opts Options) (*Writer, error) {
	opts.defaults()
	z, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1), zstd.WithEncoderLevel(zstd.SpeedDefault))
	if err != nil {
		return nil, fmt.Errorf("zstd encoder: %w", err)
	}
	return &Writer{opts: opts, enc: newEncoder(), zenc: z, rounds: newRoundWriter(opts.KeyframeEvery)}, nil
}

func (w *Writer) openFile() error {
	f, err := os.OpenFile(w.path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("create recording: %w", err)
	}
	// O_CREATE does not change the mode of a file that was already there.
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return fmt.Errorf("create recording: %w", err)
	}
	w.file, w.dst = f, f
	w.fileSize = 0
	return w.writeHeader()
}

func (w *Writer) writeHeader() error {
	h := w.opts.Header
	h.Version = Version
	h.Created = time.Now().UTC()
	js, err := json.Marshal(h)
	if err != nil {
		return fmt.Errorf("recording header: %w", err)
	}
	b := append([]byte(nil), fileMagic...)
	b = binary.LittleEndian.AppendUint16(b, Version)
	b = binary.AppendUvarint(b, uint64(len(js)))
	b = append(b, js...)
	w.fileStart = time.Now()
	w.rounds.invalidate() // a new file starts with a keyframe
	return w.put(b)
}

func (w *Writer) put(b []byte) error {
	n, err := w.dst.Write(b)
	w.fileSize += int64(n)
	w.totalWritten += int64(n)
	if err != nil {
		w.err = fmt.Errorf("write recording: %w", err)
		return w.err
	}
	return nil
}

// Write records ev, applied at now. ev is not retained.
func (w *Writer) Write(ev *events.Event, now time.Time) error {
	if w.err != nil {
		return w.err
	}
	ns := now.UnixNano()
	if !w.opts.VerbatimRounds {
		switch ev.Kind {
		case events.KindSockOpen:
			w.rounds.pending = append(w.rounds.pending, *ev)
			w.rounds.pendNow = append(w.rounds.pendNow, ns)
			return nil
		case events.KindSockSampleDone:
			w.writeRound(ev, ns)
			return w.maybeSeal(ns)
		}
		if len(w.rounds.pending) > 0 {
			w.flushPending()
		}
	}
	w.add(ev, ns)
	return w.maybeSeal(ns)
}

// Tick seals the open block if it is due: called when the event loop is
// idle, so that a quiet second still reaches the disk.
func (w *Writer) Tick(now time.Time) error {
	if w.err != nil {
		return w.err
	}
	if w.file != nil && w.opts.RotateAge > 0 && now.Sub(w.fileStart) >= w.opts.RotateAge && w.nEvents > 0 {
		return w.seal()
	}
	return w.maybeSeal(now.UnixNano())
}

func (w *Writer) add(ev *events.Event, ns int64) {
	if w.nEvents == 0 {
		w.enc.reset(ns)
		w.first = ns
	}
	w.enc.event(ev, ns)
	w.nEvents++
	w.last = ns
}

func (w *Writer) maybeSeal(ns int64) error {
	if w.nEvents > 0 && (w.nEvents >= w.opts.MaxBlockEvents || ns-w.first >= int64(w.opts.BlockEvery)) {
		return w.seal()
	}
	return w.err
}

// flushPending writes a round that did not end as sampled sockets, one
// by one (the reader passes them through), and forces a keyframe next.
func (w *Writer) flushPending() {
	r := w.rounds
	for i := range r.pending {
		w.add(&r.pending[i], r.pendNow[i])
	}
	r.pending, r.pendNow = r.pending[:0], r.pendNow[:0]
	r.invalidate()
}

// writeRound writes the round that done ends, as changes from the last.
func (w *Writer) writeRound(done *events.Event, ns int64) {
	r := w.rounds
	clear(r.seen)
	verbatim := false
	for i := range r.pending {
		ev := &r.pending[i]
		k := keyOf(ev)
		if _, dup := r.seen[k]; dup || ev.Sample.TimeNs != done.Sample.TimeNs {
			verbatim = true
			break
		}
		r.seen[k] = struct{}{}
	}
	if verbatim {
		w.flushPending()
		w.add(done, ns)
		return
	}
	keyframe := !r.valid || ns-r.keyAt >= int64(r.every)
	r.removed = r.removed[:0]
	if keyframe {
		clear(r.last)
		r.keyAt = ns
	} else {
		for k := range r.last {
			if _, ok := r.seen[k]; !ok {
				r.removed = append(r.removed, k)
				delete(r.last, k)
			}
		}
	}
	if w.nEvents == 0 {
		w.enc.reset(ns)
		w.first = ns
	}
	w.enc.round(ns, keyframe, r.removed)
	w.nEvents++
	w.last = ns
	for i := range r.pending {
		ev := r.pending[i]
		ev.Sample.TimeNs = 0
		k := keyOf(&ev)
		if prev, ok := r.last[k]; ok && prev == ev {
			continue
		}
		r.last[k] = ev
		w.add(&r.pending[i], r.pendNow[i])
	}
	r.pending, r.pendNow = r.pending[:0], r.pendNow[:0]
	w.add(done, ns)
	r.valid = true
}

// seal compresses and writes the open block.
func (w *Writer) seal() error {
	if w.nEvents == 0 || w.err != nil {
		return w.err
	}
	raw := w.enc.buf
	h := blockHeader{seq: w.seq, events: uint32(w.nEvents), raw: uint32(len(raw)), first: w.first, last: w.last}
	w.out = h.marshal(w.out[:0])
	w.out = append(w.out, 0, 0, 0, 0) // CRC, set below
	hdrEnd := len(w.out)
	w.out = w.zenc.EncodeAll(raw, w.out)
	packed := w.out[hdrEnd:]
	binary.LittleEndian.PutUint32(w.out[16:], uint32(len(packed)))
	binary.LittleEndian.PutUint32(w.out[hdrEnd-4:], blockCRC(w.out[:hdrEnd], packed))
	w.seq++
	w.totalEvents += uint64(w.nEvents)
	w.totalBlocks++
	w.nEvents = 0
	if err := w.put(w.out); err != nil {
		return err
	}
	return w.maybeRotate()
}

func (w *Writer) maybeRotate() error {
	if w.file == nil {
		return nil
	}
	if !(w.opts.RotateSize > 0 && w.fileSize >= w.opts.RotateSize) &&
		!(w.opts.RotateAge > 0 && time.Since(w.fileStart) >= w.opts.RotateAge) {
		return nil
	}
	if err := w.file.Close(); err != nil {
		w.err = fmt.Errorf("rotate recording: %w", err)
		return w.err
	}
	// FILE.keep-1 -> FILE.keep (the oldest falls off), ..., FILE -> FILE.1.
	os.Remove(fmt.Sprintf("%s.%d", w.path, w.opts.Keep))
	for i := w.opts.Keep - 1; i >= 1; i-- {
		if err := os.Rename(fmt.Sprintf("%s.%d", w.path, i), fmt.Sprintf("%s.%d", w.path, i+1)); err != nil && !errors.Is(err, os.ErrNotExist) {
			w.err = fmt.Errorf("rotate recording: %w", err)
			return w.err
		}
	}
	if err := os.Rename(w.path, w.path+".1"); err != nil {
		w.err = fmt.Errorf("rotate recording: %w", err)
		return w.err
	}
	w.seq = 0
	w.rotations++
	if err := w.openFile(); err != nil {
		w.err = err
	}
	return w.err
}

// Flush seals the open block now, whatever its age (a round still being
// read is written as it is).
func (w *Writer) Flush() error {
	if len(w.rounds.pending) > 0 {
		w.flushPending()
	}
	return w.seal()
}

// Close flushes and closes the file (if the Writer made it).
func (w *Writer) Close() error {
	err := w.Flush()
	w.zenc.Close()
	if w.file != nil {
		if cerr := w.file.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("close recording: %w", cerr)
		}
		w.file = nil
	}
	return err
}

// Events returns how many events were written in sealed blocks.
func (w *Writer) Events() uint64 { return w.totalEvents }

// Blocks returns how many blocks were written.
func (w *Writer) Blocks() int { return w.totalBlocks }

// Rotated says where the older part went, for a summary line: "" when
// the file never rotated.
func (w *Writer) Rotated() string {
	if w.rotations == 0 {
		return ""
	}
	return fmt.Sprintf(" (rotated %d times: older parts in %s.1 to %s.%d)", w.rotations, w.path, w.path, min(w.rotations, w.opts.Keep))
}

// BytesWritten returns how many bytes went to the files (headers included).
func (w *Writer) BytesWritten() int64 { return w.totalWritten }
