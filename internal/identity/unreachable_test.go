package identity

import (
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/conntracer/conntracer/internal/testenv"
)

// TestMain runs the tests, or, for TestSocketNotWritableIsSaid (which
// runs this binary as uid 65534), prints NewResolver's note and exits.
func TestMain(m *testing.M) {
	if sock := os.Getenv("CONNTRACER_NOTE_CRIO_SOCKET"); sock != "" {
		_, note := NewResolver(Sources{CRIOSocket: sock})
		os.Stdout.WriteString("NOTE: " + note + "\n")
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// A runtime whose socket the tracer's user may not write (CRI-O's is
// root's, mode 0660, and the DaemonSet runs as uid 65534) is said at
// start-up, by name, with why: never a silent fallback to cgroup ids. An
// absent socket is no failure.
func TestSocketNotWritableIsSaid(t *testing.T) {
	testenv.RequireRoot(t)
	dir, err := os.MkdirTemp("", "ctnote")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /info", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "{}") })
	sock := serveUnixAt(t, filepath.Join(dir, "crio.sock"), mux)
	if err := os.Chmod(sock, 0o660); err != nil { // as CRI-O makes it, root:root
		t.Fatal(err)
	}
	// The test binary, where uid 65534 may run it.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "identity.test")
	if out, err := exec.Command("cp", self, bin).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	os.Chmod(bin, 0o755)
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "CONNTRACER_NOTE_CRIO_SOCKET="+sock)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("helper as uid 65534: %v\n%s", err, out)
	}
	var note string
	for _, l := range strings.Split(string(out), "\n") {
		if n, ok := strings.CutPrefix(l, "NOTE: "); ok {
			note = n
		}
	}
	t.Logf("note as uid 65534: %s", note)
	for _, want := range []string{"no container runtime reachable", "not queried: cri-o (" + sock, "permission denied", "as uid 65534"} {
		if !strings.Contains(note, want) {
			t.Errorf("note %q lacks %q", note, want)
		}
	}

	// Root may: the same socket answers.
	if _, note := NewResolver(Sources{CRIOSocket: sock}); note != "container names from cri-o ("+sock+")" {
		t.Errorf("as root: note %q", note)
	}
	// Absent: named as absent, no failure.
	if _, note := NewResolver(Sources{CRIOSocket: filepath.Join(dir, "absent.sock")}); strings.Contains(note, "not queried") {
		t.Errorf("an absent socket is reported as a failure: %q", note)
	}
}
