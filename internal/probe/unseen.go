package probe

// Closes no program saw: sockets whose change to CLOSE reached neither the
// state program nor its rescuer, with no skipped run counted by the kernel
// (on a shared host, state changes run in a softirq over some tasks reach
// no BPF program: docs/notes/residual-loss.md). The kernel side
// (unseen_closes in bpf/tcplife.bpf.c) finds them when a new socket opens
// at the same address and the old one's socks entry is still there.

import (
	"errors"
	"fmt"
)

// UnseenCloses counts the sockets that ended without their CLOSE reaching
// the tracer, found so far, among those whose record the filters let through.
type UnseenCloses struct {
	// Connections had reached ESTABLISHED: each is a lost record.
	Connections uint64
	// Attempts had not: a connect attempt, or a child socket the kernel
	// cloned and dropped in the accept race (no connection).
	Attempts uint64
}

// UnseenCloses reads the kernel's counts (totals since Open). Safe to call
// from any goroutine.
func (p *Probe) UnseenCloses() (UnseenCloses, error) {
	o := objectOf[*tcplifeObject](p)
	if o == nil || o.unseen == nil {
		return UnseenCloses{}, errors.New("unseen_closes not loaded")
	}
	var u UnseenCloses
	var err error
	if u.Connections, err = sumPerCPU(o.unseen, 0); err != nil {
		return UnseenCloses{}, fmt.Errorf("read unseen_closes: %w", err)
	}
	if u.Attempts, err = sumPerCPU(o.unseen, 1); err != nil {
		return UnseenCloses{}, fmt.Errorf("read unseen_closes: %w", err)
	}
	return u, nil
}

// UnseenClosesByObject is UnseenCloses' lost records (Connections) as the
// object that loses them, for the per-object loss counters.
func (p *Probe) UnseenClosesByObject() (object string, connections uint64, err error) {
	u, err := p.UnseenCloses()
	return (*tcplifeObject)(nil).name(), u.Connections, err
}
