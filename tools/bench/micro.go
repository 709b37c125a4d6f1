package main

import (
	"bufio"
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
)

// microSpec is one `go test -bench` invocation.
type microSpec struct {
	pkg, re   string
	benchtime string // "" : the configured one
}

// microSpecs are the micro-benchmarks of the report, per stage of the
// pipeline: decode, decode + aggregate (the hot path of `tracer serve`),
// aggregate alone, findings, snapshot, Prometheus collect, stream
// formatting, record encode; and the memory of 1 M tracked connections.
var microSpecs = []microSpec{
	{pkg: "./internal/probe", re: "^(BenchmarkDecode|BenchmarkRecordPath|BenchmarkDecodeAggregate)$"},
	{pkg: "./internal/aggregate", re: "^(BenchmarkAggregatorApply|BenchmarkFindings10kProcesses|BenchmarkSnapshot10kProcesses)$"},
	{pkg: "./internal/export", re: "^(BenchmarkScrape10kProcesses|BenchmarkPrint)$"},
	{pkg: "./internal/record", re: "^BenchmarkWriteConnClosed$"},
	// One iteration: RSS grows only on the first (see the benchmark).
	{pkg: "./internal/aggregate", re: "^BenchmarkTrackedConnectionMemory$", benchtime: "1x"},
}

// microSection runs the micro-benchmarks on one core (-cpu 1: the targets
// are per core) with -benchmem.
func (b *bench) microSection(ctx context.Context) error {
	for _, s := range microSpecs {
		bt := s.benchtime
		if bt == "" {
			bt = b.cfg.benchtime
		}
		args := []string{"test", "-run", "^$", "-bench", s.re, "-benchmem", "-benchtime", bt, "-cpu", "1", "-count", "1", s.pkg}
		b.command("go " + strings.Join(args, " "))
		cmd := exec.CommandContext(ctx, "go", args...)
		cmd.Dir = b.root
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, out)
		}
		rs, err := parseBench(s.pkg, string(out))
		if err != nil {
			return err
		}
		for _, r := range rs {
			b.logf("micro %s %s: %v", r.Package, r.Name, r.Metrics)
			if r.Name == "TrackedConnectionMemory" {
				if b.res.Memory == nil {
					b.res.Memory = &MemorySummary{}
				}
				b.res.Memory.HeapPerConn = r.Metrics["heap-bytes/conn"]
				b.res.Memory.RSSPerConn = r.Metrics["rss-bytes/conn"]
			}
		}
		b.res.Micro = append(b.res.Micro, rs...)
	}
	return nil
}

// parseBench reads the result lines of `go test -bench` output:
// "BenchmarkName[-N] iterations value unit [value unit]...".
func parseBench(pkg, out string) ([]MicroResult, error) {
	var rs []MicroResult
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") || len(f)%2 != 0 {
			continue
		}
		iters, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			continue
		}
		name := strings.TrimPrefix(f[0], "Benchmark")
		if i := strings.LastIndexByte(name, '-'); i > 0 {
			if _, err := strconv.Atoi(name[i+1:]); err == nil {
				name = name[:i]
			}
		}
		r := MicroResult{Package: pkg, Name: name, Iters: iters, Metrics: map[string]float64{}}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				return nil, fmt.Errorf("benchmark line %q: %w", sc.Text(), err)
			}
			r.Metrics[f[i+1]] = v
		}
		rs = append(rs, r)
	}
	if len(rs) == 0 {
		return nil, fmt.Errorf("no benchmark results in the output of %s:\n%s", pkg, out)
	}
	return rs, nil
}
