package record

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/conntracer/conntracer/internal/events"
)

// FuzzReader feeds arbitrary bytes to the reader: it must never panic and
// must end (io.EOF or an error) without reading more events than bytes.
func FuzzReader(f *testing.F) {
	f.Add(writeAll(f, Options{}, everyKind()))
	f.Add(writeAll(f, Options{}, rounds()[:200]))
	f.Add([]byte("CTREC\n\x01\x00\x02{}CTBK"))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := NewReader(bytes.NewReader(b), int64(len(b)), "fuzz")
		if err != nil {
			return
		}
		defer r.Close()
		var ev events.Event
		for n := 0; ; n++ {
			if _, err := r.Next(&ev); err != nil {
				if !errors.Is(err, io.EOF) && r.Stats().Events != 0 {
					t.Fatalf("error %v after %d events: only an empty read may fail", err, r.Stats().Events)
				}
				return
			}
			if n > 64*len(b)+1<<20 {
				t.Fatalf("more than %d events from %d bytes", n, len(b))
			}
		}
	})
}
