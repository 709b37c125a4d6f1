package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// proc is a child process the harness started (a tracer, bpftrace): its
// output is drained by a goroutine, the last lines kept for error messages.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has been waited for
	err  error         // Wait's result, valid after done

	mu   sync.Mutex
	tail []string // last lines of output
	all  strings.Builder
	keep bool // keep all output (bpftrace's maps at exit)
}

// startProc starts cmd and waits until ready returns true for a line of
// its output (stdout and stderr together), the process exits, or timeout.
// The process is stopped by the harness's cleanup if the caller does not
// stop it first.
func (b *bench) startProc(ctx context.Context, name string, cmd *exec.Cmd, ready func(string) bool, timeout time.Duration) (*proc, error) {
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("%s: pipe: %w", name, err)
	}
	cmd.Stdout, cmd.Stderr = pw, pw
	// If the harness dies without cleaning up (SIGKILL), its children go
	// with it. Ctrl-C reaches them anyway (same process group).
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	b.logf("$ %s", strings.Join(cmd.Args, " "))
	if err := cmd.Start(); err != nil {
		pr.Close()
		pw.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	pw.Close()
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	b.onCleanup(func() { p.stop() })
	readyc := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		signalled := false
		for sc.Scan() {
			line := sc.Text()
			p.mu.Lock()
			if p.keep {
				p.all.WriteString(line + "\n")
			}
			p.tail = append(p.tail, line)
			if len(p.tail) > 20 {
				p.tail = p.tail[1:]
			}
			p.mu.Unlock()
			if !signalled && ready(line) {
				signalled = true
				close(readyc)
			}
		}
		pr.Close()
		p.err = cmd.Wait()
		close(p.done)
	}()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-readyc:
		return p, nil
	case <-p.done:
		return nil, fmt.Errorf("%s exited before it was ready (%v):\n%s", name, p.err, p.Tail())
	case <-t.C:
		p.stop()
		return nil, fmt.Errorf("%s not ready after %v:\n%s", name, timeout, p.Tail())
	case <-ctx.Done():
		p.stop()
		return nil, ctx.Err()
	}
}

// Tail returns the last lines of output.
func (p *proc) Tail() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.tail, "\n")
}

// Output returns everything printed since keepOutput.
func (p *proc) Output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.all.String()
}

// keepOutput starts keeping all output, not only the tail.
func (p *proc) keepOutput() {
	p.mu.Lock()
	p.keep = true
	p.mu.Unlock()
}

// PID is the process id.
func (p *proc) PID() int { return p.cmd.Process.Pid }

// stop asks the process to exit (SIGINT, after SIGCONT in case it was
// stopped), kills it after 10 s, and waits. Idempotent.
func (p *proc) stop() error {
	select {
	case <-p.done:
		return p.exitErr()
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGCONT)
	_ = p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("%s did not stop within 10 s of SIGINT: killed", p.name)
	}
	return p.exitErr()
}

func (p *proc) exitErr() error {
	var ee *exec.ExitError
	if p.err == nil || (errors.As(p.err, &ee) && ee.Exited() && ee.ExitCode() == 0) {
		return nil
	}
	// Killed by our own SIGINT counts as a clean stop.
	if errors.As(p.err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == os.Interrupt {
			return nil
		}
	}
	return fmt.Errorf("%s: %v:\n%s", p.name, p.err, p.Tail())
}

// clockTick is the unit of /proc/PID/stat's CPU times (USER_HZ, 100 on
// every Linux architecture the tracer supports).
const clockTick = 0.01

// cpuSeconds is the process's CPU time so far (utime + stime), 0 for no
// process (the baseline) or one already gone: the variant's own cost,
// which survives the load of a shared machine better than its wall-clock
// rate.
func (p *proc) cpuSeconds() float64 {
	if p == nil {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.PID()))
	if err != nil {
		return 0
	}
	return parseStatCPU(string(b))
}

// parseStatCPU returns utime + stime of a /proc/PID/stat line in
// seconds; the command name (field 2) may hold spaces and parentheses,
// so the fields are counted from its last ')'.
func parseStatCPU(stat string) float64 {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(stat[i+1:])
	if len(f) < 13 {
		return 0
	}
	var utime, stime float64
	fmt.Sscan(f[11], &utime)
	fmt.Sscan(f[12], &stime)
	return (utime + stime) * clockTick
}
