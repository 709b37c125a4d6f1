package aggregate

import (
	"cmp"
	"sort"
)

// recentCloses remembers the sockets closed during the last two rounds,
// in two append-only generations: an append per close is all the hot path
// pays. The current generation is sorted when a round starts; closes
// applied in the middle of a round (which a live tracer never does: it
// applies a round as one batch) are scanned linearly, and sorted in once
// there are many.
type recentCloses struct {
	cur, prev keyChunks
	sorted    int // cur's first sorted keys are sorted
	free      []*[keysPerChunk]liveKey
}

// maxUnsorted bounds the linear scan of closes applied within a round.
const maxUnsorted = 256

func (r *recentCloses) add(k liveKey) { r.cur.add(k, &r.free) }

// rotate starts a new generation, forgetting the oldest.
func (r *recentCloses) rotate() {
	r.sortCur()
	r.prev.reset(&r.free)
	r.prev, r.cur = r.cur, r.prev
	r.sorted = 0
}

func (r *recentCloses) sortCur() {
	if r.sorted < r.cur.n {
		sort.Sort(&r.cur)
		r.sorted = r.cur.n
	}
}

func (r *recentCloses) has(k liveKey) bool {
	if r.cur.n-r.sorted > maxUnsorted {
		r.sortCur()
	}
	if r.cur.search(r.sorted, k) {
		return true
	}
	for i := r.sorted; i < r.cur.n; i++ {
		if *r.cur.at(i) == k {
			return true
		}
	}
	return r.prev.search(r.prev.n, k)
}

func compareLiveKey(a, b liveKey) int {
	return cmp.Or(cmp.Compare(a.openNs, b.openNs), cmp.Compare(a.netns, b.netns),
		cmp.Compare(a.rport, b.rport), cmp.Compare(a.role, b.role))
}

// keysPerChunk is the size of a keyChunks chunk (64 KiB of keys).
const keysPerChunk = 4096

// keyChunks is a sequence of keys stored in fixed-size chunks, which a
// recentCloses hands back and forth between its generations.
//
// Why not a slice: a generation holds every close of a round (millions
// at the target rate), and a slice grown by append copies itself and
// leaves its old array to the garbage collector each time it doubles. In
// BenchmarkDecodeAggregate, whose records fill the first generations,
// that cost about 50 ns per record (NOTE-perf-aggregate.md); chunks are
// never copied and are reused from round to round.
type keyChunks struct {
	chunks []*[keysPerChunk]liveKey
	n      int
}

func (c *keyChunks) at(i int) *liveKey { return &c.chunks[i/keysPerChunk][i%keysPerChunk] }

// add appends k, taking a chunk from free when the last one is full.
func (c *keyChunks) add(k liveKey, free *[]*[keysPerChunk]liveKey) {
	if c.n == len(c.chunks)*keysPerChunk {
		var ch *[keysPerChunk]liveKey
		if f := *free; len(f) > 0 {
			ch = f[len(f)-1]
			f[len(f)-1] = nil
			*free = f[:len(f)-1]
		} else {
			ch = new([keysPerChunk]liveKey)
		}
		c.chunks = append(c.chunks, ch)
	}
	*c.at(c.n) = k
	c.n++
}

// reset empties c, handing its chunks to free.
func (c *keyChunks) reset(free *[]*[keysPerChunk]liveKey) {
	*free = append(*free, c.chunks...)
	clear(c.chunks)
	c.chunks = c.chunks[:0]
	c.n = 0
}

// search reports whether k is among the first n keys, which are sorted.
func (c *keyChunks) search(n int, k liveKey) bool {
	i := sort.Search(n, func(i int) bool { return compareLiveKey(*c.at(i), k) >= 0 })
	return i < n && *c.at(i) == k
}

// Len, Less and Swap sort the keys (sort.Interface).
func (c *keyChunks) Len() int           { return c.n }
func (c *keyChunks) Less(i, j int) bool { return compareLiveKey(*c.at(i), *c.at(j)) < 0 }
func (c *keyChunks) Swap(i, j int)      { a, b := c.at(i), c.at(j); *a, *b = *b, *a }
