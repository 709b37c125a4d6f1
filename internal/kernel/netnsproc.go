package kernel

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// NetNSProc holds what the sampler reads from /proc inside a namespace.
type NetNSProc struct {
	// ListenOverflows is TcpExt ListenOverflows from /proc/net/netstat,
	// what `nstat` shows as TcpExtListenOverflows.
	ListenOverflows uint64
	Somaxconn       uint32
	// ConntrackCount is the namespace's nf_conntrack_count; ConntrackMax
	// the (global) nf_conntrack_max. Both 0 when conntrack is not loaded.
	ConntrackCount, ConntrackMax uint64
	// Conntrack timeouts (seconds), 0 when conntrack is not loaded.
	TimeoutEstablished, TimeoutTimeWait, TimeoutCloseWait, TimeoutSynSent uint32
	// ProcStat is /proc/net/stat/nf_conntrack summed over CPUs, by column
	// name (nil when conntrack is not loaded).
	ProcStat map[string]uint64
	// Cookie is the namespace's netns cookie (SO_NETNS_COOKIE, Linux
	// 5.14+): unlike its inode number, never reused while the system
	// runs. 0 where the kernel does not tell.
	Cookie uint64
}

// ReadNetNSProc reads the namespace-scoped /proc files of the namespace
// open at nsFD from a thread inside it.
func ReadNetNSProc(nsFD int) (NetNSProc, error) { return readNetNSProc(nsFD, 0) }

// readNetNSProc is ReadNetNSProc for namespace ino (0: unknown).
func readNetNSProc(nsFD int, ino uint32) (NetNSProc, error) {
	var p NetNSProc
	err := inNetNS(nsFD, ino, func() error {
		b, err := os.ReadFile("/proc/thread-self/net/netstat")
		if err != nil {
			return fmt.Errorf("read netstat: %w", err)
		}
		p.ListenOverflows, _ = parseNetstat(b, "TcpExt", "ListenOverflows")
		p.Somaxconn = readSysctlU32("/proc/sys/net/core/somaxconn")
		const ct = "/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_"
		p.ConntrackCount = uint64(readSysctlU32("/proc/sys/net/netfilter/nf_conntrack_count"))
		p.ConntrackMax = uint64(readSysctlU32("/proc/sys/net/netfilter/nf_conntrack_max"))
		p.TimeoutEstablished = readSysctlU32(ct + "established")
		p.TimeoutTimeWait = readSysctlU32(ct + "time_wait")
		p.TimeoutCloseWait = readSysctlU32(ct + "close_wait")
		p.TimeoutSynSent = readSysctlU32(ct + "syn_sent")
		if b, err := os.ReadFile("/proc/thread-self/net/stat/nf_conntrack"); err == nil {
			p.ProcStat, _ = parseConntrackProcStat(b)
		}
		p.Cookie = netnsCookie()
		return nil
	})
	return p, err
}

// parseNetstat finds one counter in /proc/net/netstat's pairs of header
// and value lines ("TcpExt: SyncookiesSent ..." / "TcpExt: 0 ...").
func parseNetstat(b []byte, prefix, name string) (uint64, bool) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	var header []string
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 || f[0] != prefix+":" {
			header = nil
			continue
		}
		if header == nil {
			header = f
			continue
		}
		for i := 1; i < len(f) && i < len(header); i++ {
			if header[i] == name {
				v, err := strconv.ParseUint(f[i], 10, 64)
				return v, err == nil
			}
		}
		header = nil
	}
	return 0, false
}

// parseConntrackProcStat sums /proc/net/stat/nf_conntrack over CPUs. Its
// columns are hexadecimal and vary by kernel, so they are found by the
// header's names ("entries searched found new invalid ignore delete
// delete_list insert insert_failed drop early_drop ...").
func parseConntrackProcStat(b []byte) (map[string]uint64, error) {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) < 2 {
		return nil, fmt.Errorf("nf_conntrack stat: %d lines", len(lines))
	}
	header := strings.Fields(lines[0])
	out := make(map[string]uint64, len(header))
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		for i := 0; i < len(f) && i < len(header); i++ {
			v, err := strconv.ParseUint(f[i], 16, 64)
			if err != nil {
				return nil, fmt.Errorf("nf_conntrack stat column %s: %w", header[i], err)
			}
			if header[i] == "entries" {
				out[header[i]] = v // the same namespace-wide count on every line
				continue
			}
			out[header[i]] += v
		}
	}
	return out, nil
}

// netnsCookie returns the cookie of the calling thread's network
// namespace, read from a socket made there for the purpose (the kernel
// offers it only as a socket option, SO_NETNS_COOKIE), or 0 where the
// kernel lacks it (before 5.14).
func netnsCookie() uint64 {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0
	}
	defer unix.Close(fd)
	v, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	if err != nil {
		return 0
	}
	return v
}
