package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// busyCPU is the whole machine's busy CPU time in seconds (every CPU;
// everything but idle and iowait) from /proc/stat.
func busyCPU() (float64, error) {
	raw, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, fmt.Errorf("read /proc/stat: %w", err)
	}
	line, _, _ := strings.Cut(string(raw), "\n")
	return parseBusy(line)
}

// parseBusy reads the "cpu" line of /proc/stat: user nice system idle
// iowait irq softirq steal (guest time is already in user).
func parseBusy(line string) (float64, error) {
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return 0, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	var busy float64
	for i, v := range f[1:min(len(f), 9)] {
		if i == 3 || i == 4 {
			continue
		}
		n, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/stat %q: %w", line, err)
		}
		busy += n
	}
	return busy / 100, nil // USER_HZ is 100 on Linux
}

// statusBytes reads fields in kB of /proc/PID/status (VmRSS, VmHWM,
// RssAnon, RssFile) in bytes.
func statusBytes(pid int) (map[string]uint64, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, fmt.Errorf("read status of pid %d: %w", pid, err)
	}
	out := map[string]uint64{}
	for _, l := range strings.Split(string(raw), "\n") {
		k, v, ok := strings.Cut(l, ":")
		f := strings.Fields(v)
		if !ok || len(f) != 2 || f[1] != "kB" {
			continue
		}
		n, _ := strconv.ParseUint(f[0], 10, 64)
		out[k] = n * 1024
	}
	return out, nil
}

// bpfMap is one BPF map a process holds, from /proc/PID/fdinfo.
type bpfMap struct {
	ID         uint32
	Type       int
	MaxEntries uint32
	Memlock    uint64
}

// processMaps lists the BPF maps a process holds a descriptor of, each
// once (a map may have several descriptors).
func processMaps(pid int) ([]bpfMap, error) {
	dir := fmt.Sprintf("/proc/%d/fdinfo", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", dir, err)
	}
	seen := map[uint32]bool{}
	var out []bpfMap
	for _, e := range ents {
		raw, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		m, ok := parseFdinfoMap(string(raw))
		if !ok || seen[m.ID] {
			continue
		}
		seen[m.ID] = true
		out = append(out, m)
	}
	return out, nil
}

// parseFdinfoMap reads a BPF map's fdinfo (map_type, max_entries,
// memlock, map_id lines); ok is false for other descriptors.
func parseFdinfoMap(s string) (m bpfMap, ok bool) {
	have := 0
	for _, l := range strings.Split(s, "\n") {
		k, v, found := strings.Cut(l, ":")
		if !found {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		if err != nil {
			continue
		}
		switch k {
		case "map_type":
			m.Type, have = int(n), have|1
		case "max_entries":
			m.MaxEntries, have = uint32(n), have|2
		case "memlock":
			m.Memlock, have = n, have|4
		case "map_id":
			m.ID, have = uint32(n), have|8
		}
	}
	return m, have == 15
}

// bpfMapRSS is the resident size of a process's bpf-map mappings (the
// ring buffer's pages mapped into user space).
func bpfMapRSS(pid int) (uint64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return 0, fmt.Errorf("open smaps: %w", err)
	}
	defer f.Close()
	return parseMapRSS(f)
}

func parseMapRSS(r io.Reader) (uint64, error) {
	sc := bufio.NewScanner(r)
	inMap := false
	var kb uint64
	for sc.Scan() {
		l := sc.Text()
		f := strings.Fields(l)
		if len(f) >= 5 && strings.Contains(f[0], "-") && !strings.HasSuffix(f[0], ":") {
			inMap = strings.HasSuffix(l, "anon_inode:bpf-map")
			continue
		}
		if inMap && len(f) == 3 && f[0] == "Rss:" {
			n, _ := strconv.ParseUint(f[1], 10, 64)
			kb += n
		}
	}
	return kb * 1024, sc.Err()
}

// metrics is one scrape of a Prometheus text exposition: value by series
// ("name{labels}" as printed).
type metrics map[string]float64

// scrape fetches addr/metrics.
func scrape(addr string) (metrics, error) {
	cl := http.Client{Timeout: 5 * time.Second}
	resp, err := cl.Get("http://" + addr + "/metrics")
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", addr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape %s: %s", addr, resp.Status)
	}
	return parseMetrics(resp.Body)
}

func parseMetrics(r io.Reader) (metrics, error) {
	m := metrics{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if l == "" || l[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(l, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(l[i+1:], 64)
		if err != nil {
			continue
		}
		m[l[:i]] = v
	}
	return m, sc.Err()
}

// get is a series' value, 0 when absent.
func (m metrics) get(series string) float64 { return m[series] }

// freeAddr returns a loopback address with a port nobody listens on now.
func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("find a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// machine describes the machine for the report.
func machine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), Go: runtime.Version()}
	if out, err := exec.Command("uname", "-r").Output(); err == nil {
		m.Kernel = strings.TrimSpace(string(out))
	}
	if raw, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(raw), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if raw, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb int
		fmt.Sscanf(string(raw), "MemTotal: %d kB", &kb)
		m.MemoryMiB = kb / 1024
	}
	if raw, err := os.ReadFile("/proc/loadavg"); err == nil {
		m.Load = strings.Join(strings.Fields(string(raw))[:3], " ")
	}
	if raw, err := os.ReadFile("/proc/net/sockstat"); err == nil {
		for _, l := range strings.Split(string(raw), "\n") {
			if strings.HasPrefix(l, "TCP:") {
				m.Sockets = l
			}
		}
	}
	if out, err := exec.Command("git", "describe", "--always", "--dirty").Output(); err == nil {
		m.Commit = strings.TrimSpace(string(out))
	}
	if out, err := exec.Command("bpftrace", "--version").Output(); err == nil {
		m.Bpftrace = strings.TrimSpace(string(out))
	}
	return m
}

// machineContext counts the network namespaces in use (distinct
// /proc/*/ns/net) and quotes the initial namespace's TCP sockstat line.
func machineContext() string {
	ents, _ := os.ReadDir("/proc")
	seen := map[string]bool{}
	for _, e := range ents {
		if e.Name()[0] < '0' || e.Name()[0] > '9' {
			continue
		}
		if l, err := os.Readlink("/proc/" + e.Name() + "/ns/net"); err == nil {
			seen[l] = true
		}
	}
	tcp := ""
	if raw, err := os.ReadFile("/proc/net/sockstat"); err == nil {
		for _, l := range strings.Split(string(raw), "\n") {
			if rest, ok := strings.CutPrefix(l, "TCP: "); ok {
				tcp = rest
			}
		}
	}
	return fmt.Sprintf("%d netns; TCP %s", len(seen), tcp)
}
