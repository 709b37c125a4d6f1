package record

import (
	"encoding/binary"
	"hash/crc32"
	"time"
)

// Version is the format version this package writes. Readers accept it
// and older versions, and reject newer ones with ErrNewerVersion.
const Version = 1

var (
	fileMagic  = []byte("CTREC\n")
	blockMagic = []byte("CTBK")
)

// blockHeaderLen is the size of a block header, magic included.
const blockHeaderLen = 4 + 4 + 4 + 4 + 4 + 8 + 8 + 4

// Limits of the format that a reader enforces, so that a damaged or
// crafted file costs memory in proportion to one block and time in
// proportion to its own size (see reader.go's checkBlock).
const (
	// maxRawBlock bounds a block's decompressed size: a damaged length
	// field must not make the reader allocate gigabytes. Writers seal a
	// block every second or MaxBlockEvents (65536) events, a few MiB.
	maxRawBlock = 64 << 20
	// minRecordLen is the smallest encoded record (kind, time delta,
	// parts mask): a block cannot hold more than raw/minRecordLen.
	minRecordLen = 3
	// maxRecordsPerPackedByte bounds how well a block may compress.
	// Recorded events compress to 9-25 bytes each (0.04-0.11 records per
	// packed byte measured on churn, socket-table keyframes of 100,000
	// sockets and the recordings in testdata); only the same record
	// repeated compresses further, which is how a zstd bomb turns 2 KB
	// into a million events.
	maxRecordsPerPackedByte = 4
	// maxRoundsPerBlock bounds the socket-table rounds one block may
	// rebuild: a block spans about a second (Options.BlockEvery), and
	// each round hands out the whole table again, so rounds are what a
	// crafted file would repeat. 64 allows a 16 ms sample interval.
	maxRoundsPerBlock = 64
	// maxDeltaRounds bounds the rounds rebuilt from one keyframe: writers
	// write a keyframe every minute (Options.KeyframeEvery), 3,600 rounds
	// at a 17 ms sample interval.
	maxDeltaRounds = 3600
	// maxRoundSockets bounds the rebuilt socket table (the live sampler
	// reads every socket of the host; two million is beyond any host the
	// tracer was run on).
	maxRoundSockets = 1 << 21
)

// maxPacked is the largest compressed size zstd gives raw bytes (its
// worst case adds a block header per 128 KiB and a frame header).
func maxPacked(raw uint32) int64 { return int64(raw) + int64(raw)>>7 + 1<<10 }

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Header describes a recording: where and by what it was made. It is JSON
// in the file, so that fields can be added without a new version.
type Header struct {
	Version int       `json:"version"`
	Created time.Time `json:"created"`
	Host    string    `json:"host"`
	Kernel  string    `json:"kernel"`
	Tracer  string    `json:"tracer"`
	// BootTimeNs is the wall-clock time (Unix ns) at which the recording
	// host booted: kernel times (CLOCK_BOOTTIME ns, as in Conn.OpenNs)
	// plus BootTimeNs are wall-clock times.
	BootTimeNs int64  `json:"boot_time_ns"`
	Command    string `json:"command,omitempty"`
}

// blockHeader is the fixed part in front of each block's packed bytes.
type blockHeader struct {
	seq, events, raw, packed uint32
	first, last              int64 // wall clock of the first and last event, Unix ns
	crc                      uint32
}

func (h *blockHeader) marshal(b []byte) []byte {
	b = append(b, blockMagic...)
	b = binary.LittleEndian.AppendUint32(b, h.seq)
	b = binary.LittleEndian.AppendUint32(b, h.events)
	b = binary.LittleEndian.AppendUint32(b, h.raw)
	b = binary.LittleEndian.AppendUint32(b, h.packed)
	b = binary.LittleEndian.AppendUint64(b, uint64(h.first))
	b = binary.LittleEndian.AppendUint64(b, uint64(h.last))
	return b
}

// parseBlockHeader reads a header from b (len >= blockHeaderLen, magic
// already checked).
func parseBlockHeader(b []byte) blockHeader {
	le := binary.LittleEndian
	return blockHeader{
		seq: le.Uint32(b[4:]), events: le.Uint32(b[8:]), raw: le.Uint32(b[12:]), packed: le.Uint32(b[16:]),
		first: int64(le.Uint64(b[20:])), last: int64(le.Uint64(b[28:])), crc: le.Uint32(b[36:]),
	}
}

// blockCRC covers the header (without the CRC field) and the packed bytes.
func blockCRC(hdr, packed []byte) uint32 {
	c := crc32.Update(0, castagnoli, hdr[:blockHeaderLen-4])
	return crc32.Update(c, castagnoli, packed)
}

// BlockLast returns the wall-clock time (Unix ns) of the last event of the
// block that b starts with, 0 if b is not a block: for keepers of blocks
// such as a flight recorder's ring.
func BlockLast(b []byte) int64 {
	if len(b) < blockHeaderLen || string(b[:4]) != string(blockMagic) {
		return 0
	}
	return parseBlockHeader(b).last
}
