package identity

import "time"

// retire carries into table, the fresh listing, the entries of old (the
// listing before it) that are no longer there, marked gone, for goneKeep
// after they went: late events and reports still name them. went records
// when each went; past maxGone entries the oldest go first. An entry back
// in the fresh listing is live again. markGone returns a gone copy of a
// live entry, or nil when the entry is already marked gone.
func retire[K comparable, V any](old, table map[K]*V, went map[K]time.Time, now time.Time, markGone func(*V) *V) {
	for k, v := range old {
		if _, ok := table[k]; ok {
			delete(went, k)
			continue
		}
		if g := markGone(v); g != nil {
			v = g
			went[k] = now
		}
		if now.Sub(went[k]) < goneKeep {
			table[k] = v
		} else {
			delete(went, k)
		}
	}
	for len(went) > maxGone {
		var oldest K
		var at time.Time
		for k, t := range went {
			if at.IsZero() || t.Before(at) {
				oldest, at = k, t
			}
		}
		delete(went, oldest)
		delete(table, oldest)
	}
}
