package kernel

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"math"
	"os"
	"sort"
	"strconv"
)

// Kallsyms symbolizes kernel addresses from /proc/kallsyms. Only text
// symbols are kept; addresses read as 0 without root
// (kptr_restrict), in which case Symbolize returns the hex address.
//
// It lives as long as the tracer (drop locations are symbolized as they
// come), so it is kept compact: the names of about 100,000 symbols in one
// string, each found by offset and length, sorted by address. (As
// substrings of the lines read, each name kept its whole line alive:
// about 7 MiB of an idle tracer's heap.)
type Kallsyms struct {
	addrs []uint64
	offs  []uint32 // name i is text[offs[i] : offs[i]+lens[i]]
	lens  []uint16
	text  string
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
		off  uint32
		n    uint16
	}
	var (
		syms []sym
		text []byte
	)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		// "ffffffff81000000 T _stext" or "... t name\t[module]"
		f := bytes.Fields(sc.Bytes())
		if len(f) < 3 || len(f[1]) != 1 || (f[1][0] != 't' && f[1][0] != 'T') || len(f[2]) > math.MaxUint16 {
			continue
		}
		a, err := strconv.ParseUint(string(f[0]), 16, 64)
		if err != nil || a == 0 {
			continue
		}
		syms = append(syms, sym{a, uint32(len(text)), uint16(len(f[2]))})
		text = append(text, f[2]...)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("parse /proc/kallsyms: %w", err)
	}
	if len(text) > math.MaxUint32 {
		return nil, fmt.Errorf("parse /proc/kallsyms: %d bytes of names", len(text))
	}
	sort.Slice(syms, func(i, j int) bool { return syms[i].addr < syms[j].addr })
	k := &Kallsyms{addrs: make([]uint64, len(syms)), offs: make([]uint32, len(syms)), lens: make([]uint16, len(syms)), text: string(text)}
	for i, s := range syms {
		k.addrs[i], k.offs[i], k.lens[i] = s.addr, s.off, s.n
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
	name := k.text[k.offs[i] : k.offs[i]+uint32(k.lens[i])]
	return name + "+0x" + strconv.FormatUint(addr-k.addrs[i], 16)
}
