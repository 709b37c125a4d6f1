package session

import (
	"context"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/conntracer/conntracer/internal/events"
	"github.com/conntracer/conntracer/internal/identity"
	"github.com/conntracer/conntracer/internal/kernel"
)

// IdentityConfig says where container names come from.
type IdentityConfig struct {
	// Sources: the runtimes' sockets and state; the zero value means
	// identity.DefaultSources().
	Sources identity.Sources
	// Refresh is how often the cgroup tree is walked again and new
	// containers named (0: DefaultIdentityRefresh).
	Refresh time.Duration
}

// DefaultIdentityRefresh: a container that starts is named within this
// long; until then its lines carry the cgroup id alone. A walk of a busy
// node's cgroup tree costs a few ms.
const DefaultIdentityRefresh = 2 * time.Second

// identities owns the Resolver: refreshed on a goroutine of its own, read
// (Lookup) by the event loop's stream, the scrapes and the renderings.
type identities struct {
	res *identity.Resolver
	// netns names network namespaces (`ip netns`); replaced whole by
	// refresh, read under mu.
	mu      sync.RWMutex
	netns   map[uint32]string
	every   time.Duration
	stderr  io.Writer
	lastErr string // the last refresh error reported, to report changes once
}

// newIdentities finds the sources, prints which are in use and names
// every cgroup present now, so that the start-up scan's owners are named.
func newIdentities(cfg IdentityConfig, stderr io.Writer) *identities {
	src := cfg.Sources
	if src == (identity.Sources{}) {
		src = identity.DefaultSources()
	}
	res, note := identity.NewResolver(src)
	fmt.Fprintf(stderr, "tracer: note: %s\n", note)
	id := &identities{res: res, every: cfg.Refresh, stderr: stderr}
	if id.every <= 0 {
		id.every = DefaultIdentityRefresh
	}
	id.refresh()
	return id
}

// refresh walks the cgroup tree and names what is new. Errors are notes,
// reported when they change: the cgroup path is always there to show.
func (id *identities) refresh() {
	if names, err := kernel.NetNSNames(); err == nil {
		id.mu.Lock()
		id.netns = names
		id.mu.Unlock()
	}
	paths, err := kernel.CgroupNames()
	if err == nil {
		err = id.res.Refresh(paths)
	}
	msg := ""
	if err != nil {
		msg = err.Error()
	}
	if msg != id.lastErr && msg != "" {
		fmt.Fprintf(id.stderr, "tracer: note: container names: %v\n", err)
	}
	id.lastErr = msg
}

// run refreshes until ctx is done.
func (id *identities) run(ctx context.Context) {
	t := time.NewTicker(id.every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			id.refresh()
		}
	}
}

// Identities returns the lookup of the session's container identities by
// cgroup id, safe from any goroutine.
func (s *Session) Identities() events.CgroupLookup { return s.ids.res.Lookup }

func (id *identities) netnsName(ino uint32) string {
	id.mu.RLock()
	defer id.mu.RUnlock()
	return id.netns[ino]
}

// cgroupPath names a cgroup id by its path, for the cgroup label.
func (id *identities) cgroupPath(cg uint64) string {
	if info := id.res.Lookup(cg); info != nil {
		return info.Path
	}
	return ""
}

// maxRecordedNames bounds the set of cgroups already named in a recording.
const maxRecordedNames = 1 << 16

// recordedNames are the cgroups whose identity a recording carries.
type recordedNames struct {
	lookup  events.CgroupLookup
	written map[uint64]bool
}

// nameOwner writes a KindCgroupIdentity event before the first event of a
// process in a cgroup whose identity is known, once per cgroup and
// recording, so that a report read after the container is gone still
// names it. The lookup is a map read; the event is built only on a
// cgroup's first sighting.
func (r *recorder) nameOwner(ev *events.Event, now time.Time) {
	n := &r.names
	if n.lookup == nil {
		return
	}
	var cg uint64
	switch ev.Kind {
	case events.KindConnClosed, events.KindConnExisting, events.KindSockOpen:
		cg = ev.Conn.Owner.CgroupID
	case events.KindConnect, events.KindUnixListener, events.KindUnixDgramSend:
		cg = ev.Connect.Owner.CgroupID
	}
	if cg == 0 || n.written[cg] {
		return
	}
	info := n.lookup(cg)
	if info == nil || info.Identity.IsZero() {
		return
	}
	if n.written == nil || len(n.written) >= maxRecordedNames {
		// Bounded under container churn: forgetting only means a
		// cgroup seen again is named again, a few bytes.
		n.written = map[uint64]bool{}
	}
	n.written[cg] = true
	named := events.Event{Kind: events.KindCgroupIdentity, Cgroup: events.CgroupRecord{ID: cg, Info: *info}}
	if r.file != nil {
		r.checkFile(r.file.Write(&named, now))
	}
	if r.flight != nil {
		r.check(r.flight.Write(&named, now))
	}
}
