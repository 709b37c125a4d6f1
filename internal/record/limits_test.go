package record

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/conntracer/conntracer/internal/events"
)

// craftBlock builds a block with a valid checksum around raw, claiming
// the given events and raw size (as a hostile writer would).
func craftBlock(t testing.TB, seq, events, rawLen uint32, packed []byte) []byte {
	t.Helper()
	h := blockHeader{seq: seq, events: events, raw: rawLen, packed: uint32(len(packed)), first: t0.UnixNano(), last: t0.UnixNano()}
	b := h.marshal(nil)
	b = append(b, 0, 0, 0, 0)
	b = append(b, packed...)
	binary.LittleEndian.PutUint32(b[blockHeaderLen-4:], blockCRC(b[:blockHeaderLen], packed))
	return b
}

func compress(t testing.TB, raw []byte) []byte {
	t.Helper()
	z, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedBestCompression))
	if err != nil {
		t.Fatal(err)
	}
	defer z.Close()
	return z.EncodeAll(raw, nil)
}

// headerOnly is a recording's header without blocks.
func headerOnly(t testing.TB) []byte {
	return writeAll(t, Options{}, nil)
}

// crafted are the hostile recordings of issue 18: each with what the
// reader must say about it.
func crafted(t testing.TB) map[string][]byte {
	head := headerOnly(t)
	out := map[string][]byte{}

	// A block header claiming 4 GiB, in a file of a few KB.
	huge := append([]byte(nil), head...)
	huge = append(huge, craftBlock(t, 0, 10, 0xFFFFFFFF, bytes.Repeat([]byte{1}, 2000))...)
	binary.LittleEndian.PutUint32(huge[len(head)+16:], 0xFFFFFFF0) // packed too
	out["huge length"] = huge

	// A zstd bomb: a million copies of the smallest record (a closed
	// connection with no parts), 3 MB that compress to a few hundred bytes.
	rec := []byte{byte(events.KindConnClosed), 0, 0}
	raw := bytes.Repeat(rec, 1<<20)
	out["zstd bomb"] = append(append([]byte(nil), head...), craftBlock(t, 0, 1<<20, uint32(len(raw)), compress(t, raw))...)

	// A round bomb: a keyframe of 1,000 sockets, then a block of 100,000
	// empty delta rounds, each of which would hand out the whole table.
	var sockets []stamped
	for _, ev := range sockRound(1000, 6e12, func(int) events.TCPState { return events.TCPEstablished }) {
		sockets = append(sockets, stamped{ev, t0})
	}
	rb := writeAll(t, Options{}, sockets)
	// Random time steps keep the block from compressing better than real
	// events: the round limits, not the compression check, must stop it.
	rng := rand.New(rand.NewPCG(3, 4))
	var rounds []byte
	for range 10000 {
		rounds = append(rounds, kindRound)
		rounds = binary.AppendVarint(rounds, int64(1+rng.IntN(1<<20)))
		rounds = append(rounds, 0, 0)                               // a delta, nothing removed
		rounds = append(rounds, byte(events.KindSockSampleDone), 0) // Done, same time
		rounds = append(rounds, partSample, 0, 0, 0, 0)             // sample: no times, no ports
	}
	out["round bomb"] = append(rb, craftBlock(t, 1, 20000, uint32(len(rounds)), compress(t, rounds))...)
	return out
}

// TestCraftedRecordingsAreBounded: each crafted file is read in bounded
// time and memory, hands out no more than the file can hold, and says
// what was wrong.
func TestCraftedRecordingsAreBounded(t *testing.T) {
	for name, b := range crafted(t) {
		t.Run(name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			start := time.Now()
			n, st, err := countAll(t, b)
			took := time.Since(start)
			runtime.ReadMemStats(&after)
			alloc := after.TotalAlloc - before.TotalAlloc
			t.Logf("%d bytes: %d events, %v, %d bytes allocated, %v, damage %+v", len(b), n, err, alloc, took, st.Damage)
			if limit := 64*len(b) + 1<<16; n > limit {
				t.Errorf("%d events from %d bytes, want at most %d", n, len(b), limit)
			}
			// One block of 64 MiB at most, and its rebuilt rounds.
			if alloc > 256<<20 {
				t.Errorf("allocated %d MB", alloc>>20)
			}
			if took > 10*time.Second {
				t.Errorf("took %v", took)
			}
			if err == nil && len(st.Damage) == 0 {
				t.Fatal("no error and no damage reported")
			}
			msg := fmt.Sprint(err)
			for _, d := range st.Damage {
				msg += " " + d.Why
			}
			want := map[string]string{"huge length": "block header damaged", "zstd bomb": "zstd bomb", "round bomb": "socket-table rounds"}[name]
			if !strings.Contains(msg, want) {
				t.Errorf("says %q, want %q", msg, want)
			}
		})
	}
}

// countAll reads b to the end and counts its events.
func countAll(t testing.TB, b []byte) (int, Stats, error) {
	r, err := NewReader(bytes.NewReader(b), int64(len(b)), "test")
	if err != nil {
		return 0, Stats{}, err
	}
	defer r.Close()
	var ev events.Event
	for n := 0; ; n++ {
		if _, err := r.Next(&ev); err != nil {
			if errors.Is(err, io.EOF) {
				err = nil
			}
			return n, r.Stats(), err
		}
	}
}

// TestCraftedCorpus keeps the crafted recordings in the fuzz target's
// corpus (testdata/fuzz/FuzzReader), where `go test` runs them as seeds
// of FuzzReader: each file is there and still read as damage.
// UPDATE_CORPUS=1 rewrites them.
func TestCraftedCorpus(t *testing.T) {
	for name, b := range crafted(t) {
		path := filepath.Join("testdata", "fuzz", "FuzzReader", "crafted-"+strings.ReplaceAll(name, " ", "-"))
		if os.Getenv("UPDATE_CORPUS") != "" {
			if err := os.WriteFile(path, fmt.Appendf(nil, "go test fuzz v1\n[]byte(%q)\n", b), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		text, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%v: run UPDATE_CORPUS=1 go test -run TestCraftedCorpus ./internal/record", err)
		}
		lines := strings.Split(string(text), "\n")
		if len(lines) < 2 || lines[0] != "go test fuzz v1" || !strings.HasPrefix(lines[1], "[]byte(") {
			t.Fatalf("%s: not a fuzz corpus file", path)
		}
		kept, err := strconv.Unquote(strings.TrimSuffix(strings.TrimPrefix(lines[1], "[]byte("), ")"))
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if _, st, err := countAll(t, []byte(kept)); err == nil && len(st.Damage) == 0 {
			t.Errorf("%s reads without damage: it no longer tests the limits", path)
		}
	}
}

// TestOpenRefusesWhatIsNotAFile: a FIFO without a writer, a pipe and a
// device are refused at once with what they are, not a hang or "empty".
func TestOpenRefusesWhatIsNotAFile(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	defer pw.Close()
	go func() { _, _ = pw.Write(writeAll(t, Options{}, everyKind())) }()
	for _, tc := range []struct{ path, want string }{
		{fifo, "a FIFO or pipe"},
		{fmt.Sprintf("/proc/self/fd/%d", pr.Fd()), "a FIFO or pipe"},
		{"/dev/null", "a character device"},
		{dir, "a directory"},
	} {
		done := make(chan error, 1)
		go func() {
			r, err := Open(tc.path)
			if err == nil {
				r.Close()
			}
			done <- err
		}()
		select {
		case err := <-done:
			if !errors.Is(err, ErrNotRegular) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "regular file") {
				t.Errorf("%s: %v, want %q", tc.path, err, tc.want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: Open still blocked after 5 s", tc.path)
		}
	}
}

// TestDamageSummaryIsExact: 9 of 16 blocks damaged, at the start, in the
// middle and at the end: the summary says 9.
func TestDamageSummaryIsExact(t *testing.T) {
	var in []stamped
	for i := range 16 {
		for j := range 20 {
			in = append(in, stamped{closeEvent(i*20 + j), t0.Add(time.Duration(i)*time.Second + time.Duration(j)*time.Millisecond)})
		}
	}
	b := writeAll(t, Options{}, in)
	offs := blockOffsets(b)
	if len(offs)-1 != 16 {
		t.Fatalf("%d blocks, want 16", len(offs)-1)
	}
	bad := []int{0, 1, 5, 6, 7, 8, 13, 14, 15}
	for _, i := range bad {
		b[offs[i]+blockHeaderLen+5] ^= 0x5a
	}
	wantEvents := 0
	for i := range 16 {
		wantEvents += int(parseBlockHeader(b[offs[i]:]).events)
	}
	var lost int64
	for _, i := range bad {
		lost += int64(offs[i+1] - offs[i])
		wantEvents -= int(parseBlockHeader(b[offs[i]:]).events)
	}
	got, st, err := readAll(t, b)
	if err != nil {
		t.Fatal(err)
	}
	if st.LostBlocks != len(bad) || st.Blocks != 16-len(bad) || len(got) != wantEvents {
		t.Fatalf("lost %d blocks, read %d with %d events; want %d lost, %d read with %d events", st.LostBlocks, st.Blocks, len(got), len(bad), 16-len(bad), wantEvents)
	}
	if st.LostBytes != lost {
		t.Fatalf("lost %d bytes, want %d", st.LostBytes, lost)
	}
	// A block cut short at the end is one more.
	_, st, _ = readAll(t, b[:offs[16]-3])
	if st.LostBlocks != len(bad) {
		t.Fatalf("cut inside the damaged last block: lost %d, want %d", st.LostBlocks, len(bad))
	}
}

// TestBlockHoldsWhatItsHeaderSays: a block with more or fewer records
// than its header promised is damage.
func TestBlockHoldsWhatItsHeaderSays(t *testing.T) {
	head := headerOnly(t)
	var raw []byte
	for range 10 {
		raw = append(raw, byte(events.KindConnClosed), 0, 0)
	}
	for _, claim := range []uint32{5, 20} {
		b := append(append([]byte(nil), head...), craftBlock(t, 0, claim, uint32(len(raw)), compress(t, raw))...)
		r, err := NewReader(bytes.NewReader(b), int64(len(b)), "t")
		if err != nil {
			t.Fatal(err)
		}
		var ev events.Event
		n := 0
		for {
			if _, err := r.Next(&ev); err != nil {
				if !errors.Is(err, io.EOF) {
					t.Logf("claim %d: %v", claim, err)
				}
				break
			}
			n++
		}
		st := r.Stats()
		r.Close()
		if len(st.Damage) != 1 || !strings.Contains(st.Damage[0].Why, "header") || n > int(claim) {
			t.Fatalf("claim %d: %d events, damage %+v", claim, n, st.Damage)
		}
	}
}
