package session

import (
	"context"
	"fmt"
	"io"
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
	// nets names network namespaces (pod, container, `ip netns`, host).
	nets *identity.NetNSResolver
	// v1: no cgroup2 is mounted, processes are named by pid (RefreshByPID).
	v1      bool
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
	id := &identities{res: res, nets: identity.NewNetNSResolver("", res), every: cfg.Refresh, stderr: stderr,
		v1: !identity.CgroupV2Mounted("/proc/self/mountinfo")}
	if id.v1 {
		fmt.Fprintf(stderr, "tracer: note: cgroup v1 only (no cgroup2 mounted): processes are named by pid, from the v1 lines of /proc/PID/cgroup\n")
	}
	if id.every <= 0 {
		id.every = DefaultIdentityRefresh
	}
	id.refresh()
	return id
}

// refresh walks the cgroup tree and names what is new. Errors are notes,
// reported when they change: the cgroup path is always there to show.
func (id *identities) refresh() {
	var err error
	if id.v1 {
		err = id.res.RefreshByPID("/proc")
	} else {
		var paths map[uint64]string
		if paths, err = kernel.CgroupNames(); err == nil {
			err = id.res.Refresh(paths)
		}
	}
	// After the cgroups: a namespace is named by the pod or container
	// whose cgroup the resolver has just named.
	ipNames, nerr := kernel.NetNSNames()
	if nerr != nil && err == nil {
		err = fmt.Errorf("ip netns names: %w", nerr)
	}
	id.nets.Refresh(ipNames)
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

// NetNSNames returns the lookup of the session's network namespace names
// by inode (pod, container, `ip netns` name, "host"), safe from any
// goroutine.
func (s *Session) NetNSNames() events.NetNSLookup { return s.ids.nets.Lookup }

// cgroupPath names a cgroup id by its path, for the cgroup label.
func (id *identities) cgroupPath(cg uint64) string {
	if info := id.res.Lookup(cg); info != nil {
		return info.Path
	}
	return ""
}

// maxRecordedNames bounds the set of cgroups already named in a recording.
const maxRecordedNames = 1 << 16

// recordedNames are the cgroups whose identity, and the network
// namespaces whose name, a recording carries.
type recordedNames struct {
	lookup  events.CgroupLookup
	written map[uint64]bool
	// netns names namespaces (nil: none recorded); netnsWritten holds
	// each namespace's name as recorded, so that a namespace named later
	// (its pod resolved) or its inode reused is recorded again.
	netns        func(inode uint32) *identity.NetNSInfo
	netnsWritten map[uint32]string
}

// nameOwner writes a KindCgroupIdentity event before the first event of a
// process in a cgroup whose identity is known, once per cgroup and
// recording, so that a report read after the container is gone still
// names it. The lookup is a map read; the event is built only on a
// cgroup's first sighting.
func (r *recorder) nameOwner(ev *events.Event, now time.Time) {
	r.nameNetNS(ev, now)
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

// nameNetNS writes a KindNetNSName event before the first event in a
// network namespace that has a name, and again when its name changes,
// so that a report read after the namespace is gone still names it. The
// lookup is a map read; the event is built only when the name is new.
func (r *recorder) nameNetNS(ev *events.Event, now time.Time) {
	n := &r.names
	if n.netns == nil || ev.Kind == events.KindNetNSName || ev.Kind == events.KindCgroupIdentity {
		return
	}
	ino := ev.NetNS()
	if ino == 0 {
		return
	}
	info := n.netns(ino)
	if info == nil || info.Name == "" || n.netnsWritten[ino] == info.Name {
		return
	}
	if n.netnsWritten == nil || len(n.netnsWritten) >= maxRecordedNames {
		n.netnsWritten = map[uint32]string{}
	}
	n.netnsWritten[ino] = info.Name
	named := events.Event{Kind: events.KindNetNSName, NetNSName: events.NetNSRecord{Inode: ino, Name: info.Name, Source: info.Source}}
	if r.file != nil {
		r.checkFile(r.file.Write(&named, now))
	}
	if r.flight != nil {
		r.check(r.flight.Write(&named, now))
	}
}
