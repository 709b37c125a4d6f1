package testenv

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// ChurnResult is what one run of the churn workload measured.
type ChurnResult struct {
	Conns   int     `json:"conns"`
	Seconds float64 `json:"seconds"`
	Failed  int     `json:"failed"`
	// CPUNs is the CPU time (user and system) the workload's process
	// spent, including the kernel's work on its behalf (syscalls, and the
	// loopback's softirq processing, which runs in the sender's context)
	// and so the BPF programs it triggered: unlike the machine's busy
	// time, other processes on a shared machine do not count in it.
	CPUNs int64 `json:"cpu_ns"`
}

// CPUPerConn is the workload process's CPU ns per connection.
func (r ChurnResult) CPUPerConn() float64 { return float64(r.CPUNs) / float64(r.Conns) }

// Rate is connections per second.
func (r ChurnResult) Rate() float64 { return float64(r.Conns) / r.Seconds }

// RunChurn runs the connection-churn workload in ns: a server that accepts
// and closes, and `clients` goroutines that connect, wait for the close and
// close, `total` connections in all, as fast as they can. Each connection
// makes about ten TCP state changes. The server closes first, so TIME_WAIT
// lands on its side and the clients never run out of ephemeral ports.
func RunChurn(t testing.TB, ns *NetNS, clients, total int) ChurnResult {
	t.Helper()
	var r ChurnResult
	runHelperJSON(t, ns.Command(helperBinary(t, "ctr-churn"), "-test.run=^$"), "churn workload", ChurnEnv(clients, total), &r)
	if r.Failed > 0 {
		t.Fatalf("churn: %d of %d connections failed", r.Failed, r.Conns)
	}
	return r
}

// ChurnEnv is the environment that makes a binary calling MaybeRunHelper
// run the churn workload (clients, total as for RunChurn) and print its
// ChurnResult as JSON: how tools/bench runs the same workload outside a
// test.
func ChurnEnv(clients, total int) []string {
	return []string{helperEnv + "=churn", planEnv + "=" + fmt.Sprintf("%d %d", clients, total)}
}

func runChurn() error {
	f := strings.Fields(os.Getenv(planEnv))
	if len(f) != 2 {
		return fmt.Errorf("churn plan %q: want \"clients total\"", os.Getenv(planEnv))
	}
	clients, err1 := strconv.Atoi(f[0])
	total, err2 := strconv.Atoi(f[1])
	if err1 != nil || err2 != nil || clients < 1 || total < clients {
		return fmt.Errorf("churn plan %q: bad numbers", os.Getenv(planEnv))
	}
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	addr := l.Addr().String()
	var failed atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for i := 0; i < clients; i++ {
		n := total / clients
		if i < total%clients {
			n++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			var buf [1]byte
			for j := 0; j < n; j++ {
				c, err := net.Dial("tcp4", addr)
				if err != nil {
					failed.Add(1)
					continue
				}
				// Wait for the server's FIN, then close.
				_, _ = io.ReadFull(c, buf[:])
				c.Close()
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return fmt.Errorf("getrusage: %w", err)
	}
	return json.NewEncoder(os.Stdout).Encode(ChurnResult{
		Conns: total, Seconds: elapsed, Failed: int(failed.Load()),
		CPUNs: ru.Utime.Nano() + ru.Stime.Nano(),
	})
}
