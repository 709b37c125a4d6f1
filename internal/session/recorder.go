package session

import (
	"github.com/conntracer/conntracer/internal/aggregate"
	"github.com/conntracer/conntracer/internal/bootclock"
	"github.com/conntracer/conntracer/internal/version"

	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/conntracer/conntracer/internal/events"
	"github.com/conntracer/conntracer/internal/record"
)

// RecordConfig says what the session records.
type RecordConfig struct {
	Path       string        // the recording file ("": none)
	RotateSize int64         // start a new file past this many bytes (0: never)
	RotateAge  time.Duration // start a new file after this long (0: never)
	Keep       int           // rotated files kept
	// Flight keeps the last Flight of events in memory, written to
	// FlightDir on a new kind of finding or SIGUSR1 (0: off).
	Flight    time.Duration
	FlightDir string
}

// recorder sees every event the aggregator applies, on the event loop,
// with the same `now`: what `tracer report` replays is exactly what the
// live view aggregated. It writes to a file (RecordConfig.Path), to a
// bounded memory ring dumped on a new finding or SIGUSR1
// (RecordConfig.Flight), or both.
type recorder struct {
	file   *record.Writer
	flight *record.Writer
	ring   *flightRing
	dir    string // where flight dumps go
	seen   map[string]bool
	usr1   chan os.Signal
	stderr io.Writer
	path   string
	// err is the first write failure (full disk, I/O error) of the file
	// or of a flight dump: the recording stopped or a dump is missing, so
	// the process must end non-zero (Err) though the aggregate goes on.
	err    error
	closed bool
}

// newRecorder returns nil when cfg records nothing.
func newRecorder(cfg RecordConfig, stderr io.Writer) (*recorder, error) {
	if cfg.Path == "" && cfg.Flight <= 0 {
		return nil, nil
	}
	r := &recorder{stderr: stderr, seen: make(map[string]bool), dir: cfg.FlightDir, path: cfg.Path}
	opts := record.Options{Header: recordHeader(), RotateSize: cfg.RotateSize, RotateAge: cfg.RotateAge, Keep: cfg.Keep}
	if cfg.Path != "" {
		w, err := record.Create(cfg.Path, opts)
		if err != nil {
			return nil, fmt.Errorf("--record: %w", err)
		}
		r.file = w
	}
	if cfg.Flight > 0 {
		r.ring = &flightRing{window: cfg.Flight}
		fo := record.Options{Header: opts.Header, KeyframeEvery: 10 * time.Second}
		w, err := record.NewWriter(r.ring, fo)
		if err != nil {
			return nil, err
		}
		r.flight = w
		r.usr1 = make(chan os.Signal, 1)
		signal.Notify(r.usr1, syscall.SIGUSR1)
	}
	return r, nil
}

// Record writes one applied event.
func (r *recorder) Record(ev *events.Event, now time.Time) {
	if r == nil {
		return
	}
	if r.file != nil {
		r.checkFile(r.file.Write(ev, now))
	}
	if r.flight != nil {
		r.check(r.flight.Write(ev, now))
	}
}

// Tick runs when the event loop is idle: seal due blocks, and dump the
// flight ring on SIGUSR1 or on a finding kind not seen before.
func (r *recorder) Tick(now time.Time, snap *aggregate.Snapshot) {
	if r == nil {
		return
	}
	if r.file != nil {
		r.checkFile(r.file.Tick(now))
	}
	if r.flight == nil {
		return
	}
	r.check(r.flight.Tick(now))
	why := ""
	select {
	case <-r.usr1:
		why = "SIGUSR1"
	default:
	}
	if snap != nil {
		var kinds []string // new kinds of finding: one dump names them all
		for i := range snap.Findings {
			if k := snap.Findings[i].Kind; !r.seen[k] {
				r.seen[k] = true
				kinds = append(kinds, k)
			}
		}
		if len(kinds) > 0 {
			why = "finding " + strings.Join(kinds, ", ")
		}
	}
	if why != "" {
		r.dump(now, why)
	}
}

func (r *recorder) dump(now time.Time, why string) {
	if err := r.flight.Flush(); err != nil {
		r.check(err)
		return
	}
	path := filepath.Join(r.dir, "tracer-flight-"+now.UTC().Format("20060102T150405.000")+".ctrec")
	if err := r.ring.dump(path); err != nil {
		// A dump that did not reach the disk is a post-mortem lost: as
		// loud as a failed recording, and the exit says so too.
		os.Remove(path)
		r.fail(fmt.Errorf("flight recorder: %s: %w", why, err))
		return
	}
	fmt.Fprintf(r.stderr, "tracer: flight recorder: %s: wrote the last %s to %s\n", why, r.ring.window, path)
}

// checkFile reports a failure of the recording file.
func (r *recorder) checkFile(err error) {
	if err != nil && r.err == nil {
		r.fail(fmt.Errorf("recording to %s stopped: %w", r.path, err))
	}
}

// check reports a failure of the flight recorder's writer (in memory:
// only an encoding error could fail it).
func (r *recorder) check(err error) {
	if err != nil && r.err == nil {
		r.fail(fmt.Errorf("flight recorder: %w", err))
	}
}

// fail reports a write failure at once, once: recording stops (the writer's
// error is sticky), the aggregate goes on, and Err makes the exit non-zero.
func (r *recorder) fail(err error) {
	if r.err != nil {
		return
	}
	r.err = err
	fmt.Fprintf(r.stderr, "tracer: ERROR: %v\n"+
		"tracer: ERROR: nothing more is recorded; the tracer keeps running and will exit with status 1 (free space, then restart the recording)\n", err)
}

// Err is the first write failure of the recording or of a flight dump.
func (r *recorder) Err() error {
	if r == nil {
		return nil
	}
	return r.err
}

// Close flushes what is left and says what the recording holds: the
// summary line, or the failure (also returned). Idempotent.
func (r *recorder) Close() error {
	if r == nil || r.closed {
		return r.Err()
	}
	r.closed = true
	if r.usr1 != nil {
		signal.Stop(r.usr1)
	}
	if r.flight != nil {
		r.flight.Close()
	}
	if r.file == nil {
		return r.err
	}
	r.checkFile(r.file.Close())
	if r.err == nil {
		fmt.Fprintf(r.stderr, "tracer: recorded %d events in %d blocks, %d bytes, to %s%s\n",
			r.file.Events(), r.file.Blocks(), r.file.BytesWritten(), r.path, r.file.Rotated())
	} else {
		fmt.Fprintf(r.stderr, "tracer: ERROR: %s is incomplete: %d events in %d blocks reached it\n",
			r.path, r.file.Events(), r.file.Blocks())
	}
	return r.err
}

// flightRing keeps a recording's header and its last blocks in memory: a
// record.Writer writes the header in one Write and each block in one
// Write, so each call is one unit. Blocks older than window (by their last
// event) are dropped.
type flightRing struct {
	mu     sync.Mutex
	window time.Duration
	header []byte
	blocks [][]byte
	bytes  int
}

// Write implements io.Writer for record.NewWriter.
func (f *flightRing) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	b := append([]byte(nil), p...)
	if f.header == nil {
		f.header = b
		return len(p), nil
	}
	f.blocks = append(f.blocks, b)
	f.bytes += len(b)
	last := record.BlockLast(b)
	for len(f.blocks) > 1 && last-record.BlockLast(f.blocks[0]) > int64(f.window) {
		f.bytes -= len(f.blocks[0])
		f.blocks[0] = nil
		f.blocks = f.blocks[1:]
	}
	return len(p), nil
}

// dump writes the ring as a recording, mode 0600.
func (f *flightRing) dump(path string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	out, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("dump: %w", err)
	}
	if _, err := out.Write(f.header); err != nil {
		out.Close()
		return fmt.Errorf("dump: %w", err)
	}
	for _, b := range f.blocks {
		if _, err := out.Write(b); err != nil {
			out.Close()
			return fmt.Errorf("dump: %w", err)
		}
	}
	return out.Close()
}

// recordHeader describes this host and the tracer's command line for a
// recording's header.
func recordHeader() record.Header {
	h := record.Header{Tracer: version.Version(), Command: strings.Join(os.Args, " ")}
	h.Host, _ = os.Hostname()
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		h.Kernel = strings.TrimSpace(string(b))
	}
	h.BootTimeNs = bootclock.WallOffsetNs()
	return h
}
