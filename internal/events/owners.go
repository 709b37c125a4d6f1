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

// Len returns how many pre-existing connections are still awaiting their close.
func (o *Owners) Len() int { return len(o.byCookie) }
