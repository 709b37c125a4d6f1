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

// maxRawBlock bounds a block's decompressed size: a damaged length field
// must not make the reader allocate gigabytes.
const maxRawBlock = 64 << 20

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
