package identity

import (
	"cmp"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/conntracer/conntracer/internal/events"
)

// Resolver keeps one Identity per cgroup v2 id, refreshed from the cgroup
// tree and the runtimes by Refresh on one goroutine (the sampler's), read
// by Lookup from any (the event loop's stream, scrapes, renderings).
//
// Memory stays bounded by what exists: Refresh replaces the table with the
// cgroups present now, so a removed container's entry, and the names the
// runtime gave it, go with its cgroup.
type Resolver struct {
	src     Sources
	engines []engine // podman first: a podman host may also answer on docker.sock
	crio    *http.Client
	tasks   string // containerd's bundles; "" when absent

	mu    sync.RWMutex
	table map[uint64]*events.CgroupInfo // replaced whole by Refresh, never mutated
	// names caches the runtimes' answers by container id; gone holds when
	// each removed cgroup was last seen. Only Refresh touches them.
	names map[string]names
	gone  map[uint64]time.Time
	// pids maps processes to their cgroup's id on cgroup v1-only hosts
	// (v1.go); replaced whole by RefreshByPID, read under mu.
	pids map[uint32]uint64
}

// unreachable says why a runtime's socket that exists did not answer
// (permission denied, refused, timed out), "" when there is no socket:
// the runtime is absent, which is no failure. A socket only its owner or
// group may write (CRI-O's is root's, mode 0660) is the DaemonSet's case:
// the tracer runs as another user (deploy/kubernetes/conntracer.yaml).
func unreachable(socket string, err error) string {
	if _, serr := os.Stat(socket); errors.Is(serr, fs.ErrNotExist) {
		return ""
	}
	why := err.Error()
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		why = socket + ": " + op.Op + ": " + op.Err.Error()
	}
	if errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM) {
		why += fmt.Sprintf(" as uid %d: the socket is not writable by the tracer's user or groups; "+
			"see the runtime socket note in deploy/kubernetes/conntracer.yaml", os.Getuid())
	}
	return why
}

// goneKeep is how long a removed cgroup stays in the table, marked Gone:
// long enough for the aggregate's processes in it to expire (its idle
// expiry is minutes), bounded by maxGone entries under heavy churn.
const (
	goneKeep = 15 * time.Minute
	maxGone  = 16384
)

// engine is one Docker Engine API endpoint.
type engine struct {
	runtime string
	client  *http.Client
}

// NewResolver finds which of src's sources answer now and returns the
// resolver with a note for the start-up line saying which are in use. A
// source that is absent is no error: identities then come from the cgroup
// path alone.
func NewResolver(src Sources) (*Resolver, string) {
	r := &Resolver{src: src, table: map[uint64]*events.CgroupInfo{}, names: map[string]names{}, gone: map[uint64]time.Time{}}
	var used, absent, failed []string
	try := func(name, socket, ping string) *http.Client {
		if socket == "" {
			return nil
		}
		c := unixHTTP(socket)
		resp, err := c.Get("http://localhost" + ping)
		if err != nil {
			if why := unreachable(socket, err); why != "" {
				failed = append(failed, name+" ("+why+")")
			} else {
				absent = append(absent, name)
			}
			return nil
		}
		resp.Body.Close()
		used = append(used, name+" ("+socket+")")
		return c
	}
	if c := try(RuntimePodman, src.PodmanSocket, "/_ping"); c != nil {
		r.engines = append(r.engines, engine{RuntimePodman, c})
	}
	if c := try(RuntimeDocker, src.DockerSocket, "/_ping"); c != nil {
		r.engines = append(r.engines, engine{RuntimeDocker, c})
	}
	r.crio = try(RuntimeCRIO, src.CRIOSocket, "/info")
	if src.ContainerdTasks != "" {
		if st, err := os.Stat(src.ContainerdTasks); err == nil && st.IsDir() {
			r.tasks = src.ContainerdTasks
			used = append(used, RuntimeContainerd+" ("+src.ContainerdTasks+")")
		} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
			failed = append(failed, RuntimeContainerd+" ("+err.Error()+")")
		} else {
			absent = append(absent, RuntimeContainerd)
		}
	}
	note := "container names from " + strings.Join(used, ", ")
	if len(used) == 0 {
		note = "no container runtime reachable"
		if len(absent) > 0 {
			note += " (" + strings.Join(absent, ", ") + ")"
		}
		note += ": containers are named by the id in their cgroup path"
	}
	if len(failed) > 0 {
		// A runtime that is there but did not answer is said by name,
		// with why, even when another one names containers: its own
		// containers keep the ids of their cgroup paths.
		note += "; not queried: " + strings.Join(failed, "; ")
		if len(used) > 0 {
			note += " (its containers are named by the ids in their cgroup paths)"
		}
	}
	return r, note
}

// Refresh rebuilds the table from the cgroup tree (id -> path, as
// kernel.CgroupNames returns it), asking the runtimes about containers not
// seen before. It returns the first lookup error, for a note; the table is
// complete regardless (an unanswered container keeps the identity its
// cgroup path gives, and is asked again next time).
func (r *Resolver) Refresh(paths map[uint64]string) error {
	table := make(map[uint64]*events.CgroupInfo, len(paths))
	live := make(map[string]bool)
	var firstErr error
	for cg, p := range paths {
		id := FromCgroupPath(p)
		id.Unit = clean(id.Unit) // systemd escapes with '\\' (run-r\x2d1.scope)
		if id.ContainerID != "" {
			live[id.ContainerID] = true
			if err := r.name(&id); err != nil && firstErr == nil {
				firstErr = err
			}
		}
		table[cg] = &events.CgroupInfo{Path: p, Identity: id, Workload: id.Workload()}
	}
	r.retire(table, time.Now())
	for cid := range r.names {
		if !live[cid] {
			delete(r.names, cid)
		}
	}
	r.mu.Lock()
	r.table = table
	r.mu.Unlock()
	return firstErr
}

// retire carries the cgroups that disappeared into the new table, marked
// Gone, for goneKeep; past maxGone the oldest go first.
func (r *Resolver) retire(table map[uint64]*events.CgroupInfo, now time.Time) {
	r.mu.RLock()
	old := r.table
	r.mu.RUnlock()
	retire(old, table, r.gone, now, func(info *events.CgroupInfo) *events.CgroupInfo {
		if info.Gone {
			return nil
		}
		g := *info
		g.Gone = true
		return &g
	})
}

// name fills in id's names from the cache or the runtimes.
func (r *Resolver) name(id *events.Identity) error {
	n, ok := r.names[id.ContainerID]
	if !ok {
		var err error
		n, ok, err = r.ask(id)
		if err != nil {
			return fmt.Errorf("name container %s: %w", id.ShortID(), err)
		}
		if ok {
			n.namespace, n.pod, n.container = clean(n.namespace), clean(n.pod), clean(n.container)
			r.names[id.ContainerID] = n
		}
	}
	if n.runtime != "" {
		id.Runtime = n.runtime
	}
	id.Namespace, id.Pod, id.Container = n.namespace, n.pod, n.container
	return nil
}

// clean makes what a runtime said safe to print anywhere without escaping
// (a terminal, a JSON string, a label value): printable ASCII without
// quotes or backslashes, at most 253 bytes (a DNS name, the longest name
// Kubernetes gives). Real names pass unchanged: Kubernetes and the
// runtimes allow only letters, digits, '-', '_' and '.'.
func clean(s string) string {
	const maxLen = 253
	if len(s) > maxLen {
		s = s[:maxLen]
	}
	ok := true
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' {
			ok = false
			break
		}
	}
	if ok {
		return s
	}
	b := []byte(s)
	for i, c := range b {
		if c < 0x20 || c >= 0x7f || c == '"' || c == '\\' {
			b[i] = '?'
		}
	}
	return string(b)
}

// ask queries the runtimes the path points at (all of them when it does
// not say, as with the kubelet's cgroupfs layout), the first that knows
// the container answering. ok is false when none could answer; a
// container every runtime asked denies is cached as nameless.
func (r *Resolver) ask(id *events.Identity) (n names, ok bool, err error) {
	type source struct {
		runtime string
		names   func(cid string) (names, error)
	}
	var sources []source
	consider := func(rt string) bool { return id.Runtime == "" || id.Runtime == rt }
	if r.tasks != "" && consider(RuntimeContainerd) {
		sources = append(sources, source{RuntimeContainerd, func(cid string) (names, error) { return containerdNames(r.tasks, cid) }})
	}
	if r.crio != nil && consider(RuntimeCRIO) {
		sources = append(sources, source{RuntimeCRIO, func(cid string) (names, error) { return crioNames(r.crio, cid) }})
	}
	// Podman's cgroups say libpod, Docker's docker; both serve the same
	// API, so a container of either is asked of both, and keeps the
	// runtime its cgroup names.
	if consider(RuntimeDocker) || consider(RuntimePodman) {
		for _, e := range r.engines {
			rt := cmp.Or(id.Runtime, e.runtime)
			sources = append(sources, source{rt, func(cid string) (names, error) { return engineNames(e.client, cid) }})
		}
	}
	var errs []error
	answered := false
	for _, src := range sources {
		n, err := src.names(id.ContainerID)
		if err == nil {
			n.runtime = src.runtime
			return n, true, nil
		}
		if errors.Is(err, errNotFound) {
			answered = true
		} else {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return names{}, false, errors.Join(errs...)
	}
	return names{}, answered, nil
}

// Lookup returns what is known of a cgroup id, nil if nothing. The result
// is shared and must not be modified. It allocates nothing: the event
// loop may call it per event.
// Its method value is an events.CgroupLookup.
func (r *Resolver) Lookup(cgroupID uint64) *events.CgroupInfo {
	r.mu.RLock()
	res := r.table[cgroupID]
	r.mu.RUnlock()
	return res
}

// Len is how many cgroups the table holds.
func (r *Resolver) Len() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.table)
}
