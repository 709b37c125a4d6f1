package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// nginxConf serves www/f (6 bytes) on 127.0.0.1:8080 of the namespace it
// runs in; %[1]s is its directory. Debian's defaults otherwise (worker
// processes auto), with no access log: the web server's own work per
// request, not a disk's.
const nginxConf = `daemon off;
master_process on;
worker_processes auto;
pid %[1]s/nginx-%[2]s.pid;
error_log stderr notice;
events { worker_connections 1024; }
http {
	access_log off;
	server {
		listen 127.0.0.1:8080;
		root %[1]s/www;
	}
}
`

// wrkClients are wrk's connections (wrk -t1 -c16), each request on a new
// connection (Connection: close): nginx closes first, so every request
// leaves a TIME_WAIT socket on the server's side.
const wrkClients = 16

// nginxSection serves a 6-byte file from nginx to wrk in a fresh
// namespace, beside every variant, in rounds rotated like the churn's.
func (b *bench) nginxSection(ctx context.Context) error {
	dir := filepath.Join(b.dir, "nginx")
	if err := os.MkdirAll(filepath.Join(dir, "www"), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "www", "f"), []byte("hello\n"), 0o644); err != nil {
		return err
	}
	s := &ChurnSummary{Clients: wrkClients, Rounds: b.cfg.rounds}
	for round := 0; round < b.cfg.rounds; round++ {
		for _, v := range rotate(Variants, round) {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			var server *proc
			prepare := func(ns *netns) error {
				var err error
				server, err = b.startNginx(ctx, dir, ns)
				return err
			}
			r, err := b.workloadOnce(ctx, v, prepare, func(ns *netns) (int, float64, error) { return b.runWrk(ns) })
			if server != nil {
				server.stop()
			}
			if err != nil {
				return fmt.Errorf("%s, round %d: %w", v, round, err)
			}
			r.Round = round
			s.Runs = append(s.Runs, r)
			b.logf("nginx round=%d %-12s %7.0f req/s %6.1f us CPU/req, own %5.2f us/req, lost %d", round, v, r.Rate(), r.CPUPerConn()*1e6, r.OwnCPUSeconds/float64(r.Conns)*1e6, r.Lost)
		}
	}
	s.Variants = summarizeChurn(s.Runs)
	if base := s.Variant(VariantBaseline); base != nil {
		s.Conns = int(base.MedianRate * b.cfg.wrkRun.Seconds())
	}
	b.res.Nginx = s
	return nil
}

// startNginx starts nginx in ns and waits until its workers run.
func (b *bench) startNginx(ctx context.Context, dir string, ns *netns) (*proc, error) {
	conf := filepath.Join(dir, "nginx-"+ns.Name+".conf")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(nginxConf, dir, ns.Name)), 0o644); err != nil {
		return nil, err
	}
	b.command("ip netns exec NETNS nginx -p DIR -c DIR/nginx.conf  # serves a 6-byte file on 127.0.0.1:8080")
	cmd := exec.Command("ip", "netns", "exec", ns.Name, "nginx", "-p", dir, "-c", conf)
	return b.startProc(ctx, "nginx", cmd, func(l string) bool { return strings.Contains(l, "start worker process") }, 30*time.Second)
}

var (
	wrkTotal = regexp.MustCompile(`(\d+) requests in ([0-9.]+)(us|ms|s|m)\b`)
	wrkErrs  = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
)

// runWrk runs wrk against the namespace's nginx for the configured time
// and returns its requests and seconds.
func (b *bench) runWrk(ns *netns) (int, float64, error) {
	d := fmt.Sprintf("%ds", int(b.cfg.wrkRun.Seconds()))
	b.command("ip netns exec NETNS wrk -t1 -c16 -d" + d + " -H 'Connection: close' http://127.0.0.1:8080/f")
	out, err := exec.Command("ip", "netns", "exec", ns.Name, "wrk", "-t1", "-c"+strconv.Itoa(wrkClients), "-d"+d,
		"-H", "Connection: close", "http://127.0.0.1:8080/f").CombinedOutput()
	if err != nil {
		return 0, 0, fmt.Errorf("wrk: %w: %s", err, out)
	}
	return parseWrk(string(out))
}

// parseWrk reads wrk's summary: "N requests in 5.00s"; socket errors
// other than none make the run invalid (nginx was not serving).
func parseWrk(out string) (int, float64, error) {
	m := wrkTotal.FindStringSubmatch(out)
	if m == nil {
		return 0, 0, fmt.Errorf("wrk printed no total:\n%s", out)
	}
	n, _ := strconv.Atoi(m[1])
	secs, _ := strconv.ParseFloat(m[2], 64)
	switch m[3] {
	case "us":
		secs /= 1e6
	case "ms":
		secs /= 1e3
	case "m":
		secs *= 60
	}
	if e := wrkErrs.FindStringSubmatch(out); e != nil && e[1] != "0" {
		return 0, 0, fmt.Errorf("wrk: %s connect errors:\n%s", e[1], out)
	}
	if n == 0 || secs <= 0 {
		return 0, 0, fmt.Errorf("wrk served nothing:\n%s", out)
	}
	return n, secs, nil
}
