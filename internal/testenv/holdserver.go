package testenv

import (
	"encoding/binary"
	"io"
	"net"
	"os"
	"sync"
	"testing"
)

// StartHoldServer starts a server named comm in ns that answers like
// StartServer's but never closes a connection, not even after the
// client's FIN: each socket it accepted stays in CLOSE_WAIT once the client
// closes, until the server stops with the test. It is the application
// that forgets to close.
func StartHoldServer(t testing.TB, ns *NetNS, comm string) *Server {
	t.Helper()
	return startServer(t, ns, comm, "hold-server")
}

func runHoldServer() error {
	l4, l6, err := listenLoopback()
	if err != nil {
		return err
	}
	var (
		mu   sync.Mutex
		held []net.Conn
	)
	serve := func(l net.Listener) {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
			go func() {
				var hdr [HeaderBytes]byte
				if _, err := io.ReadFull(c, hdr[:]); err != nil {
					return
				}
				req := binary.LittleEndian.Uint32(hdr[0:])
				resp := binary.LittleEndian.Uint32(hdr[4:])
				if _, err := io.CopyN(io.Discard, c, int64(req)); err != nil {
					return
				}
				if _, err := c.Write(make([]byte, resp)); err != nil {
					return
				}
				// Read to the client's FIN, and then do nothing.
				_, _ = io.Copy(io.Discard, c)
			}()
		}
	}
	go serve(l4)
	go serve(l6)
	_, _ = io.Copy(io.Discard, os.Stdin)
	l4.Close()
	l6.Close()
	mu.Lock()
	defer mu.Unlock()
	for _, c := range held {
		c.Close()
	}
	return nil
}
