package smoke_test

import (
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/conntracer/conntracer/internal/probe"
)

// TestProbeHookModes opens the tracer's probe with every optional hook asked for and
// reports, on lines tools/vmtest/matrix.sh copies into its summary, the machine and the
// mode each hook got. It asserts what start-up promises on every kernel: Open succeeds
// (an optional hook that cannot load is off, not fatal), every hook is either attached in
// a named mode or off with a reason, and the core hooks (TCP state changes, connect
// results) are on.
func TestProbeHookModes(t *testing.T) {
	requireRoot(t)
	opts := probe.DefaultOptions()
	opts.Drops = true
	opts.ConntrackInKernel = true
	p, err := probe.Open(opts)
	if err != nil {
		t.Fatalf("probe.Open on %s: %v", release(t), err)
	}
	defer p.Close()

	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		t.Fatal(err)
	}
	t.Logf("vmtest-machine: %s %s", unix.ByteSliceToString(u.Release[:]), unix.ByteSliceToString(u.Machine[:]))
	var modes []string
	on := map[string]bool{}
	for _, a := range p.Attachments() {
		if a.Mode == "" && a.Err == nil {
			t.Errorf("hook %s is off without a reason", a.Hook)
		}
		if a.Mode != "" {
			on[a.Hook] = true
			modes = append(modes, a.Hook+"="+string(a.Mode))
		} else {
			modes = append(modes, a.Hook+"=off")
			t.Logf("off: %v", a)
		}
	}
	t.Logf("vmtest-hooks: %s", strings.Join(modes, "; "))
	for _, n := range p.Notes() {
		t.Logf("vmtest-note: %s", n)
	}
	if !on["sock/inet_sock_set_state"] {
		t.Errorf("the TCP state hook is off: %v", p.Attachments())
	}
}
