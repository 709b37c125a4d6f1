package kernel

import (
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// The reason names read from BTF are the kernel's own: the kfree_skb
// tracepoint's format prints the same table (__print_symbolic), and the
// numbers known to differ between kernels resolve on this one.
func TestDropReasonsMatchTracepoint(t *testing.T) {
	reasons, err := DropReasons()
	if err != nil {
		t.Skipf("no kernel BTF: %v", err)
	}
	// Reasons every kernel with drop reasons names (5.17 on); newer ones
	// such as TCP_LISTEN_OVERFLOW are absent from 6.1 and 6.12.
	for _, want := range []string{"NOT_SPECIFIED", "NO_SOCKET", "NETFILTER_DROP", "SOCKET_RCVBUFF"} {
		found := false
		for _, n := range reasons {
			found = found || n == want
		}
		if !found {
			t.Errorf("reason %s missing", want)
		}
	}
	var format []byte
	for _, p := range []string{"/sys/kernel/tracing/events/skb/kfree_skb/format", "/sys/kernel/debug/tracing/events/skb/kfree_skb/format"} {
		if format, err = os.ReadFile(p); err == nil {
			break
		}
	}
	if format == nil {
		t.Skipf("tracefs not readable (mount it, or run as root): %v", err)
	}
	pairs := regexp.MustCompile(`\{ (\d+), "([A-Z0-9_]+)" \}`).FindAllSubmatch(format, -1)
	if len(pairs) < 10 {
		t.Fatalf("no symbol table in kfree_skb format:\n%s", format)
	}
	for _, p := range pairs {
		v, _ := strconv.ParseUint(string(p[1]), 10, 32)
		if got := reasons[uint32(v)]; got != string(p[2]) {
			t.Errorf("reason %d: BTF says %q, the tracepoint prints %q", v, got, p[2])
		}
	}
	t.Logf("%d reasons checked against the tracepoint's table", len(pairs))
}

func TestKallsymsSymbolize(t *testing.T) {
	k, err := parseKallsyms(stringsReader("ffffffff81000000 T _stext\nffffffff81000100 t foo\nffffffff81000200 D data\n"))
	if err != nil {
		t.Fatal(err)
	}
	for addr, want := range map[uint64]string{
		0xffffffff81000105: "foo+0x5",
		0xffffffff81000000: "_stext+0x0",
		0x10:               "0x10",
	} {
		if got := k.Symbolize(addr); got != want {
			t.Errorf("Symbolize(%#x) = %q, want %q", addr, got, want)
		}
	}
}

func stringsReader(s string) *strings.Reader { return strings.NewReader(s) }
