package events

// Owners names the owners of connections the kernel could not attribute.
//
// A connection opened before tracing started has no owner in the kernel's
// table: its close record says only who it was (socket cookie, addresses).
// The start-up sampler reports every such connection as a KindConnExisting
// event with the owner /proc/PID/fd resolved; Owners remembers those by
// cookie and fills the owner into the matching KindConnClosed event.
//
// It sees only events, so replaying a recording attributes exactly as the
// live run did. It is owned by the event loop goroutine: not safe for
// concurrent use.
type Owners struct {
	byCookie map[sockKey]Process
}

// sockKey names a socket. Cookies are unique box-wide since Linux 5.10;
// older kernels counted them per namespace, hence the namespace too.
type sockKey struct {
	netns  uint32
	cookie uint64
}

// NewOwners returns an empty table.
func NewOwners() *Owners {
	return &Owners{byCookie: make(map[sockKey]Process)}
}

// Apply records existing connections and attributes closed ones in place.
// The table only holds connections that predate tracing, and each entry is
// deleted when its connection closes, so it never grows past the start-up
// snapshot.
func (o *Owners) Apply(ev *Event) {
	switch ev.Kind {
	case KindConnExisting:
		if ev.Conn.Cookie != 0 && ev.Conn.Owner.Known() {
			o.byCookie[sockKey{ev.Conn.NetNS, ev.Conn.Cookie}] = ev.Conn.Owner
		}
	case KindConnClosed:
		if len(o.byCookie) == 0 || ev.Conn.Cookie == 0 {
			return
		}
		k := sockKey{ev.Conn.NetNS, ev.Conn.Cookie}
		p, ok := o.byCookie[k]
		if !ok {
			return
		}
		delete(o.byCookie, k)
		if !ev.Conn.Owner.Known() {
			ev.Conn.Owner = p
		}
	}
}

// Len returns how many pre-existing connections are still awaiting their close.
func (o *Owners) Len() int { return len(o.byCookie) }
