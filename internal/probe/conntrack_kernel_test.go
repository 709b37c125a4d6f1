package probe

import (
	"github.com/conntracer/conntracer/internal/aggregate"

	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/conntracer/conntracer/internal/events"
	"github.com/conntracer/conntracer/internal/kernel"
	"github.com/conntracer/conntracer/internal/testenv"
)

// The in-kernel conntrack path is chosen where it attaches and otherwise
// falls back cleanly: Open succeeds, the note and ConntrackInKernel say which
// source is in use and why. On this host (fentry EPERM, no kprobes) that is
// the fallback; in the kernel matrix it must be fentry.
func TestConntrackInKernelSource(t *testing.T) {
	testenv.RequireRoot(t)
	opts := DefaultOptions()
	opts.NoConnect = true
	opts.ConntrackInKernel = true
	p, err := Open(opts)
	if err != nil {
		t.Fatalf("Open with the in-kernel conntrack path requested must not fail: %+v", err)
	}
	defer p.Close()
	var hook *Attachment
	for i, a := range p.Attachments() {
		if a.Hook == ConntrackHook {
			hook = &p.Attachments()[i]
		}
	}
	if hook == nil {
		t.Fatalf("no %q attachment in %v", ConntrackHook, p.Attachments())
	}
	var note string
	for _, n := range p.Notes() {
		if strings.HasPrefix(n, "conntrack hooks: ") {
			note = n
		}
	}
	src, ok := p.ConntrackInKernel()
	t.Logf("source %q; note %q; attachment %v", src, note, *hook)
	if ok != (hook.Mode != "") {
		t.Errorf("ConntrackInKernel() = %q, %v; attachment %v", src, ok, *hook)
	}
	if ok {
		if want := "conntrack hooks: in-kernel (" + string(hook.Mode) + ")"; note != want || src != "in-kernel ("+string(hook.Mode)+")" {
			t.Errorf("note %q, source %q; want %q", note, src, want)
		}
		if k, vm := testenv.Emulated(); vm && hook.Mode != AttachFentry && !noModuleBTF() {
			t.Errorf("kernel %s: conntrack hooks attached as %s, want fentry (better modes failed: %v)", k, hook.Mode, hook.Err)
		}
		return
	}
	if k, vm := testenv.Emulated(); vm {
		t.Fatalf("kernel %s: in-kernel conntrack path unavailable: %v", k, hook.Err)
	}
	if src != "ctnetlink events" || !strings.HasPrefix(note, "conntrack hooks: unavailable, conntrack entries need ctnetlink (") {
		t.Errorf("fallback: source %q, note %q", src, note)
	}
	// The reason names each mode tried (or that nf_conntrack is absent).
	if _, err := os.Stat(nfConntrackSysctl); err == nil &&
		(!strings.Contains(note, "fentry: ") || !strings.Contains(note, "kprobe: ")) {
		t.Errorf("fallback note does not say why each mode failed: %q", note)
	}
}

// ctEvents returns the conntrack entry events of one namespace by kind.
func ctEvents(evs []events.Event, netns uint32) map[events.Kind][]events.ConntrackEntry {
	out := map[events.Kind][]events.ConntrackEntry{}
	for i := range evs {
		switch evs[i].Kind {
		case events.KindConntrackNew, events.KindConntrackDestroy, events.KindConntrackAllocFailed:
			if evs[i].ConntrackEntry.NetNS == netns {
				out[evs[i].Kind] = append(out[evs[i].Kind], evs[i].ConntrackEntry)
			}
		}
	}
	return out
}

// waitCT waits (bounded) until the namespace has at least want events of kind.
func waitCT(t *testing.T, col *collector, netns uint32, kind events.Kind, want int) []events.ConntrackEntry {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		got := ctEvents(col.snapshot(), netns)[kind]
		if len(got) >= want || time.Now().After(deadline) {
			time.Sleep(200 * time.Millisecond) // and nothing more than want arrives
			return ctEvents(col.snapshot(), netns)[kind]
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// The in-kernel path reports every conntrack entry of a fresh namespace as
// the kernel inserts, removes and refuses it: N flows give N inserts with
// their tuples, `conntrack -F` gives N removals, and with the table full
// the refused allocations equal the namespace's `drop` statistic delta,
// each with its tuple; through the aggregator each refusal counts once
// though the drops hook reports the same packets. Runs in the kernel
// matrix (fentry on 6.1 and 6.12); skips where neither fentry nor kprobes
// attach.
func TestConntrackInKernel(t *testing.T) {
	for _, mode := range []AttachMode{AttachFentry, AttachKprobe} {
		t.Run(string(mode), func(t *testing.T) { testConntrackInKernel(t, mode) })
	}
}

func testConntrackInKernel(t *testing.T, mode AttachMode) {
	testenv.RequireRoot(t)
	testenv.RequireTool(t, "nft")
	testenv.RequireTool(t, "conntrack")
	ns := testenv.NewNetNS(t)
	fd := openNS(t, ns)
	testenv.NFT(t, ns, `table inet ctktest {
	chain out {
		type filter hook output priority 0;
		ct state new counter
	}
}`)
	opts := DefaultOptions()
	opts.Filter.NetNS = ns.Inode
	opts.NoConnect = true
	opts.Drops = true
	opts.ConntrackInKernel = true
	opts.ConntrackMode = mode
	// The kernel's run-time statistics of BPF programs, for the cost per
	// call logged at the end (not asserted: timing under emulation).
	if stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME)); err == nil {
		t.Cleanup(func() { stats.Close() })
	}
	tr := startProbe(t, opts)
	src, ok := tr.probe.ConntrackInKernel()
	if !ok {
		why := tr.probe.Notes()
		if k, vm := testenv.Emulated(); vm && !(mode == AttachFentry && noModuleBTF()) {
			t.Fatalf("kernel %s: in-kernel conntrack path unavailable: %v", k, why)
		}
		t.Skipf("%s does not attach to nf_conntrack on this kernel (%v); run it in the kernel matrix: make test-kernels RUN=TestConntrackInKernel", mode, why)
	}
	t.Logf("conntrack entries: %s", src)
	for _, n := range tr.probe.Notes() {
		if strings.HasPrefix(n, "conntrack removals: ") {
			t.Log(n)
		}
	}

	// N flows, IPv4 and IPv6: one entry each, inserted when the SYN leaves.
	server := testenv.StartServer(t, ns, "ctk-server")
	var plan []testenv.Conn
	for i := 0; i < 6; i++ {
		plan = append(plan, testenv.Conn{Addr: server.Addr4(), Req: 10, Resp: 10, Mode: testenv.ClientCloses})
	}
	for i := 0; i < 4; i++ {
		plan = append(plan, testenv.Conn{Addr: server.Addr6(), Req: 10, Resp: 10, Mode: testenv.ClientCloses})
	}
	client := testenv.RunClient(t, ns, "ctk-client", plan)
	want := map[[2]netip.AddrPort]bool{}
	for _, r := range client.Results {
		if r.Err != "" {
			t.Fatalf("client: %+v", r)
		}
		want[[2]netip.AddrPort{r.LocalAddrPort(), netip.MustParseAddrPort(r.Remote)}] = true
	}
	checkTuples := func(what string, got []events.ConntrackEntry) {
		t.Helper()
		seen := map[[2]netip.AddrPort]bool{}
		for _, e := range got {
			k := [2]netip.AddrPort{e.OrigSrc, e.OrigDst}
			if !want[k] || e.Proto != 6 || e.ReplySrc != e.OrigDst || e.ReplyDst != e.OrigSrc {
				t.Errorf("%s: unexpected entry %+v", what, e)
			}
			if e.Family != events.FamilyIPv4 && e.Family != events.FamilyIPv6 || e.Family == events.FamilyIPv4 != e.OrigSrc.Addr().Is4() {
				t.Errorf("%s: family %v for %v", what, e.Family, e.OrigSrc)
			}
			seen[k] = true
		}
		if len(got) != len(want) || len(seen) != len(want) {
			t.Errorf("%s: %d events for %d distinct flows, want %d flows once each", what, len(got), len(seen), len(want))
		}
	}
	news := waitCT(t, tr.col, ns.Inode, events.KindConntrackNew, len(want))
	checkTuples("inserts", news)
	for _, e := range news {
		if e.TCPState != 1 { // TCP_CONNTRACK_SYN_SENT: confirmed as the SYN leaves
			t.Errorf("insert %v -> %v in conntrack TCP state %d, want 1 (SYN_SENT)", e.OrigSrc, e.OrigDst, e.TCPState)
		}
	}

	// Removal: flush the namespace's table.
	ns.Output(t, "conntrack", "-F")
	checkTuples("removals", waitCT(t, tr.col, ns.Inode, events.KindConntrackDestroy, len(want)))

	// The table full: refused allocations against the kernel's statistics.
	before, err := kernel.ReadNetNSProc(fd)
	if err != nil {
		t.Fatal(err)
	}
	beforeStats := ctStats(t, fd)
	restore := testenv.LowerConntrackMax(t, 32)
	b := testenv.StartBurst(t, ns, "ctk-churner", server.Addr4(), 80, 1200*time.Millisecond)
	b.Release(t)
	restore()
	after, err := kernel.ReadNetNSProc(fd)
	if err != nil {
		t.Fatal(err)
	}
	afterStats := ctStats(t, fd)
	drops := after.ProcStat["drop"] - before.ProcStat["drop"]
	insertFailed := after.ProcStat["insert_failed"] - before.ProcStat["insert_failed"]
	if b.Failed == 0 || drops == 0 {
		t.Fatalf("table never filled: %d of 80 connects failed, drop statistic +%d", b.Failed, drops)
	}
	if d := afterStats.Drop - beforeStats.Drop; d != drops {
		t.Errorf("ctnetlink drop +%d, /proc/net/stat/nf_conntrack drop +%d", d, drops)
	}
	refused := waitCT(t, tr.col, ns.Inode, events.KindConntrackAllocFailed, int(drops))
	// Every refused allocation is a `drop` (init_conntrack fails, the
	// packet is dropped); a failed insert (insert_failed) would count a
	// drop too, without an allocation failure: there must be none here.
	if uint64(len(refused)) != drops || insertFailed != 0 {
		t.Errorf("tracer: %d refused allocations; kernel: drop +%d, insert_failed +%d", len(refused), drops, insertFailed)
	}
	ports := map[uint16]bool{}
	for _, e := range refused {
		if e.Proto != 6 || e.OrigDst != netip.MustParseAddrPort(server.Addr4()) || !e.OrigSrc.Addr().Is4() ||
			e.ReplySrc != e.OrigDst || e.ReplyDst != e.OrigSrc || e.TCPState != 0 {
			t.Errorf("refused flow %+v, want a TCP flow to %s", e, server.Addr4())
		}
		ports[e.OrigSrc.Port()] = true
	}
	if len(ports) != b.Failed {
		t.Errorf("%d distinct refused flows, the client saw %d of its connects fail", len(ports), b.Failed)
	}

	logProgramStats(t, tr.probe)

	// Through the aggregator: each refusal once, exact, owners lent by the
	// drops hook's records of the same packets.
	if err := tr.stop(); err != nil {
		t.Fatal(err)
	}
	names := dropNames(t)
	agg := aggregate.NewConntrackStats()
	now := time.Now()
	beforeStats.NetNS, afterStats.NetNS = ns.Inode, ns.Inode
	agg.Apply(&events.Event{Kind: events.KindConntrackStats, Conntrack: beforeStats}, now)
	evs := tr.col.snapshot()
	for i := range evs {
		names.Apply(&evs[i])
		agg.Apply(&evs[i], now)
	}
	agg.Apply(&events.Event{Kind: events.KindConntrackStats, Conntrack: afterStats}, now.Add(time.Second))
	snap := agg.Snapshot()
	if len(snap) != 1 {
		t.Fatalf("conntrack snapshot: %+v", snap)
	}
	var byChurner uint64
	for _, p := range snap[0].TopProcesses {
		if p.PID == uint32(b.PID) {
			byChurner = p.Refused
		}
	}
	exact := 0
	for _, f := range snap[0].RefusedFlows {
		if f.Exact {
			exact++
		}
	}
	if byChurner == 0 || byChurner > uint64(len(refused)) || exact != min(len(refused), 32) {
		t.Errorf("aggregated: churner refused %d (tracer saw %d refusals), %d exact refused flows of %d kept",
			byChurner, len(refused), exact, len(snap[0].RefusedFlows))
	}
	t.Logf("%s: %d inserts, %d removals; 80 connects with max 32: %d failed, drop +%d, insert_failed +%d, %d refused allocations, %d attributed to ctk-churner",
		src, len(news), len(want), b.Failed, drops, insertFailed, len(refused), byChurner)
}

// logProgramStats logs each conntrack program's calls and mean run time
// (kernel.bpf_stats_enabled, turned on by the test).
func logProgramStats(t *testing.T, p *Probe) {
	t.Helper()
	for _, c := range p.colls {
		for name, prog := range c.Programs {
			if !strings.HasPrefix(name, "ct_confirm") && !strings.HasPrefix(name, "ct_delete") && !strings.HasPrefix(name, "ct_unlink") && !strings.HasPrefix(name, "ct_alloc") {
				continue
			}
			st, err := prog.Stats()
			if err != nil || st.RunCount == 0 {
				continue
			}
			t.Logf("%-16s %6d calls, %5d ns per call", name, st.RunCount, st.Runtime.Nanoseconds()/int64(st.RunCount))
		}
	}
}

// noModuleBTF reports whether the kernel describes vmlinux but no module in
// /sys/kernel/btf (before 5.11): fentry cannot reach nf_conntrack's
// functions there, and kprobes are the best conntrack hooks.
func noModuleBTF() bool {
	if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err != nil {
		return false
	}
	ents, err := os.ReadDir("/sys/kernel/btf")
	return err == nil && len(ents) == 1
}
