package probe

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
)

// The programs that read registers through bpf/regs.h, and whether each
// reads a system call's first argument at its exit (connect, the Unix
// datagram sends: on arm64 orig_x0, since x0 holds the return value by
// then) or a kernel function's (the conntrack kprobes: x0).
var regsReaders = []struct {
	load    func() (*ebpf.CollectionSpec, error)
	prog    string
	syscall bool // reads syscall arguments; false: kprobe arguments or return value
}{
	{loadConnect, connectProgCtConnectExit, true},
	{loadConnect, connectProgCtUnixSendtoExit, true},
	{loadConnect, connectProgCtUnixSendmsgExit, true},
	{loadConnect, connectProgCtUnixSendmmsgExit, true},
	{loadConnect, connectProgCtUnixWriteExit, true},
	{loadConntrack, conntrackProgCtConfirmKp, false},
	{loadConntrack, conntrackProgCtConfirmKrp, false},
	{loadConntrack, conntrackProgCtDeleteKp, false},
	{loadConntrack, conntrackProgCtAllocKp, false},
	{loadConntrack, conntrackProgCtAllocKrp, false},
}

// arm64PtRegs builds BTF with arm64's struct pt_regs as the kernel declares
// it (arch/arm64/include/asm/ptrace.h): regs[31], sp, pc and pstate in an
// anonymous union with struct user_pt_regs, then orig_x0 and syscallno.
func arm64PtRegs(t *testing.T) *btf.Spec {
	t.Helper()
	u64 := &btf.Int{Name: "long long unsigned int", Size: 8}
	s32 := &btf.Int{Name: "int", Size: 4, Encoding: btf.Signed}
	idx := &btf.Int{Name: "__ARRAY_SIZE_TYPE__", Size: 4}
	regs := func() []btf.Member {
		return []btf.Member{
			{Name: "regs", Type: &btf.Array{Index: idx, Type: u64, Nelems: 31}, Offset: 0},
			{Name: "sp", Type: u64, Offset: 31 * 64},
			{Name: "pc", Type: u64, Offset: 32 * 64},
			{Name: "pstate", Type: u64, Offset: 33 * 64},
		}
	}
	user := &btf.Struct{Name: "user_pt_regs", Size: 272, Members: regs()}
	union := &btf.Union{Size: 272, Members: []btf.Member{
		{Name: "user_regs", Type: user},
		{Type: &btf.Struct{Size: 272, Members: regs()}},
	}}
	ptRegs := &btf.Struct{Name: "pt_regs", Size: 288, Members: []btf.Member{
		{Type: union},
		{Name: "orig_x0", Type: u64, Offset: 272 * 8},
		{Name: "syscallno", Type: s32, Offset: 280 * 8},
	}}
	b, err := btf.NewBuilder([]btf.Type{ptRegs}, nil)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := b.Marshal(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	spec, err := btf.LoadSpecFromReader(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	return spec
}

// regsFixups relocates prog's CO-RE relocations on the pt_regs flavours of
// bpf/regs.h against target, and returns each as "flavour kind=local->target".
func regsFixups(t *testing.T, load func() (*ebpf.CollectionSpec, error), prog string, target *btf.Spec) []string {
	t.Helper()
	spec, err := load()
	if err != nil {
		t.Fatal(err)
	}
	p := spec.Programs[prog]
	if p == nil {
		t.Fatalf("program %s missing", prog)
	}
	var relos []*btf.CORERelocation
	var flavours []string
	for _, ins := range p.Instructions {
		r := btf.CORERelocationMetadata(&ins)
		if r == nil {
			continue
		}
		for _, f := range []string{"pt_regs___x86_64", "pt_regs___arm64"} {
			if strings.Contains(r.String(), `"`+f+`"`) {
				relos = append(relos, r)
				flavours = append(flavours, f)
			}
		}
	}
	if len(relos) == 0 {
		t.Fatalf("%s: no relocation on bpf/regs.h's pt_regs flavours", prog)
	}
	fixups, err := btf.CORERelocate(relos, []*btf.Spec{target}, spec.ByteOrder, func(btf.Type) (btf.TypeID, error) {
		return 0, errors.New("no local type IDs here")
	})
	if err != nil {
		t.Fatal(err)
	}
	out := make([]string, len(fixups))
	for i := range fixups {
		out[i] = fmt.Sprintf("%s %s", flavours[i], fixups[i].String())
	}
	return out
}

// TestRegsRelocateForArm64 checks, without an arm64 kernel, that CO-RE
// resolves the register reads of regs.h against arm64's struct pt_regs:
// the x86-64 flavour is found missing (its branch is dead), every arm64
// read lands on regs[n] or orig_x0, and the first argument of a system
// call at its exit comes from orig_x0, never regs[0] (which holds the
// return value then), while the kprobes read regs[0].
func TestRegsRelocateForArm64(t *testing.T) {
	target := arm64PtRegs(t)
	for _, r := range regsReaders {
		fixups := regsFixups(t, r.load, r.prog, target)
		var origX0, x0 bool
		for _, f := range fixups {
			switch {
			case strings.HasPrefix(f, "pt_regs___x86_64 field_exists="):
				if !strings.HasSuffix(f, "->0") {
					t.Errorf("%s: %s: x86-64 registers found in arm64's pt_regs", r.prog, f)
				}
			case strings.HasPrefix(f, "pt_regs___x86_64 "):
				if !strings.HasSuffix(f, "=poison") {
					t.Errorf("%s: %s: an x86-64 register read resolved on arm64", r.prog, f)
				}
			case strings.HasPrefix(f, "pt_regs___arm64 field_exists="):
				if !strings.HasSuffix(f, "->1") {
					t.Errorf("%s: %s: arm64 registers not found", r.prog, f)
				}
			case strings.HasPrefix(f, "pt_regs___arm64 byte_off="):
				var local, targ uint64
				if _, err := fmt.Sscanf(strings.TrimPrefix(f, "pt_regs___arm64 byte_off="), "%d->%d", &local, &targ); err != nil {
					t.Fatalf("%s: %s: %v", r.prog, f, err)
				}
				switch {
				case local == 31*8: // orig_x0 in the local flavour
					origX0 = true
					if targ != 272 {
						t.Errorf("%s: orig_x0 at %d, want 272", r.prog, targ)
					}
				case local < 31*8 && local%8 == 0: // regs[n]
					x0 = x0 || local == 0
					if targ != local {
						t.Errorf("%s: regs[%d] at %d, want %d", r.prog, local/8, targ, local)
					}
				default:
					t.Errorf("%s: unexpected %s", r.prog, f)
				}
			default:
				t.Errorf("%s: unexpected %s", r.prog, f)
			}
		}
		if r.syscall && (!origX0 || x0) {
			t.Errorf("%s: first syscall argument from orig_x0: %v, from x0: %v (want orig_x0 only)\n%s", r.prog, origX0, x0, strings.Join(fixups, "\n"))
		}
		if !r.syscall && (origX0 || !x0) {
			t.Errorf("%s: kprobe reads orig_x0: %v, x0: %v (want x0 only)\n%s", r.prog, origX0, x0, strings.Join(fixups, "\n"))
		}
	}
}

// TestRegsRelocateForX86 is the same against the running kernel's BTF
// when it is an x86-64 kernel: the arm64 branch is dead, and the x86-64
// reads land on the saved registers.
func TestRegsRelocateForX86(t *testing.T) {
	target, err := btf.LoadKernelSpec()
	if err != nil {
		t.Skipf("no kernel BTF: %v", err)
	}
	var regs *btf.Struct
	if err := target.TypeByName("pt_regs", &regs); err != nil {
		t.Fatal(err)
	}
	isX86 := false
	for _, m := range regs.Members {
		isX86 = isX86 || m.Name == "r10"
	}
	if !isX86 {
		t.Skip("the running kernel is not x86-64")
	}
	for _, r := range regsReaders {
		for _, f := range regsFixups(t, r.load, r.prog, target) {
			switch {
			case strings.HasPrefix(f, "pt_regs___arm64 field_exists="):
				if !strings.HasSuffix(f, "->0") {
					t.Errorf("%s: %s", r.prog, f)
				}
			case strings.HasPrefix(f, "pt_regs___arm64 "):
				if !strings.HasSuffix(f, "=poison") {
					t.Errorf("%s: %s", r.prog, f)
				}
			case strings.HasPrefix(f, "pt_regs___x86_64 field_exists="):
				if !strings.HasSuffix(f, "->1") {
					t.Errorf("%s: %s", r.prog, f)
				}
			case strings.HasPrefix(f, "pt_regs___x86_64 byte_off="):
				if strings.HasSuffix(f, "=poison") {
					t.Errorf("%s: %s", r.prog, f)
				}
			default:
				t.Errorf("%s: unexpected %s", r.prog, f)
			}
		}
	}
}
