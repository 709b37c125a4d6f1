package testenv

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"testing"
)

// CtEntry is one line of `conntrack -L -o id,extended`: the kernel's own
// view of a conntrack entry.
type CtEntry struct {
	Proto            string // "tcp", "udp"...
	State            string // TCP only: "ESTABLISHED", "TIME_WAIT"...
	OrigSrc, OrigDst netip.AddrPort
	ID               uint32
}

// ConntrackList lists the conntrack entries of ns (`conntrack -L` run
// inside it: that namespace's table only).
func ConntrackList(t testing.TB, ns *NetNS) []CtEntry {
	t.Helper()
	out, err := ns.Command("conntrack", "-L", "-o", "id,extended").Output()
	if err != nil {
		t.Fatalf("conntrack -L in %s: %v", ns.Name, err)
	}
	var list []CtEntry
	for line := range strings.Lines(string(out)) {
		e, err := parseCtLine(line)
		if err != nil {
			t.Fatalf("conntrack -L line %q: %v", line, err)
		}
		list = append(list, e)
	}
	return list
}

// ConntrackCount is `conntrack -C` in ns: the namespace's entry count.
func ConntrackCount(t testing.TB, ns *NetNS) uint64 {
	t.Helper()
	n, err := strconv.ParseUint(strings.TrimSpace(ns.Output(t, "conntrack", "-C")), 10, 64)
	if err != nil {
		t.Fatalf("conntrack -C in %s: %v", ns.Name, err)
	}
	return n
}

// parseCtLine parses "ipv4 2 tcp 6 431999 ESTABLISHED src=... dst=...
// sport=... dport=... src=... ... id=N": the first src/dst/sport/dport are
// the original direction's.
func parseCtLine(line string) (CtEntry, error) {
	f := strings.Fields(line)
	if len(f) < 5 {
		return CtEntry{}, fmt.Errorf("too few fields")
	}
	e := CtEntry{Proto: f[2]}
	var src, dst netip.Addr
	var sport, dport uint64
	seen := map[string]bool{}
	for i, w := range f[5:] {
		k, v, ok := strings.Cut(w, "=")
		if !ok {
			if i == 0 && e.Proto == "tcp" {
				e.State = w
			}
			continue
		}
		if seen[k] && k != "id" {
			continue // the reply direction's
		}
		seen[k] = true
		var err error
		switch k {
		case "src":
			src, err = netip.ParseAddr(v)
		case "dst":
			dst, err = netip.ParseAddr(v)
		case "sport":
			sport, err = strconv.ParseUint(v, 10, 16)
		case "dport":
			dport, err = strconv.ParseUint(v, 10, 16)
		case "id":
			var id uint64
			id, err = strconv.ParseUint(v, 10, 32)
			e.ID = uint32(id)
		}
		if err != nil {
			return e, err
		}
	}
	e.OrigSrc = netip.AddrPortFrom(src, uint16(sport))
	e.OrigDst = netip.AddrPortFrom(dst, uint16(dport))
	return e, nil
}

// SendUDP sends one datagram from a fresh socket to each of count ports
// from firstPort on 127.0.0.1 inside ns (bash's /dev/udp): one UDP
// conntrack entry each, unreplied, owned by no process that is still
// there. It returns how many sends failed (EPERM: the conntrack table
// was full, which a test lowering the global nf_conntrack_max beside
// this one can cause): compare with conntrack -L, not with count.
func SendUDP(t testing.TB, ns *NetNS, firstPort, count int) (failed int) {
	t.Helper()
	script := fmt.Sprintf(`n=0; for p in $(seq %d %d); do echo x 2>/dev/null > /dev/udp/127.0.0.1/$p || n=$((n+1)); done; echo $n`,
		firstPort, firstPort+count-1)
	out, err := ns.Command("bash", "-c", script).Output()
	if err != nil {
		t.Fatalf("send UDP in %s: %v: %s", ns.Name, err, out)
	}
	if _, err := fmt.Sscan(string(out), &failed); err != nil {
		t.Fatalf("send UDP in %s: %q: %v", ns.Name, out, err)
	}
	return failed
}
