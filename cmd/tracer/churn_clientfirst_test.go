package main

import (
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"
)

// clientFirstChurn makes total short loopback connections inside the
// namespace at nsPath from workers threads, each client closing first (the
// pattern that lost records: the peer's ACK and FIN reach the client in
// one softirq, two state changes, the second its CLOSE). Each thread
// enters the namespace on a locked OS thread it never gives back (it ends
// with its goroutine), and works with raw system calls so that every
// socket is created there. It returns the connections made.
func clientFirstChurn(t *testing.T, nsPath string, workers, total int) int {
	t.Helper()
	inNS := func() error {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		f, err := os.Open(nsPath)
		if err != nil {
			return err
		}
		defer f.Close()
		return unix.Setns(int(f.Fd()), unix.CLONE_NEWNET)
	}
	type listening struct {
		fd   int
		port int
		err  error
	}
	ready := make(chan listening, 1)
	acceptDone := make(chan struct{})
	go func() {
		defer close(acceptDone)
		var l listening
		defer func() {
			if l.err != nil {
				ready <- l
			}
		}()
		if l.err = inNS(); l.err != nil {
			return
		}
		if l.fd, l.err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0); l.err != nil {
			return
		}
		if l.err = unix.Bind(l.fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); l.err != nil {
			return
		}
		if l.err = unix.Listen(l.fd, 4096); l.err != nil {
			return
		}
		sa, err := unix.Getsockname(l.fd)
		if l.err = err; err != nil {
			return
		}
		l.port = sa.(*unix.SockaddrInet4).Port
		ready <- l
		for {
			c, _, err := unix.Accept4(l.fd, unix.SOCK_CLOEXEC)
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				return // shut down
			}
			// Wait for the client's FIN, then close: the client closes first.
			var b [1]byte
			unix.Read(c, b[:])
			unix.Close(c)
		}
	}()
	l := <-ready
	if l.err != nil {
		t.Fatalf("churn listener in %s: %v", nsPath, l.err)
	}
	var made atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := inNS(); err != nil {
				errs <- err
				return
			}
			to := &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}, Port: l.port}
			for i := w; i < total; i += workers {
				fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
				if err != nil {
					errs <- err
					return
				}
				err = unix.Connect(fd, to)
				unix.Close(fd)
				if err != nil {
					errs <- fmt.Errorf("connect %d: %w", i, err)
					return
				}
				made.Add(1)
			}
		}()
	}
	wg.Wait()
	unix.Shutdown(l.fd, unix.SHUT_RDWR) // wakes the blocked accept
	<-acceptDone
	unix.Close(l.fd)
	close(errs)
	for err := range errs {
		t.Fatalf("churn client: %v", err)
	}
	return int(made.Load())
}
