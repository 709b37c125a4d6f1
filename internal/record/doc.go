// Package record writes and reads recordings: the events the aggregator
// applied, each with the wall-clock time it was applied at, so that a
// post-mortem replays them through the same aggregate.Aggregator and gets
// the numbers the live view showed.
//
// # File format (version 1)
//
// A file is a header followed by blocks, appended and never rewritten:
//
//	header: "CTREC\n" | version uint16 LE | uvarint n | n bytes of JSON (Header)
//	block:  "CTBK" | seq uint32 | events uint32 | raw uint32 | packed uint32 |
//	        first int64 | last int64 | crc32c uint32 | packed bytes
//
// Integers in block headers are little-endian; first and last are the wall
// clock (Unix ns) of the block's first and last event; the CRC (Castagnoli)
// covers the block header before it and the packed bytes. The packed bytes
// are one zstd frame holding the block's events (codec.go); each block
// decodes on its own: its string and owner tables and its time deltas start
// afresh. A writer seals a block every second (or every MaxBlockEvents
// events), so a crash or SIGKILL loses at most the last second. A reader
// that meets a damaged block scans forward to the next block magic and
// reports the bytes it skipped.
//
// # Limits
//
// A reader trusts nothing in a file: a block decompresses to at most
// 64 MiB, holds exactly the records its header counts and at most 4 per
// compressed byte (a zstd bomb compresses better than any recording);
// socket-table rounds, which hand out the whole table again, are bounded
// per block and per keyframe, and the table itself (format.go). Memory
// is proportional to one block; only regular files are opened.
//
// # Sampler rounds
//
// The socket-table sampler reports every live socket every second
// (KindSockOpen ... KindSockSampleDone). Recorded verbatim that would be
// most of a file, so rounds are recorded as changes (rounds.go): a round
// marker naming the sockets gone since the previous round, the sockets new
// or changed, and the Done event. A full round (a keyframe) is written
// when a file starts and every KeyframeEvery; the reader rebuilds every
// round in full, so the aggregator sees what it saw live. After a lost
// block the reader skips delta rounds until the next keyframe and counts
// them (Stats.RoundsSkipped).
package record
