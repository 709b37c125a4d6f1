package main

import (
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestReportAndExportRefuseAFIFO: a FIFO with no writer is refused at
// once with what it is, by report and export alike (it used to hang).
func TestReportAndExportRefuseAFIFO(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "rec.ctrec")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, cmd := range []string{"report", "export"} {
		done := make(chan error, 1)
		go func() { done <- run(t.Context(), []string{cmd, fifo}, &strings.Builder{}, &strings.Builder{}) }()
		select {
		case err := <-done:
			if err == nil || !strings.Contains(err.Error(), "a FIFO or pipe") || !strings.Contains(err.Error(), fifo) {
				t.Errorf("tracer %s FIFO: %v", cmd, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("tracer %s still blocked on a FIFO after 10 s", cmd)
		}
	}
}
