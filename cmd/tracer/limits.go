package main

import (
	"fmt"
	"os"
	"time"
)

// Upper bounds of the size flags. A size flag turns into kernel memory
// (maps, the ring buffer, socket buffers), user memory or series; without a
// bound a typo takes the machine down (--max-sockets 30000000 pinned 5.9 GB
// of unswappable kernel memory). Each bound is generous for any real box
// and says why it is where it is; the error names it.
const (
	// maxRingBufferBytes: 1 GiB. The ring buffer is pinned kernel memory
	// mapped twice into the tracer; at the measured ~25,000 records/s
	// of a saturated 2-core box, 8 MiB already holds several seconds.
	maxRingBufferBytes = 1 << 30
	// maxMaxSockets: 4 Mi entries, about 800 MB of kernel memory (an entry
	// of the socks map costs ~200 bytes with its hash overhead). More TCP
	// sockets than that at once exceed what the kernel's own default
	// limits (tcp_mem, file-max) let a box hold; LRU eviction covers the
	// rest.
	maxMaxSockets = 4 << 20
	// maxEventsBuffer: 256 MiB per ctnetlink event socket, and there is one
	// per namespace; it is kernel memory charged per namespace.
	maxEventsBuffer = 256 << 20
	// maxMetricsSeries: series of processes or destinations in /metrics.
	// Each is several series per scrape; beyond a few thousand the scrape
	// itself becomes the load and Prometheus' own limits bite.
	maxMetricsSeries = 10000
	// maxRecordKeep: rotated recording files kept; beyond it the directory
	// listing, not the data, is the problem, and rotation renames each.
	maxRecordKeep = 1000
	// maxFlight: the flight recorder keeps this much of the recording in
	// memory (compressed blocks), so its memory is the event rate times the
	// window: a day of a busy box would not fit. A longer history is what
	// --record, on disk, is for.
	maxFlight = time.Hour
	// maxWebConfigBytes: exporter-toolkit reads the whole web config into
	// memory (and again per connection): a real one is a few KB.
	maxWebConfigBytes = 1 << 20
)

// checkWebConfigFile refuses what is not a small regular file before
// exporter-toolkit reads it whole (/dev/zero grew memory ~400 MB/s, a FIFO
// would block start-up).
func checkWebConfigFile(path string) error {
	st, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("%w (give the path of a YAML file)", err)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("not a regular file (%s): give the path of a YAML file", st.Mode().Type())
	}
	if st.Size() > maxWebConfigBytes {
		return fmt.Errorf("%d bytes: a web config is a few KB, at most %d bytes are read", st.Size(), maxWebConfigBytes)
	}
	return nil
}
