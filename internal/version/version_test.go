package version

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// A binary linked with the Makefile's -X flag reports that version; one
// built without says "devel", never "(devel)" or an empty string.
func TestStampedVersion(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a binary twice (-short)")
	}
	if _, err := exec.LookPath("go"); err != nil {
		// The kernel matrix's guests have no Go toolchain.
		t.Skipf("needs the go command to build a binary: %v", err)
	}
	dir := t.TempDir()
	// Inside the module, so that the internal package may be imported.
	src, err := os.MkdirTemp(".", "_stampcheck") // "_": invisible to ./... patterns of builds beside the test
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(src) })
	if err := os.WriteFile(filepath.Join(src, "main.go"), []byte(`package main

import (
	"fmt"

	"github.com/conntracer/conntracer/internal/version"
)

func main() { fmt.Print(version.Get()) }
`), 0o644); err != nil {
		t.Fatal(err)
	}
	build := func(ldflags string) string {
		bin := filepath.Join(dir, "v")
		args := []string{"build", "-o", bin}
		if ldflags != "" {
			args = append(args, "-ldflags", ldflags)
		}
		if out, err := exec.Command("go", append(args, "./"+src)...).CombinedOutput(); err != nil {
			t.Fatalf("go build: %v\n%s", err, out)
		}
		out, err := exec.Command(bin).Output()
		if err != nil {
			t.Fatal(err)
		}
		return string(out)
	}
	got := build("-X github.com/conntracer/conntracer/internal/version.stamped=v9.8.7-test")
	if !strings.HasPrefix(got, "tracer v9.8.7-test") || !strings.Contains(got, runtime.Version()) {
		t.Errorf("stamped build says %q, want tracer v9.8.7-test ... %s", got, runtime.Version())
	}
	got = build("")
	if !strings.HasPrefix(got, "tracer devel") && !strings.HasPrefix(got, "tracer v") {
		t.Errorf("unstamped build says %q, want tracer devel... or a module version", got)
	}
}
