package testenv

import (
	"debug/elf"
	"os/exec"
	"testing"
)

// StaticBusybox returns the path of a statically linked busybox, the one
// binary of the container images the tests build from local files (no
// registry is reachable), or skips the test, saying what to install.
func StaticBusybox(t testing.TB) string {
	t.Helper()
	bb, err := exec.LookPath("busybox")
	if err != nil {
		t.Skip("busybox not installed (apt-get install busybox-static): it is the container image's one binary")
	}
	f, err := elf.Open(bb)
	if err != nil {
		t.Fatalf("read %s: %v", bb, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Skipf("%s is dynamically linked: the container image needs busybox-static (apt-get install busybox-static)", bb)
		}
	}
	return bb
}
