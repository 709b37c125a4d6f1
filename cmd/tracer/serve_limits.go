package main

import (
	"net"
	"net/http"
	"runtime/debug"
	"sync"
	"time"
)

// The metrics server's limits. 20,000 idle keep-alive connections once
// took the tracer to its fd limit: /metrics was down ~130 s, the samplers
// (sock_diag sockets, /proc files) failed for want of fds, and RSS went
// from 66 to 880 MB. Now connections are capped, and a new one evicts the
// oldest connection that is not serving a request, so a scrape always gets
// in while nobody can hold the port by connecting and saying nothing.
const (
	// maxMetricsConns: Prometheus keeps one connection per target, so a few
	// servers, a browser and a curl fit with room to spare; the cap bounds
	// the server's fds and memory (a goroutine and two 4 KiB buffers each,
	// about 2 MB at the cap). It is also how many connections may arrive
	// after a scrape's before the scrape has sent its request without it
	// being evicted: at the ~600 connections/s of a flood from one client,
	// ~0.4 s.
	maxMetricsConns = 256
	// A scrape sends its headers at once: a client that has not within
	// metricsHeaderTimeout is not a scraper (this also bounds a TLS
	// handshake). An idle keep-alive connection is closed after
	// metricsIdleTimeout, longer than the usual 15 s scrape interval.
	metricsHeaderTimeout = 5 * time.Second
	metricsReadTimeout   = 10 * time.Second
	metricsIdleTimeout   = 30 * time.Second
	// metricsWriteTimeout bounds a reader that stops reading the answer.
	metricsWriteTimeout = 30 * time.Second
	// metricsMaxHeaderBytes: a scrape's headers are a few hundred bytes.
	metricsMaxHeaderBytes = 16 << 10
	// freeAfterFlood: once no connection has been evicted or refused for
	// this long, the memory the flood made the Go heap grow to is given
	// back to the system at once rather than over minutes by the
	// scavenger (RSS stayed at 590 MB three minutes after a flood).
	freeAfterFlood = 5 * time.Second
)

// limitServer sets the timeouts and header limit on srv and returns ln
// wrapped so that at most maxConns connections are open at once.
func limitServer(srv *http.Server, ln net.Listener, maxConns int) net.Listener {
	srv.ReadHeaderTimeout = metricsHeaderTimeout
	srv.ReadTimeout = metricsReadTimeout
	srv.WriteTimeout = metricsWriteTimeout
	srv.IdleTimeout = metricsIdleTimeout
	srv.MaxHeaderBytes = metricsMaxHeaderBytes
	l := &connLimiter{Listener: ln, max: maxConns, conns: make(map[*limitedConn]struct{}), free: debug.FreeOSMemory}
	srv.ConnState = l.connState
	return l
}

// connLimiter is a listener that keeps at most max connections open. When a
// connection arrives at the cap, the oldest one not in a request (new and
// silent, or idle between requests) is closed; if every one is serving a
// request, the newcomer is closed instead. Accept runs on the server's
// accept goroutine, connState on each connection's: mu guards the set.
type connLimiter struct {
	net.Listener
	max   int
	mu    sync.Mutex
	seq   uint64
	conns map[*limitedConn]struct{}
	// flood: connections evicted or refused; freeing: a timer to give
	// memory back is pending; free does it (debug.FreeOSMemory).
	flood   uint64
	freeing bool
	free    func()
}

// limitedConn is one accepted connection and what the limiter knows of it.
type limitedConn struct {
	net.Conn
	l      *connLimiter
	seq    uint64 // accept order: lower is older
	active bool   // serving a request (guarded by l.mu)
	once   sync.Once
}

// Close forgets the connection and closes it; safe to call twice.
func (c *limitedConn) Close() error {
	c.once.Do(func() {
		c.l.mu.Lock()
		delete(c.l.conns, c)
		c.l.mu.Unlock()
	})
	return c.Conn.Close()
}

func (l *connLimiter) Accept() (net.Conn, error) {
	for {
		nc, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		c, victim := l.admit(nc)
		if victim != nil {
			victim.Close() // outside mu: Close takes it
		}
		if c != nil {
			return c, nil
		}
		nc.Close() // every slot is serving a request
	}
}

// admit registers nc, choosing the connection to close to make room: the
// oldest not in a request, or nc itself (c == nil) if there is none.
func (l *connLimiter) admit(nc net.Conn) (c, victim *limitedConn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.conns) >= l.max {
		l.flood++
		l.afterFlood()
		for o := range l.conns {
			if !o.active && (victim == nil || o.seq < victim.seq) {
				victim = o
			}
		}
		if victim == nil {
			return nil, nil
		}
		delete(l.conns, victim)
	}
	l.seq++
	c = &limitedConn{Conn: nc, l: l, seq: l.seq}
	l.conns[c] = struct{}{}
	return c, victim
}

// afterFlood arranges for free to run once evictions have stopped for
// freeAfterFlood. Called with mu held.
func (l *connLimiter) afterFlood() {
	if l.freeing {
		return
	}
	l.freeing = true
	seen := l.flood
	var check func()
	check = func() {
		l.mu.Lock()
		if l.flood != seen {
			seen = l.flood
			l.mu.Unlock()
			time.AfterFunc(freeAfterFlood, check)
			return
		}
		l.freeing = false
		l.mu.Unlock()
		l.free()
	}
	time.AfterFunc(freeAfterFlood, check)
}

// connState marks connections serving a request, which are never evicted.
// With TLS the server sees a *tls.Conn around ours: NetConn unwraps it.
func (l *connLimiter) connState(nc net.Conn, st http.ConnState) {
	if u, ok := nc.(interface{ NetConn() net.Conn }); ok {
		nc = u.NetConn()
	}
	c, ok := nc.(*limitedConn)
	if !ok {
		return
	}
	l.mu.Lock()
	c.active = st == http.StateActive
	l.mu.Unlock()
}
