package probe

// Decoding ring buffer records: one table of record kinds, filled from the
// objects' records(), and one preamble (size check and aligned copy) for
// every record type.

import (
	"errors"
	"fmt"
	"unsafe"

	"github.com/conntracer/conntracer/internal/events"
)

// ErrShortRecord reports a ring buffer record smaller than its kind's layout.
var ErrShortRecord = errors.New("short record")

// ErrUnknownRecord reports a record whose kind byte this tracer does not know.
var ErrUnknownRecord = errors.New("unknown record kind")

// recordType is one kind of ring buffer record: the value of its first
// byte (enum record_kind, bpf/conntracer.h), its layout's size and its
// decoder, which overwrites every field of ev that the kind uses.
type recordType struct {
	kind   uint8
	name   string // the C struct, for errors
	size   int
	decode func(raw []byte, ev *events.Event)
}

// record describes a record kind whose layout is the generated type T
// (named cName in the C), decoded by decode, which reads the record with
// recordInto. Decode checks the size before it calls decode.
func record[T any](kind uint8, cName string, decode func(raw []byte, ev *events.Event)) recordType {
	var zero T
	return recordType{kind: kind, name: cName, size: int(unsafe.Sizeof(zero)), decode: decode}
}

// recordInto copies the record in raw, which Decode has checked is at
// least as long as T, into r, an aligned value of the generated type T:
// never a cast of the sample (ring buffer samples are aligned, fuzz inputs
// need not be). Inlined: no allocation, one copy.
func recordInto[T any](raw []byte, r *T) {
	copy(unsafe.Slice((*byte)(unsafe.Pointer(r)), unsafe.Sizeof(*r)), raw)
}

// decoders holds every object's record types, indexed by kind.
var decoders = buildDecoders(newObjects())

// buildDecoders indexes the objects' record types by kind. Two objects
// claiming one kind is a programming error.
func buildDecoders(objs []object) *[256]recordType {
	var t [256]recordType
	for _, o := range objs {
		for _, r := range o.records() {
			if t[r.kind].decode != nil {
				panic(fmt.Sprintf("record kind %d claimed twice (object %s)", r.kind, o.name()))
			}
			t[r.kind] = r
		}
	}
	return &t
}

// Decode turns one raw ring buffer record into ev, overwriting every field
// its kind uses. It does not allocate: the hot path calls it once per
// record with a reused Event.
func Decode(raw []byte, ev *events.Event) error {
	if len(raw) == 0 {
		return ErrShortRecord
	}
	t := &decoders[raw[0]]
	if t.decode == nil {
		return fmt.Errorf("%w %d", ErrUnknownRecord, raw[0])
	}
	if len(raw) < t.size {
		return fmt.Errorf("%s: %w: %d of %d bytes", t.name, ErrShortRecord, len(raw), t.size)
	}
	t.decode(raw, ev)
	return nil
}

// recordSize returns the size of a record kind's layout, or 0 for a kind
// this tracer does not know.
func recordSize(kind byte) int { return decoders[kind].size }
