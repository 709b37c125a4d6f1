package kernel

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestDeniedErrorSaysWhatHelps: the warning about unreadable processes
// names them and advises CAP_SYS_PTRACE only to a tracer that lacks it;
// to one that has it (root with every capability, refused a VM's init) it
// says that no privilege helps.
func TestDeniedErrorSaysWhatHelps(t *testing.T) {
	for _, tt := range []struct {
		capEff   string
		advise   bool
		contains string
	}{
		{"000001fffeffffff", false, "although this process has CAP_SYS_PTRACE"}, // root without CAP_SYS_RESOURCE
		{"000001fffef7ffff", true, "run as root with CAP_SYS_PTRACE"},           // bit 19 cleared
	} {
		dir := t.TempDir()
		for _, f := range []struct{ path, body string }{
			{"self/status", "Name:\ttracer\nCapInh:\t0000000000000000\nCapEff:\t" + tt.capEff + "\n"},
			{"1/comm", "process_api\n"},
			{"77/comm", "sandboxed\n"},
		} {
			p := filepath.Join(dir, f.path)
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, []byte(f.body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		err := deniedError(dir, "network namespaces", "connections missed", []int{1, 77})
		msg := err.Error()
		if !errors.Is(err, fs.ErrPermission) || !strings.Contains(msg, "pid 1 (process_api), 77 (sandboxed)") ||
			!strings.Contains(msg, tt.contains) || strings.Contains(msg, "run as root with CAP_SYS_PTRACE") != tt.advise {
			t.Errorf("CapEff %s: %q", tt.capEff, msg)
		}
	}
}
