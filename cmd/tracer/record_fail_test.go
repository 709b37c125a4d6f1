package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/conntracer/conntracer/internal/testenv"
)

// TestRecordOnFullDiskFails records into a 64 KiB tmpfs that a filler
// leaves one page of: `tracer record` says at once, naming the file, that
// recording stopped, keeps running to --duration, and exits 1 naming it
// again; the summary does not claim a complete recording.
func TestRecordOnFullDiskFails(t *testing.T) {
	testenv.RequireRoot(t)
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, "size=64k,mode=0700"); err != nil {
		t.Fatalf("mount a 64 KiB tmpfs on %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	// Leave one 4 KiB page: the header and a block or two fit, the churn
	// below does not.
	if err := os.WriteFile(filepath.Join(dir, "filler"), make([]byte, 60<<10), 0o600); err != nil {
		t.Fatal(err)
	}
	ns := testenv.NewNetNS(t)
	srv := testenv.StartServer(t, ns, "ctr-srv")
	path := filepath.Join(dir, "full.ctrec")
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self)
	// Churn fills the page within seconds on real hardware; under
	// emulation each round of connections takes several times longer.
	patience := testenv.Scaled(15 * time.Second)
	cmd.Env = append(os.Environ(), runMainEnv+fmt.Sprintf("=record %s --netns %s --duration %s", path, ns.Name, patience+5*time.Second))
	stderr := &lineWaiter{want: "tracer: ERROR:", ready: make(chan struct{})}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var waitErr error
	exited := make(chan struct{})
	go func() { waitErr = cmd.Wait(); close(exited) }()
	t.Cleanup(func() { cmd.Process.Kill(); <-exited })

	// Churn until the recorder reports the failure.
	deadline := time.Now().Add(patience)
	var conns []testenv.Conn
	for range 200 {
		conns = append(conns, testenv.Conn{Addr: srv.Addr4(), Req: 100, Resp: 1000, Mode: testenv.ClientCloses})
	}
wait:
	for {
		testenv.RunClient(t, ns, "ctr-filler", conns)
		select {
		case <-stderr.ready:
			break wait
		case <-exited:
			t.Fatalf("tracer record ended (%v) without reporting the full disk: %s", waitErr, stderr)
		case <-time.After(time.Second):
		}
		if time.Now().After(deadline) {
			t.Fatalf("no write failure reported after %s: %s", patience, stderr)
		}
	}
	// At once: the tracer is still running (until --duration).
	select {
	case <-exited:
		t.Fatalf("tracer record exited (%v) with the failure instead of running on: %s", waitErr, stderr)
	default:
	}
	first := stderr.String()
	if !strings.Contains(first, path) || !strings.Contains(first, "no space left on device") {
		t.Fatalf("the failure does not name %s and its cause: %s", path, first)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
	case <-time.After(30 * time.Second):
		t.Fatalf("tracer record did not stop on SIGTERM: %s", stderr)
	}
	var ee *exec.ExitError
	if !errors.As(waitErr, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("exit %v, want status 1: %s", waitErr, stderr)
	}
	out := stderr.String()
	last := out[strings.LastIndex(strings.TrimRight(out, "\n"), "\n")+1:]
	if !strings.Contains(last, path) || !strings.Contains(last, "no space left on device") {
		t.Fatalf("the last line does not name %s and its cause: %q\n%s", path, last, out)
	}
	if strings.Contains(out, "tracer: recorded ") {
		t.Fatalf("the summary claims a complete recording: %s", out)
	}
	t.Logf("stderr:\n%s", out)
}

// TestRecordFlagsAndSummary: the file is the argument (-o FILE, the old
// form, still works with a note), the start-up line names no key that
// does not exist, and the end says what was written.
func TestRecordFlagsAndSummary(t *testing.T) {
	testenv.RequireRoot(t)
	ns := testenv.NewNetNS(t)
	dir := t.TempDir()
	for _, tc := range []struct {
		args []string
		note bool
	}{
		{[]string{"record", filepath.Join(dir, "a.ctrec")}, false},
		{[]string{"record", "-o", filepath.Join(dir, "b.ctrec")}, true},
	} {
		var stdout, stderr strings.Builder
		args := append(tc.args, "--netns", ns.Name, "--duration", "2s")
		if err := run(t.Context(), args, &stdout, &stderr); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, stderr.String())
		}
		out := stderr.String()
		path := tc.args[len(tc.args)-1]
		if strings.Contains(out, " q ") || !strings.Contains(out, "Ctrl-C or SIGTERM to stop") {
			t.Errorf("%v: start-up line advertises a key or lacks how to stop: %s", args, out)
		}
		if !strings.Contains(out, "tracer: recorded ") || !strings.Contains(out, "bytes, to "+path) {
			t.Errorf("%v: no summary of what was written: %s", args, out)
		}
		if st, err := os.Stat(path); err != nil || st.Size() == 0 {
			t.Errorf("%v: %v", args, err)
		}
		if got := strings.Contains(out, "tracer record "+path); got != tc.note {
			t.Errorf("%v: note about -o shown %v, want %v: %s", args, got, tc.note, out)
		}
	}
	err := run(t.Context(), []string{"record", "x", "y"}, &strings.Builder{}, &strings.Builder{})
	if err == nil || !strings.Contains(err.Error(), "writes one file") {
		t.Fatalf("two files: %v", err)
	}
}
