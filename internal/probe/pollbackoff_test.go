package probe

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/conntracer/conntracer/internal/events"
	"github.com/conntracer/conntracer/internal/testenv"
)

// TestPollBackoff: the wait doubles after every wait that brought no
// record, up to IdlePollInterval, and falls back to PollInterval at the
// first record; it stays at PollInterval where the kernel's wakeup
// leaves no room in the ring buffer.
func TestPollBackoff(t *testing.T) {
	o := DefaultOptions()
	o.PollInterval, o.IdlePollInterval = 50*time.Millisecond, 500*time.Millisecond
	b := newPollBackoff(o)
	var got []time.Duration
	for _, records := range []uint64{0, 0, 0, 0, 0, 0, 0, 3, 3, 9} {
		got = append(got, b.next(records)/time.Millisecond)
	}
	want := []time.Duration{50, 100, 200, 400, 500, 500, 500, 50, 100, 50}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("waits %v ms, want %v", got, want)
		}
	}

	o.WakeupBytes = uint64(o.RingBufferBytes) // woken only when full: no backoff
	b = newPollBackoff(o)
	for range 5 {
		if d := b.next(0); d != o.PollInterval {
			t.Fatalf("wait %v with WakeupBytes = RingBufferBytes, want %v", d, o.PollInterval)
		}
	}
}

// drainCounter counts Drained calls.
type drainCounter struct{ drained atomic.Int64 }

func (d *drainCounter) HandleEvent(*events.Event) {}
func (d *drainCounter) Drained()                  { d.drained.Add(1) }

// TestWakeEndsTheWait: with a poll interval of an hour, Wake (what the
// session calls when it hands the loop a sampler batch) ends the loop's
// wait, and so does cancelling Run's context.
func TestWakeEndsTheWait(t *testing.T) {
	testenv.RequireRoot(t)
	opts := DefaultOptions()
	opts.PollInterval, opts.IdlePollInterval = time.Hour, time.Hour
	p, err := Open(opts)
	if err != nil {
		t.Fatalf("open probe: %+v", err)
	}
	defer p.Close()
	if p.waiter == nil {
		t.Skip("the ring buffer is read with ringbuf.Reader's blocking wait here, which Wake cannot end")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	h := &drainCounter{}
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx, h) }()

	for i := int64(1); i <= 3; i++ {
		p.Wake()
		deadline := time.Now().Add(30 * time.Second)
		for h.drained.Load() < i && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if n := h.drained.Load(); n < i {
			t.Fatalf("after Wake #%d: %d Drained calls, want %d", i, n, i)
		}
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return 30 s after cancel with an hour's poll interval")
	}
}
