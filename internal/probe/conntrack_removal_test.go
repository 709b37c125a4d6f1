package probe

import (
	"strings"
	"testing"
)

// The removal hook follows what kallsyms lists, never the kernel's version:
// nf_ct_delete where it is whole (Debian's 6.1, 6.12), the unlink from the
// hash table where the compiler split it (5.10, 7.2). The listings are
// excerpts of those kernels' nf_conntrack modules.
func TestChooseCtRemoval(t *testing.T) {
	for _, c := range []struct {
		name, kallsyms string
		want           ctRemoval
	}{
		{"6.12: whole", `
ffffffffc0a017a0 T nf_ct_delete	[nf_conntrack]
ffffffffc0a01150 t __nf_ct_delete_from_lists	[nf_conntrack]
ffffffffc0a01a20 t nf_ct_gc_expired.part.0	[nf_conntrack]
`, ctRemoval{fn: "nf_ct_delete"}},
		{"7.2: split", `
ffffffffc0a01310 t __nf_ct_delete_from_lists	[nf_conntrack]
ffffffffc0a019f0 t nf_ct_delete.part.0	[nf_conntrack]
ffffffffc0a01c40 T nf_ct_delete	[nf_conntrack]
`, ctRemoval{fn: "__nf_ct_delete_from_lists", unlink: true, split: "nf_ct_delete.part.0"}},
		{"5.10: split, the unlink without underscores", `
0000000000000000 t nf_ct_delete_from_lists	[nf_conntrack]
0000000000000000 t nf_ct_delete.part.0	[nf_conntrack]
0000000000000000 T nf_ct_delete	[nf_conntrack]
0000000000000000 T nf_ct_delete_from_lists_unrelated	[other]
`, ctRemoval{fn: "nf_ct_delete_from_lists", unlink: true, split: "nf_ct_delete.part.0"}},
		{"split, the unlink inlined", `
ffffffffc0a019f0 t nf_ct_delete.part.0	[nf_conntrack]
ffffffffc0a01c40 T nf_ct_delete	[nf_conntrack]
`, ctRemoval{fn: "nf_ct_delete", split: "nf_ct_delete.part.0"}},
		{"no conntrack", "ffffffff81000000 T _stext\n", ctRemoval{fn: "nf_ct_delete"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := scanCtRemoval(strings.NewReader(c.kallsyms))
			if err != nil || got != c.want {
				t.Fatalf("got %+v, %v; want %+v", got, err, c.want)
			}
			if got.unlink != (got.prog(AttachFentry) == conntrackProgCtUnlinkEnter) ||
				got.unlink != (got.prog(AttachKprobe) == conntrackProgCtUnlinkKp) {
				t.Errorf("programs %s, %s for %+v", got.prog(AttachFentry), got.prog(AttachKprobe), got)
			}
			for _, p := range got.unused() {
				if p == got.prog(AttachFentry) || p == got.prog(AttachKprobe) {
					t.Errorf("%s both used and left out", p)
				}
			}
			if (got.note() == "") != (got.split == "") {
				t.Errorf("note %q for %+v", got.note(), got)
			}
		})
	}
}
