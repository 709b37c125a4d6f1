package kernel

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/conntracer/conntracer/internal/events"
)

// KernelCounters reads, in every network namespace (or only in namespace
// only, when not 0), the TCP MIB counters that `nstat` shows (Tcp* from
// /proc/net/snmp, TcpExt* from /proc/net/netstat) and /proc/net/sockstat,
// from a thread inside the namespace: one KindKernelCounters event per
// namespace, stamped bootNs. warnings list namespaces that could not be
// read; the others are still returned.
func KernelCounters(only uint32, bootNs uint64) ([]events.Event, []error) {
	var l *NetNSList
	return l.KernelCounters(only, bootNs)
}

// KernelCounters is the package's KernelCounters on the shared listing.
func (l *NetNSList) KernelCounters(only uint32, bootNs uint64) ([]events.Event, []error) {
	cands, warnings := l.list()
	warnings = slices.Clone(warnings) // the listing's own slice is shared
	var evs []events.Event
	for _, ino := range cands.inodes() {
		if only != 0 && ino != only {
			continue
		}
		ns, err := openNetNS(ino, cands[ino])
		if err != nil {
			continue // gone since the scan
		}
		c, err := readKernelCounters(int(ns), ino)
		ns.Close()
		if err != nil {
			warnings = append(warnings, fmt.Errorf("netns %d: %w", ino, err))
			continue
		}
		c.NetNS, c.TimeNs = ino, bootNs
		evs = append(evs, events.Event{Kind: events.KindKernelCounters, Counters: c})
	}
	return evs, warnings
}

func readKernelCounters(nsFD int, ino uint32) (events.Counters, error) {
	var c events.Counters
	err := inNetNS(nsFD, ino, func() error {
		vals := make(map[string]uint64, 200)
		for _, f := range [...]string{"snmp", "netstat"} {
			b, err := os.ReadFile("/proc/thread-self/net/" + f)
			if err != nil {
				return fmt.Errorf("read %s: %w", f, err)
			}
			parseMIB(b, vals)
		}
		b, err := os.ReadFile("/proc/thread-self/net/sockstat")
		if err != nil {
			return fmt.Errorf("read sockstat: %w", err)
		}
		parseSockstat(b, vals)
		for i, n := range events.KernelCounterNames {
			c.Values[i] = vals[n]
		}
		return nil
	})
	return c, err
}

// parseMIB reads the pairs of header and value lines of /proc/net/snmp
// and /proc/net/netstat ("Tcp: RtoAlgorithm ActiveOpens ..." then
// "Tcp: 1 42 ...") into vals under nstat's names (prefix + field, e.g.
// TcpActiveOpens, TcpExtListenOverflows). Values that are not unsigned
// (Tcp MaxConn is -1) are left out.
func parseMIB(b []byte, vals map[string]uint64) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	var header []string
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 || !strings.HasSuffix(f[0], ":") {
			header = nil
			continue
		}
		if header == nil || header[0] != f[0] {
			header = f
			continue
		}
		prefix := strings.TrimSuffix(f[0], ":")
		for i := 1; i < len(f) && i < len(header); i++ {
			if v, err := strconv.ParseUint(f[i], 10, 64); err == nil {
				vals[prefix+header[i]] = v
			}
		}
		header = nil
	}
}

// parseSockstat reads /proc/net/sockstat ("sockets: used 180",
// "TCP: inuse 5 orphan 0 tw 2 alloc 9 mem 1") into vals as
// SockstatSocketsUsed, SockstatTCPInuse, SockstatTCPTw...
func parseSockstat(b []byte, vals map[string]uint64) {
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 3 {
			continue
		}
		proto := strings.TrimSuffix(f[0], ":")
		if proto == "sockets" {
			proto = "Sockets"
		}
		for i := 1; i+1 < len(f); i += 2 {
			v, err := strconv.ParseUint(f[i+1], 10, 64)
			if err != nil {
				continue
			}
			name := f[i]
			if name != "" {
				name = strings.ToUpper(name[:1]) + name[1:]
			}
			vals["Sockstat"+proto+name] = v
		}
	}
}
