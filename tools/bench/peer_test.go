package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/conntracer/conntracer/internal/testenv"
)

// TestPeerScriptParses runs bpftrace's dry run (-d: parse, semantic
// checks against the running kernel's tracepoint formats, code
// generation; nothing attached) on the peer script, and on a broken copy
// to show that the dry run does fail on a bad script.
func TestPeerScriptParses(t *testing.T) {
	testenv.RequireRoot(t)
	if _, err := exec.LookPath("bpftrace"); err != nil {
		t.Skip("bpftrace not installed (make bench installs it)")
	}
	dir := t.TempDir()
	good := filepath.Join(dir, "peer.bt")
	if err := os.WriteFile(good, []byte(peerScript), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("bpftrace", "-d", good).CombinedOutput(); err != nil {
		t.Fatalf("bpftrace -d peer.bt: %v\n%s", err, lastBytes(out))
	}
	bad := filepath.Join(dir, "bad.bt")
	if err := os.WriteFile(bad, []byte(peerScript+"\ntracepoint:sock:no_such_event { @x = count(); }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := exec.Command("bpftrace", "-d", bad).Run(); err == nil {
		t.Fatal("bpftrace -d accepted a script naming a tracepoint that does not exist: the dry run checks nothing")
	}
}

func lastBytes(b []byte) []byte {
	if len(b) > 2000 {
		return b[len(b)-2000:]
	}
	return b
}
