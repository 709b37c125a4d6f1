package kernel

import (
	"github.com/conntracer/conntracer/internal/events"

	"fmt"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// PortInfoIn reads what the port_exhaustion finding cites about network
// namespace ino: its ephemeral port range (net.ipv4.ip_local_port_range)
// and, per remote endpoint, how many TCP sockets in any state (TIME_WAIT
// included, as `ss -tan` lists them) use a local port inside that range.
func PortInfoIn(ino uint32) (events.PortInfo, error) {
	pids, err := listPIDs("/proc")
	if err != nil {
		return events.PortInfo{}, fmt.Errorf("list processes: %w", err)
	}
	cands, _ := listNetNS("/proc", pids, netnsRunDir, selfMountinfo)
	paths, ok := cands[ino]
	if !ok {
		return events.PortInfo{}, fmt.Errorf("network namespace %d not found", ino)
	}
	ns, err := openNetNS(ino, paths)
	if err != nil {
		return events.PortInfo{}, fmt.Errorf("open netns %d: %w", ino, err)
	}
	defer ns.Close()
	var pi events.PortInfo
	if err := inNetNS(int(ns), ino, func() (err error) {
		pi.Low, pi.High, err = readPortRange()
		return err
	}); err != nil {
		return events.PortInfo{}, fmt.Errorf("netns %d: %w", ino, err)
	}
	h, err := newDiagHandle(ns, ino)
	if err != nil {
		return events.PortInfo{}, fmt.Errorf("open sock_diag socket in netns %d: %w", ino, err)
	}
	defer h.Close()
	if err := h.SetSocketTimeout(diagTimeout); err != nil {
		return events.PortInfo{}, fmt.Errorf("set sock_diag timeout in netns %d: %w", ino, err)
	}
	pi.InUse = map[netip.AddrPort]int{}
	for _, fam := range [...]uint8{unix.AF_INET, unix.AF_INET6} {
		socks, err := dumpTCP(h, fam)
		if err != nil {
			return events.PortInfo{}, fmt.Errorf("dump tcp sockets in netns %d: %w", ino, err)
		}
		for _, s := range socks {
			id := s.InetDiagMsg.ID
			if id.SourcePort < pi.Low || id.SourcePort > pi.High || id.DestinationPort == 0 {
				continue
			}
			a, ok := netip.AddrFromSlice(id.Destination)
			if !ok {
				continue
			}
			pi.InUse[netip.AddrPortFrom(a.Unmap(), id.DestinationPort)]++
		}
	}
	return pi, nil
}

// PortInfoCache serves the port lookup of the aggregator's port_exhaustion
// finding (Lookup, an aggregate.PortInfoFunc) from PortInfoIn, reading each
// namespace at most once per TTL: findings are evaluated on every refresh
// of `tracer top`, and a dump costs milliseconds. Safe for concurrent use.
type PortInfoCache struct {
	TTL time.Duration
	mu  sync.Mutex
	m   map[uint32]portInfoEntry
}

type portInfoEntry struct {
	pi events.PortInfo
	ok bool
	at time.Time
}

// Lookup returns namespace ino's port information, ok false when it
// could not be read.
func (c *PortInfoCache) Lookup(ino uint32) (events.PortInfo, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.m[ino]; ok && time.Since(e.at) < c.TTL {
		return e.pi, e.ok
	}
	pi, err := PortInfoIn(ino)
	if c.m == nil {
		c.m = map[uint32]portInfoEntry{}
	}
	c.m[ino] = portInfoEntry{pi: pi, ok: err == nil, at: time.Now()}
	return pi, err == nil
}
