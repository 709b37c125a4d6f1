package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/conntracer/conntracer/internal/privdrop"
	"github.com/conntracer/conntracer/internal/testenv"
)

// TestServeDropsPrivilegesAndStillFollowsNewNamespaces: a running `tracer
// serve` has, on every thread, only privdrop.Kept in its effective,
// permitted and bounding sets and NoNewPrivs 1; and with what it kept it
// still follows a network namespace created after start-up and counts its
// connections exactly.
func TestServeDropsPrivilegesAndStillFollowsNewNamespaces(t *testing.T) {
	testenv.RequireRoot(t)
	p := startServeProc(t, "--sample-interval", "200ms", "--reconcile-interval", "500ms", "--unix-interval", "0")
	testenv.WaitFor(t, 10*time.Second, "the tracer says it dropped its privileges", func() (bool, string) {
		return strings.Contains(p.stderr.String(), "no_new_privs set"), p.stderr.String()
	})
	var keep uint64
	for _, k := range privdrop.Kept {
		keep |= 1 << k.Cap
	}
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", p.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		st, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/status", p.cmd.Process.Pid, task.Name()))
		if err != nil {
			continue // the thread exited
		}
		fields := map[string]string{}
		for _, line := range strings.Split(string(st), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok {
				fields[k] = strings.TrimSpace(v)
			}
		}
		for _, set := range []string{"CapEff", "CapPrm", "CapBnd", "CapInh", "CapAmb"} {
			v, err := strconv.ParseUint(fields[set], 16, 64)
			if err != nil {
				t.Fatalf("thread %s %s %q: %v", task.Name(), set, fields[set], err)
			}
			if v&^keep != 0 {
				t.Errorf("thread %s: %s %#x holds capabilities beyond the kept %#x (e.g. CAP_BPF is bit %d)", task.Name(), set, v, keep, unix.CAP_BPF)
			}
		}
		if fields["NoNewPrivs"] != "1" {
			t.Errorf("thread %s: NoNewPrivs %q, want 1", task.Name(), fields["NoNewPrivs"])
		}
	}
	if eff, _ := strconv.ParseUint(p.status(t, "CapEff"), 16, 64); eff != keep {
		t.Errorf("CapEff %#x, want exactly the kept %#x (root has them all)", eff, keep)
	}

	// A namespace created after the drop, with traffic in it.
	ns := testenv.NewNetNS(t)
	srv := testenv.StartServer(t, ns, "ctpdsrv")
	const conns = 40
	var plan []testenv.Conn
	for range conns {
		plan = append(plan, testenv.Conn{Addr: srv.Addr4(), Req: 100, Resp: 1000, Mode: testenv.ClientCloses})
	}
	c := testenv.StartClient(t, ns, "ctpdcli", plan)
	c.Release(t)
	for _, res := range c.Results {
		if res.Err != "" {
			t.Fatalf("client: %s", res.Err)
		}
	}
	sum := func(name string, labels ...string) float64 { return metricsSum(t, p.addr, name, labels...) }
	testenv.WaitFor(t, 15*time.Second, "connections of the new namespace counted", func() (bool, string) {
		a := sum("conntracer_connections_closed_total", `comm="ctpdcli"`, `role="active"`)
		s := sum("conntracer_connections_closed_total", `comm="ctpdsrv"`, `role="passive"`)
		return a == conns && s == conns, fmt.Sprintf("active %v, passive %v, want %d each", a, s, conns)
	})
	// The kernel's own view of the new namespace needs setns (kept
	// CAP_SYS_ADMIN) and /proc/PID/ns/net (kept CAP_SYS_PTRACE): the
	// TIME_WAIT count is reconciled with a sock_diag dump taken inside it.
	// The client closed first: each of its sockets waits in TIME_WAIT.
	tw := fmt.Sprintf(`netns="%d"`, ns.Inode)
	testenv.WaitFor(t, 15*time.Second, "TIME_WAIT of the new namespace from its sock_diag dump", func() (bool, string) {
		v := sum("conntracer_time_wait_sockets", tw)
		return v == conns, fmt.Sprintf("conntracer_time_wait_sockets{%s} %v, want %d; stderr: %s", tw, v, conns, p.stderr)
	})
}

// fileCaps is the README's setcap line; imageCaps deploy/Dockerfile's,
// which adds cap_sys_resource (needed only before Linux 5.11) and leaves
// the effective bit off, so that the image still runs where the runtime
// does not grant it: the tracer raises what it was given
// (privdrop.RaiseEffective). This host cannot grant it (no
// CAP_SYS_RESOURCE in its bounding set): with +ep exec would fail.
const (
	fileCaps  = "cap_bpf,cap_perfmon,cap_sys_admin,cap_net_admin,cap_sys_ptrace,cap_dac_read_search,cap_setpcap+ep"
	imageCaps = "cap_bpf,cap_perfmon,cap_sys_admin,cap_net_admin,cap_sys_ptrace,cap_dac_read_search,cap_sys_resource,cap_setpcap+p"
)

// TestNonRootTracer runs the tracer as uid 65534 with capabilities given
// as ambient ones (what file capabilities on the binary give it at exec).
// With the minimal set the README names, every hook attaches. Without
// CAP_DAC_READ_SEARCH, tracefs (mounted mode 0700 here) is unreadable and
// the hooks that need it say so: not "tracefs is not mounted", and no
// attempt to mount it again (EBUSY with CAP_SYS_ADMIN).
func TestNonRootTracer(t *testing.T) {
	testenv.RequireRoot(t) // to become someone else
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	runAs := func(caps string) string {
		t.Helper()
		cmd := exec.Command("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
			"--inh-caps="+caps, "--ambient-caps="+caps, self)
		cmd.Env = append(os.Environ(), runMainEnv+"=--duration 1s")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("tracer as uid 65534 with %s: %v\n%s", caps, err, out)
		}
		return string(out)
	}
	t.Run("minimal capabilities", func(t *testing.T) {
		out := runAs("+bpf,+perfmon,+sys_admin,+net_admin,+sys_ptrace,+dac_read_search")
		// The best mode of each hook as root gets it: where the kernel
		// lacks bpf_get_current_task_btf (5.10, its note says so) the
		// TCP state hook's is raw_tp and connect() runs its compat
		// variant on the entry and the exit.
		state, connect := "sock/inet_sock_set_state=tp_btf", "syscalls/sys_exit_connect=tracepoint"
		if strings.Contains(out, "cannot call bpf_get_current_task_btf") {
			state = "sock/inet_sock_set_state=raw_tp"
		}
		if strings.Contains(out, "(compat variant)") {
			connect = "syscalls/sys_{enter,exit}_connect=tracepoint"
		}
		for _, want := range []string{state, "syscalls/sys_exit_accept4=tracepoint", connect, "no_new_privs set"} {
			if !strings.Contains(out, want) {
				t.Errorf("output does not say %q:\n%s", want, out)
			}
		}
	})
	for _, caps := range []string{fileCaps, imageCaps} {
		t.Run("file capabilities "+caps[strings.LastIndexByte(caps, '+'):], func(t *testing.T) {
			// What the README and the container image do: capabilities
			// on the binary, a non-root user, nothing inherited.
			testenv.RequireTool(t, "setcap")
			dir := t.TempDir()
			if err := os.Chmod(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			bin := filepath.Join(dir, "tracer")
			if out, err := exec.Command("cp", self, bin).CombinedOutput(); err != nil {
				t.Fatalf("cp: %v %s", err, out)
			}
			if out, err := exec.Command("setcap", caps, bin).CombinedOutput(); err != nil {
				t.Fatalf("setcap: %v %s", err, out)
			}
			cmd := exec.Command("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", bin)
			cmd.Env = append(os.Environ(), runMainEnv+"=--duration 1s")
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("tracer with file capabilities %s as uid 65534: %v\n%s", caps, err, out)
			}
			for _, want := range []string{"sock/inet_sock_set_state=tp_btf", "syscalls/sys_exit_accept4=tracepoint", "no_new_privs set"} {
				if !strings.Contains(string(out), want) {
					t.Errorf("output does not say %q:\n%s", want, out)
				}
			}
		})
	}
	t.Run("tracefs unreadable", func(t *testing.T) {
		st, err := os.Stat("/sys/kernel/tracing")
		if err != nil || st.Mode().Perm()&0o005 == 0o005 {
			t.Skipf("tracefs at /sys/kernel/tracing is readable by others here (%v, %v): nothing to diagnose", st, err)
		}
		out := runAs("+bpf,+perfmon,+sys_admin")
		if !strings.Contains(out, "syscalls/sys_exit_accept4=off (tracefs is mounted at /sys/kernel/tracing") ||
			!strings.Contains(out, "not readable by uid 65534: run as root, grant CAP_DAC_READ_SEARCH") {
			t.Errorf("the accept hook's reason is not the unreadable tracefs:\n%s", out)
		}
		for _, wrong := range []string{"not mounted", "EBUSY", "device or resource busy"} {
			if strings.Contains(out, wrong) {
				t.Errorf("output says %q:\n%s", wrong, out)
			}
		}
	})
}
