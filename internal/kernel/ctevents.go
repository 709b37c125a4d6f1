package kernel

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/conntracer/conntracer/internal/bootclock"
	"github.com/conntracer/conntracer/internal/events"
)

// CtEvents follows the conntrack tables of network namespaces through
// ctnetlink's event groups: one netlink socket per namespace, subscribed
// to NFNLGRP_CONNTRACK_NEW, _UPDATE (the TCP state of an entry moves) and
// _DESTROY, and a table dump (IPCTNL_MSG_CT_GET with NLM_F_DUMP) when a
// namespace is first watched and after every loss. It produces
// KindConntrackNew, KindConntrackUpdate, KindConntrackDestroy and
// KindConntrackResync events, in batches, on the channel it was made
// with.
//
// Losses: the kernel drops events when a socket's receive buffer is full
// and says so by failing the next read with ENOBUFS (NETLINK_NO_ENOBUFS
// stays off). The watcher counts each such overrun (Lost: at least one
// event each; the kernel does not say how many), discards the events
// still queued (older than what follows, with gaps), and resynchronises
// that namespace with a dump. The dump is read by the goroutine that reads
// the events, before the events queued meanwhile: those are applied after
// the dump, so a DESTROY of an entry the dump listed is never overtaken by
// it.
//
// Entries older than the subscription: since Linux 5.19
// (nf_conntrack_events=2, the default) an entry carries the event
// extension only if a ctnetlink listener existed in its namespace when it
// was created; the others never report a state change or their
// destruction. The first dump lists them among the rest; the watcher keeps
// their ids and dumps the namespace again every RefreshEvery for as long
// as one of them is still listed and has reported nothing (an event of an
// entry proves it reports).
//
// Goroutines: Run owns one reader goroutine per watched namespace. Watch
// and Retain are called by the namespace sampler's goroutine; Lost from
// anywhere.
type CtEvents struct {
	// ReadBuffer is each event socket's receive buffer in bytes
	// (SO_RCVBUFFORCE; the kernel doubles it). 0: DefaultCtReadBuffer.
	ReadBuffer int
	// BatchWait is how long a reader gathers events before handing them
	// over. 0: 20 ms.
	BatchWait time.Duration
	// RefreshEvery is how often a namespace is dumped again while entries
	// older than its subscription remain. 0: DefaultCtRefresh.
	RefreshEvery time.Duration
	// DumpEvery > 0 makes the watcher a dumper only: it joins no event
	// group and dumps each namespace at first sight and then every
	// DumpEvery. For when another source reports the entries' lifecycle
	// (the in-kernel conntrack hooks, which see inserts and removals but
	// not TCP state changes): the dumps bring the states and correct what
	// that source could not see (entries older than the tracer).
	DumpEvery time.Duration
	// Sent, if set, is called after each batch handed over on out: the
	// session wakes its event loop with it (an idle loop waits long).
	Sent func()

	out chan<- []events.Event

	mu         sync.Mutex
	socks      map[uint32]*ctSock // by namespace inode
	queued     []*ctSock          // watched, not yet read by Run
	wake       chan struct{}      // cap 1: something was queued
	gen        atomic.Uint64
	lost       atomic.Uint64
	dumpErrors atomic.Uint64
}

// DefaultCtReadBuffer is the receive buffer of an event socket: room for
// about 10,000 events waiting for the reader.
const DefaultCtReadBuffer = 4 << 20

// DefaultCtRefresh is the default RefreshEvery.
const DefaultCtRefresh = 10 * time.Second

// maxCtBatch bounds the events handed over in one batch.
const maxCtBatch = 1024

type ctSock struct {
	ino       uint32
	events    *netlink.Conn // subscribed to the event groups
	dump      *netlink.Conn // requests: table dumps
	lost      uint64        // overruns since the last resync
	stopped   atomic.Bool
	closeOnce sync.Once
	done      chan struct{} // closed by close
	// legacy: ids of entries of the first dump that have reported no
	// event yet (nil when none is left); refresh: when to dump again.
	legacy  map[uint32]struct{}
	dumped  bool
	refresh time.Time
}

// sent calls Sent, if set.
func (w *CtEvents) sent() {
	if w.Sent != nil {
		w.Sent()
	}
}

// NewCtEvents returns a watcher that sends its batches on out. It starts
// no goroutine: Run does.
func NewCtEvents(out chan<- []events.Event) *CtEvents {
	return &CtEvents{out: out, socks: map[uint32]*ctSock{}, wake: make(chan struct{}, 1)}
}

// Name says which conntrack entry path this is, for the start-up notes.
func (w *CtEvents) Name() string {
	if w.DumpEvery > 0 {
		return fmt.Sprintf("ctnetlink dumps every %s", w.DumpEvery)
	}
	return "ctnetlink events"
}

// Lost returns the overruns (ENOBUFS) counted so far, every namespace.
func (w *CtEvents) Lost() uint64 { return w.lost.Load() }

// DumpErrors returns the table dumps that failed (each tried again).
func (w *CtEvents) DumpErrors() uint64 { return w.dumpErrors.Load() }

// Watch subscribes to the conntrack events of the namespace ino, open at
// nsFD, unless it is watched already. Its first dump and its events are
// read by Run. Safe to call before Run starts.
func (w *CtEvents) Watch(ino uint32, nsFD int) error {
	w.mu.Lock()
	_, ok := w.socks[ino]
	w.mu.Unlock()
	if ok {
		return nil
	}
	s, err := w.dial(ino, nsFD)
	if err != nil {
		return fmt.Errorf("netns %d: conntrack events: %w", ino, err)
	}
	w.mu.Lock()
	w.socks[ino] = s
	w.queued = append(w.queued, s)
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
	return nil
}

// Retain stops watching the namespaces not in seen: a socket inside a
// namespace would keep it alive after its last process and mount left.
func (w *CtEvents) Retain(seen map[uint32]bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for ino, s := range w.socks {
		if !seen[ino] {
			delete(w.socks, ino)
			s.close()
		}
	}
}

func (w *CtEvents) dial(ino uint32, nsFD int) (*ctSock, error) {
	ev, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: nsFD, MessageBufferSize: 64 << 10})
	if err != nil {
		return nil, fmt.Errorf("open ctnetlink socket: %w", err)
	}
	s := &ctSock{ino: ino, events: ev, done: make(chan struct{})}
	fail := func(what string, err error) (*ctSock, error) {
		s.close()
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	size := w.ReadBuffer
	if size <= 0 {
		size = DefaultCtReadBuffer
	}
	if err := setRcvBufForce(ev, size); err != nil {
		return fail("set receive buffer", err)
	}
	// Off is the default; said explicitly because the loss accounting
	// depends on it.
	if err := ev.SetOption(netlink.NoENOBUFS, false); err != nil {
		return fail("clear NETLINK_NO_ENOBUFS", err)
	}
	for _, g := range []uint32{nfnlgrpConntrackNew, nfnlgrpConntrackUpdate, nfnlgrpConntrackDestroy} {
		if w.DumpEvery > 0 {
			break // a dumper only: the socket stays silent
		}
		if err := ev.JoinGroup(g); err != nil {
			return fail(fmt.Sprintf("join ctnetlink group %d", g), err)
		}
	}
	if s.dump, err = netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: nsFD}); err != nil {
		return fail("open ctnetlink dump socket", err)
	}
	return s, nil
}

// setRcvBufForce sets SO_RCVBUFFORCE (root may exceed net.core.rmem_max,
// which is what makes a large buffer possible at all), falling back to
// SO_RCVBUF.
func setRcvBufForce(c *netlink.Conn, size int) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, size)
	}); err != nil {
		return err
	}
	if serr != nil {
		return c.SetReadBuffer(size)
	}
	return nil
}

func (s *ctSock) close() {
	s.closeOnce.Do(func() {
		s.stopped.Store(true)
		close(s.done)
		s.events.Close() // unblocks the reader
		if s.dump != nil {
			s.dump.Close()
		}
	})
}

// Run reads every watched namespace until ctx is done, then closes the
// sockets. It returns nil on cancellation.
func (w *CtEvents) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer func() {
		w.mu.Lock()
		for ino, s := range w.socks {
			s.close()
			delete(w.socks, ino)
		}
		for _, s := range w.queued {
			s.close()
		}
		w.queued = nil
		w.mu.Unlock()
		wg.Wait()
	}()
	for {
		w.mu.Lock()
		q := w.queued
		w.queued = nil
		w.mu.Unlock()
		for _, s := range q {
			wg.Add(1)
			go func() {
				defer wg.Done()
				w.read(ctx, s)
			}()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-w.wake:
		}
	}
}

// read is one namespace's reader: a dump, then events, and a dump after
// every overrun.
func (w *CtEvents) read(ctx context.Context, s *ctSock) {
	go func() { // the reader blocks in recvmsg: closing unblocks it
		select {
		case <-ctx.Done():
			s.close()
		case <-s.done:
		}
	}()
	wait := w.BatchWait
	if wait <= 0 {
		wait = 20 * time.Millisecond
	}
	batch := make([]events.Event, 0, 64)
	flush := func() bool {
		if len(batch) == 0 {
			return true
		}
		select {
		case w.out <- batch:
			batch = make([]events.Event, 0, 64)
			w.sent()
			return true
		case <-ctx.Done():
			return false
		}
	}
	if !w.resync(ctx, s) {
		return
	}
	var ev events.Event
	for !s.stopped.Load() {
		var dl time.Time
		if len(batch) > 0 {
			dl = time.Now().Add(wait)
		}
		if !s.refresh.IsZero() && (dl.IsZero() || s.refresh.Before(dl)) {
			dl = s.refresh
		}
		_ = s.events.SetReadDeadline(dl)
		var rerr error
		for m, err := range s.events.ReceiveIter() {
			if err != nil {
				rerr = err
				break
			}
			ok, err := decodeCtEntry(&m, s.ino, &ev)
			if err != nil || !ok {
				continue
			}
			now := bootclock.Now()
			ev.ConntrackEntry.TimeNs = now
			batch = append(batch, ev)
			if s.legacy != nil {
				delete(s.legacy, ev.ConntrackEntry.ID)
			}
		}
		switch {
		case rerr == nil:
			if len(batch) >= maxCtBatch && !flush() {
				return
			}
		case errors.Is(rerr, os.ErrDeadlineExceeded):
			if !flush() {
				return
			}
			if !s.refresh.IsZero() && !time.Now().Before(s.refresh) && !w.resync(ctx, s) {
				return
			}
		case errors.Is(rerr, unix.ENOBUFS):
			s.lost++
			w.lost.Add(1)
			if !flush() || !w.discardQueued(s) || !w.resync(ctx, s) {
				return
			}
		default:
			return // closed (stopped or cancelled) or a broken socket
		}
	}
}

// discardQueued reads and drops the events still queued on the socket
// after an overrun: they are older than the dump that follows, and with
// some of their successors lost (the overrun), applying them after it
// would leave an entry in a state it has left (measured: an entry's NEW
// queued before the overrun, its UPDATE to ESTABLISHED dropped, showed
// SYN_SENT after the dump said ESTABLISHED). Events queued after the
// socket is drained are all applied, in order, after the dump. It returns
// false when the socket is closed.
func (w *CtEvents) discardQueued(s *ctSock) bool {
	for {
		_ = s.events.SetReadDeadline(time.Now().Add(time.Millisecond))
		var rerr error
		for _, err := range s.events.ReceiveIter() {
			if err != nil {
				rerr = err
			}
		}
		switch {
		case rerr == nil:
		case errors.Is(rerr, os.ErrDeadlineExceeded):
			return true
		case errors.Is(rerr, unix.ENOBUFS):
			s.lost++
			w.lost.Add(1)
		default:
			return false
		}
	}
}

// resync dumps the namespace's table: one KindConntrackResync carrying the
// overruns since the last one and the number of entries that follow, then
// the entries as KindConntrackNew with Dump set, in batches. A dump that
// fails is tried again a second later (the overruns wait for it); false
// means ctx is done.
func (w *CtEvents) resync(ctx context.Context, s *ctSock) bool {
	msgs, err := s.dump.Execute(ctRequest(ipctnlMsgCtGet, netlink.Request|netlink.Dump))
	if err != nil {
		w.dumpErrors.Add(1)
		s.refresh = time.Now().Add(time.Second)
		return ctx.Err() == nil
	}
	now := bootclock.Now()
	gen := w.gen.Add(1)
	evs := make([]events.Event, 1, min(len(msgs)+1, maxCtBatch))
	evs[0] = events.Event{Kind: events.KindConntrackResync, ConntrackEntry: events.ConntrackEntry{
		NetNS: s.ino, TimeNs: now, Generation: gen, Lost: s.lost,
	}}
	n := 0
	var ev events.Event
	listed := make(map[uint32]struct{}, len(msgs))
	for i := range msgs {
		if ok, err := decodeCtEntry(&msgs[i], s.ino, &ev); err == nil && ok && ev.Kind == events.KindConntrackNew {
			n++
			listed[ev.ConntrackEntry.ID] = struct{}{}
		}
	}
	// Entries older than the subscription: all of the first dump's, then
	// those of them each dump still lists.
	if !s.dumped {
		s.dumped, s.legacy = true, listed
	} else {
		for id := range s.legacy {
			if _, ok := listed[id]; !ok {
				delete(s.legacy, id)
			}
		}
	}
	s.refresh = time.Time{}
	if len(s.legacy) == 0 {
		s.legacy = nil
	} else {
		every := w.RefreshEvery
		if every <= 0 {
			every = DefaultCtRefresh
		}
		s.refresh = time.Now().Add(every)
	}
	if w.DumpEvery > 0 {
		s.refresh = time.Now().Add(w.DumpEvery)
	}
	evs[0].ConntrackEntry.DumpEntries = uint64(n)
	s.lost = 0
	send := func() bool {
		select {
		case w.out <- evs:
			evs = make([]events.Event, 0, maxCtBatch)
			w.sent()
			return true
		case <-ctx.Done():
			return false
		}
	}
	for i := range msgs {
		ok, err := decodeCtEntry(&msgs[i], s.ino, &ev)
		if err != nil || !ok || ev.Kind != events.KindConntrackNew {
			continue
		}
		e := &ev.ConntrackEntry
		e.TimeNs, e.Dump, e.Generation = now, true, gen
		evs = append(evs, ev)
		if len(evs) == maxCtBatch && !send() {
			return false
		}
	}
	return len(evs) == 0 || send()
}
