package kernel

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
)

// Kallsyms symbolizes kernel addresses from /proc/kallsyms. Only text
// symbols are kept; addresses read as 0 without root
// (kptr_restrict), in which case Symbolize returns the hex address.
type Kallsyms struct {
	addrs []uint64
	names []string
}

// LoadKallsyms reads /proc/kallsyms.
func LoadKallsyms() (*Kallsyms, error) {
	f, err := os.Open("/proc/kallsyms")
	if err != nil {
		return nil, fmt.Errorf("read kernel symbols: %w", err)
	}
	defer f.Close()
	return parseKallsyms(f)
}

func parseKallsyms(r io.Reader) (*Kallsyms, error) {
	type sym struct {
		addr uint64
		name string
	}
	var syms []sym
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		// "ffffffff81000000 T _stext" or "... t name\t[module]"
		f := strings.Fields(sc.Text())
		if len(f) < 3 || (f[1] != "t" && f[1] != "T") {
			continue
		}
		a, err := strconv.ParseUint(f[0], 16, 64)
		if err != nil || a == 0 {
			continue
		}
		syms = append(syms, sym{a, f[2]})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("parse /proc/kallsyms: %w", err)
	}
	sort.Slice(syms, func(i, j int) bool { return syms[i].addr < syms[j].addr })
	k := &Kallsyms{addrs: make([]uint64, len(syms)), names: make([]string, len(syms))}
	for i, s := range syms {
		k.addrs[i], k.names[i] = s.addr, s.name
	}
	return k, nil
}

// Symbolize returns "function+0xoffset" for a kernel text address, or the
// address in hex when no symbol precedes it.
func (k *Kallsyms) Symbolize(addr uint64) string {
	i := sort.Search(len(k.addrs), func(i int) bool { return k.addrs[i] > addr }) - 1
	if i < 0 || addr == 0 {
		return "0x" + strconv.FormatUint(addr, 16)
	}
	return k.names[i] + "+0x" + strconv.FormatUint(addr-k.addrs[i], 16)
}
