// Command bench is `make bench`: it measures what the tracer costs the box
// it watches and writes BENCHMARKS.md. Sections: micro-benchmarks (go test
// -bench), the churn workload A/B against `tracer serve`, `tracer serve
// --record` and a bpftrace peer, the Unix-socket overload A/B, the event
// storm, and memory. The machine it runs on is assumed shared and noisy:
// every end-to-end figure is a median of ratios of interleaved runs.
//
// The workloads are testenv's helpers: this binary re-executed under a
// chosen name (MaybeRunHelper), inside namespaces the harness creates and
// deletes, on failure and Ctrl-C too.
//
// Run it as root from the repository root; BENCH_QUICK=1 (or --quick)
// uses small counts to debug the harness, and the report says so.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/conntracer/conntracer/internal/testenv"
)

func main() {
	testenv.MaybeRunHelper() // the workloads are this binary
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// config is what the flags decide.
type config struct {
	quick      bool
	out        string
	jsonOut    string
	render     string
	tracer     string
	sections   []string
	rounds     int
	conns      int
	unixPairs  int
	unixRun    time.Duration
	stormStep  time.Duration
	benchtime  string
	settle     time.Duration
	idle       time.Duration
	wrkRun     time.Duration
	installDep bool
}

var allSections = []string{"micro", "churn", "nginx", "unix", "storm", "memory"}

func parseFlags(args []string, stderr io.Writer) (*config, error) {
	fs := pflag.NewFlagSet("bench", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	quick := os.Getenv("BENCH_QUICK") == "1"
	c := &config{}
	fs.BoolVar(&c.quick, "quick", quick, "small counts to debug the harness (also BENCH_QUICK=1); the report says so")
	fs.StringVar(&c.out, "out", "BENCHMARKS.md", "the report to write")
	fs.StringVar(&c.jsonOut, "json", "", "also write the raw results as JSON to this file")
	fs.StringVar(&c.render, "render", "", "measure nothing: render the report from this JSON results file")
	fs.StringVar(&c.tracer, "tracer", "", "the tracer binary to measure (default: built from ./cmd/tracer once)")
	fs.StringSliceVar(&c.sections, "sections", allSections, "sections to run: "+strings.Join(allSections, ","))
	fs.IntVar(&c.rounds, "rounds", 0, "churn rounds (each: every variant once; ratios pair a variant with its round's baseline); default 7, quick 3")
	fs.IntVar(&c.conns, "conns", 0, "connections per churn run; default 20000, quick 4000")
	fs.IntVar(&c.unixPairs, "unix-pairs", 0, "Unix overload A/B pairs; default 7, quick 3")
	fs.DurationVar(&c.unixRun, "unix-run", 0, "length of one Unix overload run; default 700ms, quick 300ms")
	fs.DurationVar(&c.stormStep, "storm-step", 0, "length of one event-storm step; default 1s, quick 500ms")
	fs.StringVar(&c.benchtime, "benchtime", "", "go test -benchtime of the micro-benchmarks; default 1s, quick 200ms")
	fs.DurationVar(&c.settle, "settle", 0, "wait after a tracer is ready before measuring; default 1s, quick 300ms")
	fs.DurationVar(&c.wrkRun, "wrk-run", 0, "length of one nginx + wrk run; default 5s, quick 2s")
	fs.DurationVar(&c.idle, "idle", 0, "how long `tracer serve` idles before its memory is read; default 6s, quick 2s")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	def := func(v *int, full, q int) {
		if *v == 0 {
			*v = full
			if c.quick {
				*v = q
			}
		}
	}
	defD := func(v *time.Duration, full, q time.Duration) {
		if *v == 0 {
			*v = full
			if c.quick {
				*v = q
			}
		}
	}
	def(&c.rounds, 7, 3)
	def(&c.conns, 20000, 4000)
	def(&c.unixPairs, 7, 3)
	defD(&c.unixRun, 700*time.Millisecond, 300*time.Millisecond)
	defD(&c.stormStep, time.Second, 500*time.Millisecond)
	defD(&c.settle, time.Second, 300*time.Millisecond)
	defD(&c.idle, 6*time.Second, 2*time.Second)
	defD(&c.wrkRun, 5*time.Second, 2*time.Second)
	if c.benchtime == "" {
		c.benchtime = "1s"
		if c.quick {
			c.benchtime = "200ms"
		}
	}
	for _, s := range c.sections {
		if !contains(allSections, s) {
			return nil, fmt.Errorf("--sections: unknown section %q (known: %s)", s, strings.Join(allSections, ","))
		}
	}
	return c, nil
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if x == y {
			return true
		}
	}
	return false
}

// nsName matches the harness's namespace names (netns.go).
var nsName = regexp.MustCompile(nsPrefix + `[0-9]+-[0-9]+`)

// bench is one run of the harness: configuration, results so far, and
// the undo list that cleanup runs whatever happens.
type bench struct {
	cfg    *config
	res    *Results
	root   string // repository root (go.mod)
	dir    string // scratch directory
	self   string // this binary, re-executed as the workloads
	tracer string // the tracer binary
	log    io.Writer

	mu       sync.Mutex
	cleanups []func()
}

func (b *bench) onCleanup(f func()) {
	b.mu.Lock()
	b.cleanups = append(b.cleanups, f)
	b.mu.Unlock()
}

// cleanup runs the undo list, last registered first.
func (b *bench) cleanup() {
	b.mu.Lock()
	cs := b.cleanups
	b.cleanups = nil
	b.mu.Unlock()
	for i := len(cs) - 1; i >= 0; i-- {
		cs[i]()
	}
}

func (b *bench) logf(format string, args ...any) {
	fmt.Fprintf(b.log, "bench: "+format+"\n", args...)
}

// command notes a command line for the report, once, with the names of
// this run's namespaces replaced by NETNS.
func (b *bench) command(line string) {
	line = nsName.ReplaceAllString(line, "NETNS")
	b.logf("$ %s", line)
	if !contains(b.res.Commands, line) {
		b.res.Commands = append(b.res.Commands, line)
	}
}

func run(ctx context.Context, args []string, stderr io.Writer) error {
	cfg, err := parseFlags(args, stderr)
	if errors.Is(err, pflag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	if cfg.render != "" {
		raw, err := os.ReadFile(cfg.render)
		if err != nil {
			return fmt.Errorf("--render: %w", err)
		}
		var res Results
		if err := json.Unmarshal(raw, &res); err != nil {
			return fmt.Errorf("--render %s: %w", cfg.render, err)
		}
		return writeReport(cfg.out, Render(&res))
	}
	if os.Geteuid() != 0 {
		return errors.New("the end-to-end sections load BPF programs and create network namespaces: run as root (sudo make bench)")
	}
	for _, tool := range []string{"ip", "go"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s not found: install it (make test-deps installs iproute2)", tool)
		}
	}
	if contains(cfg.sections, "churn") || contains(cfg.sections, "nginx") {
		if _, err := exec.LookPath("bpftrace"); err != nil {
			return errors.New("bpftrace not found: `make bench` installs Debian's bpftrace, or apt-get install bpftrace")
		}
		if _, err := exec.LookPath("tcplife"); err != nil {
			return errors.New("tcplife not found: `make bench` installs Debian's libbpf-tools, or apt-get install libbpf-tools")
		}
	}
	if contains(cfg.sections, "nginx") {
		for _, tool := range []string{"nginx", "wrk"} {
			if _, err := exec.LookPath(tool); err != nil {
				return fmt.Errorf("%s not found: `make bench` installs Debian's nginx-light and wrk, or apt-get install nginx-light wrk", tool)
			}
		}
	}
	b := &bench{cfg: cfg, log: stderr, res: &Results{Quick: cfg.quick, Started: time.Now().UTC(), Errors: map[string]string{}, SectionSeconds: map[string]float64{}}}
	deleteStale()
	if b.dir, err = os.MkdirTemp("", fmt.Sprintf("%s%d-", scratchPrefix, os.Getpid())); err != nil {
		return err
	}
	// Runs after cleanup (deferred calls run last first): the tracers
	// and helpers run from this directory.
	defer os.RemoveAll(b.dir)
	defer b.cleanup()
	if b.self, err = os.Executable(); err != nil {
		return fmt.Errorf("find this binary: %w", err)
	}
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil || strings.TrimSpace(string(out)) == "" || strings.TrimSpace(string(out)) == os.DevNull {
		return errors.New("run from the conntracer repository (go env GOMOD is empty)")
	}
	b.root = filepath.Dir(strings.TrimSpace(string(out)))
	b.res.Machine = machine()
	b.res.IdleSeconds = cfg.idle.Seconds()

	b.tracer = cfg.tracer
	if b.tracer == "" {
		b.tracer = filepath.Join(b.dir, "tracer")
		b.command("go build -o TRACER ./cmd/tracer")
		cmd := exec.CommandContext(ctx, "go", "build", "-o", b.tracer, "./cmd/tracer")
		cmd.Dir = b.root
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("build the tracer: %w\n%s", err, out)
		}
	}
	sections := map[string]func(context.Context) error{
		"micro": b.microSection, "churn": b.churnSection, "nginx": b.nginxSection, "unix": b.unixSection,
		"storm": b.stormSection, "memory": b.memorySection,
	}
	start := time.Now()
	for _, name := range allSections {
		if !contains(cfg.sections, name) {
			continue
		}
		b.logf("section %s (%.0f s so far)", name, time.Since(start).Seconds())
		t0 := time.Now()
		err := sections[name](ctx)
		b.res.SectionSeconds[name] = time.Since(t0).Seconds()
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("interrupted during %s: nothing written", name)
			}
			b.logf("section %s failed: %v", name, err)
			b.res.Errors[name] = err.Error()
		}
		// Whatever a section left running goes before the next one.
		b.cleanup()
	}
	b.res.Elapsed = time.Since(start).Seconds()
	if cfg.jsonOut != "" {
		js, _ := json.MarshalIndent(b.res, "", "  ")
		if err := os.WriteFile(cfg.jsonOut, js, 0o644); err != nil {
			return err
		}
	}
	if err := writeReport(cfg.out, Render(b.res)); err != nil {
		return err
	}
	b.logf("wrote %s in %.0f s", cfg.out, b.res.Elapsed)
	if len(b.res.Errors) > 0 {
		return fmt.Errorf("%d sections failed (see %s)", len(b.res.Errors), cfg.out)
	}
	return nil
}
