package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/conntracer/conntracer/internal/kernel"
	"github.com/conntracer/conntracer/internal/testenv"
)

// nsPrefix names the harness's namespaces: ctr-bench-PID-N, so that a
// later run can delete what a killed one left behind (its PID is gone)
// without touching a concurrent run's.
const nsPrefix = "ctr-bench-"

var nsSeq atomic.Int64

// netns is a network namespace the harness created, loopback up.
type netns struct {
	Name  string
	Inode uint32
}

// newNetNS creates a namespace and registers its deletion.
func (b *bench) newNetNS() (*netns, error) {
	name := fmt.Sprintf("%s%d-%d", nsPrefix, os.Getpid(), nsSeq.Add(1))
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("ip netns add %s: %v: %s", name, err, out)
	}
	ns := &netns{Name: name}
	b.onCleanup(func() { ns.delete() })
	if out, err := exec.Command("ip", "-n", name, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("bring up lo in %s: %v: %s", name, err, out)
	}
	ino, err := kernel.NetNSByName(name)
	if err != nil {
		return nil, fmt.Errorf("namespace %s: %w", name, err)
	}
	ns.Inode = ino
	return ns, nil
}

// delete removes the namespace; idempotent.
func (n *netns) delete() {
	if _, err := os.Stat("/run/netns/" + n.Name); err == nil {
		_ = exec.Command("ip", "netns", "del", n.Name).Run()
	}
}

// scratchPrefix names the harness's scratch directories in $TMPDIR, with
// the PID as for namespaces.
const scratchPrefix = "conntracer-bench-"

// deleteStale removes the namespaces and scratch directories of earlier
// runs whose process is gone (killed before it could clean up).
func deleteStale() {
	gone := func(name, prefix string) bool {
		rest, ok := strings.CutPrefix(name, prefix)
		if !ok {
			return false
		}
		pidStr, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		return err == nil && pid != os.Getpid() && syscall.Kill(pid, 0) == syscall.ESRCH
	}
	ents, _ := os.ReadDir("/run/netns")
	for _, e := range ents {
		if gone(e.Name(), nsPrefix) {
			_ = exec.Command("ip", "netns", "del", e.Name()).Run()
		}
	}
	ents, _ = os.ReadDir(os.TempDir())
	for _, e := range ents {
		if e.IsDir() && gone(e.Name(), scratchPrefix) {
			_ = os.RemoveAll(filepath.Join(os.TempDir(), e.Name()))
		}
	}
}

// helperCmd runs this binary as a testenv helper named comm (the kernel
// takes a process's comm from the file it executes) inside ns.
func (b *bench) helperCmd(ns *netns, comm string, env []string) (*exec.Cmd, error) {
	path := filepath.Join(b.dir, comm)
	if _, err := os.Lstat(path); err != nil {
		if err := os.Symlink(b.self, path); err != nil {
			return nil, fmt.Errorf("helper %s: %w", comm, err)
		}
	}
	b.command(fmt.Sprintf("ip netns exec NETNS %s  # testenv helper %s", comm, strings.Join(env, " ")))
	cmd := exec.Command("ip", "netns", "exec", ns.Name, path)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd, nil
}

// runChurn runs testenv's churn workload in ns.
func (b *bench) runChurn(ns *netns, clients, total int) (testenv.ChurnResult, error) {
	var r testenv.ChurnResult
	cmd, err := b.helperCmd(ns, "ctr-churn", testenv.ChurnEnv(clients, total))
	if err != nil {
		return r, err
	}
	out, err := cmd.Output()
	if err != nil {
		return r, fmt.Errorf("churn workload: %w", err)
	}
	if err := json.Unmarshal(out, &r); err != nil {
		return r, fmt.Errorf("churn output %q: %w", out, err)
	}
	if r.Failed > 0 {
		return r, fmt.Errorf("churn: %d of %d connections failed", r.Failed, r.Conns)
	}
	return r, nil
}

// startConnects starts testenv's connect workload in ns; wait with
// connectsResult.
func (b *bench) startConnects(ns *netns, comm string, plan testenv.ConnectPlan) (*exec.Cmd, *strings.Builder, error) {
	env, err := testenv.ConnectsEnv(plan)
	if err != nil {
		return nil, nil, err
	}
	cmd, err := b.helperCmd(ns, comm, env)
	if err != nil {
		return nil, nil, err
	}
	out := &strings.Builder{}
	cmd.Stdout = out
	if err := cmd.Start(); err != nil {
		return nil, nil, fmt.Errorf("connect workload: %w", err)
	}
	return cmd, out, nil
}

func connectsResult(cmd *exec.Cmd, out *strings.Builder) (testenv.ConnectResult, error) {
	var r testenv.ConnectResult
	if err := cmd.Wait(); err != nil {
		return r, fmt.Errorf("connect workload: %w", err)
	}
	if err := json.Unmarshal([]byte(out.String()), &r); err != nil {
		return r, fmt.Errorf("connect workload output %q: %w", out.String(), err)
	}
	return r, nil
}

// runConnects runs the connect workload in ns and returns what it saw.
func (b *bench) runConnects(ns *netns, comm string, plan testenv.ConnectPlan) (testenv.ConnectResult, error) {
	cmd, out, err := b.startConnects(ns, comm, plan)
	if err != nil {
		return testenv.ConnectResult{}, err
	}
	return connectsResult(cmd, out)
}

// listenUnixIn listens on an abstract Unix name inside ns (abstract names
// belong to a namespace) with the given backlog, never accepting, and
// registers its closing. The socket is created on a thread switched into
// ns and back.
func (b *bench) listenUnixIn(ns *netns, name string, backlog int) error {
	type res struct {
		fd  int
		err error
	}
	ch := make(chan res, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			ch <- res{err: fmt.Errorf("open own netns: %w", err)}
			return
		}
		defer unix.Close(orig)
		target, err := unix.Open("/run/netns/"+ns.Name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			ch <- res{err: fmt.Errorf("open netns %s: %w", ns.Name, err)}
			return
		}
		defer unix.Close(target)
		if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			ch <- res{err: fmt.Errorf("enter netns %s: %w", ns.Name, err)}
			return
		}
		fd, err := listenUnix(name, backlog)
		// Back to where the thread was; a thread that cannot go back
		// stays locked and dies with this goroutine.
		if unix.Setns(orig, unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		ch <- res{fd, err}
	}()
	r := <-ch
	if r.err != nil {
		return r.err
	}
	b.onCleanup(func() { unix.Close(r.fd) })
	return nil
}

func listenUnix(name string, backlog int) (int, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("unix socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: name}); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("bind %s: %w", name, err)
	}
	if err := unix.Listen(fd, backlog); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("listen %s: %w", name, err)
	}
	return fd, nil
}
