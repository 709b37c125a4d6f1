package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/conntracer/conntracer/internal/testenv"
)

// TestSizeFlagsAreBounded: every size flag refuses a value past its bound
// before anything is allocated, saying the bound and why. --max-sockets
// 30000000 once pinned 5.9 GB of kernel memory; --web.config.file
// /dev/zero grew memory ~400 MB/s.
func TestSizeFlagsAreBounded(t *testing.T) {
	big := filepath.Join(t.TempDir(), "web.yml")
	if err := os.WriteFile(big, bytes.Repeat([]byte("# padding\n"), maxWebConfigBytes/10+1), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--max-sockets", "30000000"}, "--max-sockets 30000000: must be from 1 to 4194304 (about 200 bytes of kernel memory each"},
		{[]string{"--ring-buffer-bytes", "2147483648"}, "at most 1073741824 (1 GiB: it is pinned kernel memory)"},
		{[]string{"--wakeup-bytes", "16777216"}, "--wakeup-bytes 16777216: must not exceed --ring-buffer-bytes"},
		{[]string{"--web.listen-address", "127.0.0.1:0", "--web.config.file", "/dev/zero"}, "--web.config.file /dev/zero: not a regular file"},
		{[]string{"--web.listen-address", "127.0.0.1:0", "--web.config.file", big}, "a web config is a few KB, at most 1048576 bytes are read"},
		{[]string{"--web.listen-address", "127.0.0.1:0", "--metrics.top-processes", "1000000"}, "must be from 0 to 10000"},
		{[]string{"top", "--conntrack-events-buffer", "1073741824"}, "at most 268435456 (256 MiB of kernel memory per network namespace)"},
		{[]string{"serve", "--record-keep", "100000"}, "--record-keep must be from 0 to 1000"},
		{[]string{"record", "--flight-recorder", "24h", "--record", "x.ctrec"}, "--flight-recorder 24h0m0s: at most 1h0m0s (the window is held in memory"},
	} {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			start := time.Now()
			err := run(context.Background(), tt.args, &stdout, &stderr)
			if err == nil {
				t.Fatal("accepted a size past its bound")
			}
			if code := exitCode(err, &stderr); code != 2 {
				t.Errorf("exit code %d, want 2 (usage)", code)
			}
			if !strings.Contains(stderr.String(), tt.want) {
				t.Errorf("stderr %q does not contain %q", stderr.String(), tt.want)
			}
			if d := time.Since(start); d > testenv.Scaled(2*time.Second) {
				t.Errorf("refusing took %v: the value was acted on before it was checked", d)
			}
		})
	}
}
