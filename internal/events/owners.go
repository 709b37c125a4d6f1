package events

// Owners completes the close records of connections that predate tracing.
//
// A connection opened before tracing started has no owner in the kernel's
// table: its close record says only who it was (socket cookie, addresses).
// The start-up sampler reports every such connection as a KindConnExisting
// event with the owner /proc/PID/fd resolved and the role inferred from the
// listeners; Owners remembers those by cookie and fills them into the
// matching KindConnClosed event. The kernel had no byte baseline for such a
// connection, so its sent count includes the SYN of an active open, which
// tcp_sock.bytes_acked counts: Owners takes it out.
//
// It sees only events, so replaying a recording attributes exactly as the
// live run did. It is owned by the event loop goroutine: not safe for
// concurrent use.
type Owners struct {
	byCookie map[sockKey]existing
	// cgroupByPID, on cgroup v1-only hosts, gives the cgroup id under
	// which the identity resolver files a process's v1 cgroup (the
	// kernel's id is the unified root's for every process there); nil
	// elsewhere.
	cgroupByPID func(pid uint32) uint64
}

// SetCgroupByPID makes Apply replace each owner's cgroup id with what
// byPID returns for its pid, when that is not 0: on a cgroup v1-only host,
// where the kernel's cgroup id is the same (the unified root's) for every
// process, the identity resolver files each process's v1 cgroup under an
// id of its own (internal/identity, v1.go). byPID runs on the event loop,
// per event with an owner: it must not allocate or block. A recording
// keeps the ids Apply set, so a replay names what the live run named.
func (o *Owners) SetCgroupByPID(byPID func(pid uint32) uint64) { o.cgroupByPID = byPID }

// cgroupOf sets p's cgroup id from its pid, when Owners knows one.
func (o *Owners) cgroupOf(p *Process) {
	if p.PID == 0 {
		return
	}
	if cg := o.cgroupByPID(p.PID); cg != 0 {
		p.CgroupID = cg
	}
}

type existing struct {
	owner Process
	role  Role
}

// sockKey names a socket. Cookies are unique box-wide since Linux 5.10;
// older kernels counted them per namespace, hence the namespace too.
type sockKey struct {
	netns  uint32
	cookie uint64
}

// NewOwners returns an empty table.
func NewOwners() *Owners {
	return &Owners{byCookie: make(map[sockKey]existing)}
}

// Apply records existing connections and attributes closed ones in place.
// The table only holds connections that predate tracing, and each entry is
// deleted when its connection closes, so it never grows past the start-up
// snapshot.
func (o *Owners) Apply(ev *Event) {
	o.existing(ev)
	if o.cgroupByPID != nil {
		o.byPID(ev) // after a close took the owner of its existing entry
	}
}

// existing records existing connections and attributes closed ones.
func (o *Owners) existing(ev *Event) {
	switch ev.Kind {
	case KindConnExisting:
		if ev.Conn.Cookie != 0 {
			o.byCookie[sockKey{ev.Conn.NetNS, ev.Conn.Cookie}] = existing{ev.Conn.Owner, ev.Conn.Role}
		}
	case KindConnClosed:
		if len(o.byCookie) == 0 || ev.Conn.Cookie == 0 {
			return
		}
		k := sockKey{ev.Conn.NetNS, ev.Conn.Cookie}
		e, ok := o.byCookie[k]
		if !ok {
			return
		}
		delete(o.byCookie, k)
		c := &ev.Conn
		if !c.Owner.Known() && e.owner.Known() {
			c.Owner = e.owner
		}
		if !c.SeenOpen && c.Role == RoleUnknown {
			c.Role = e.role
			if e.role == RoleActive && c.TxBytes > 0 {
				c.TxBytes-- // the SYN
			}
		}
	}
}

// byPID sets the cgroup ids of ev's owner from its pid (SetCgroupByPID).
func (o *Owners) byPID(ev *Event) {
	switch ev.Kind {
	case KindConnClosed, KindConnExisting, KindSockOpen:
		o.cgroupOf(&ev.Conn.Owner)
	case KindConnect, KindUnixListener, KindUnixDgramSend:
		o.cgroupOf(&ev.Connect.Owner)
	case KindDrop, KindDropCount, KindListenOverflow:
		o.cgroupOf(&ev.Drop.Owner)
	}
}

// Len returns how many pre-existing connections are still awaiting their close.
func (o *Owners) Len() int { return len(o.byCookie) }
