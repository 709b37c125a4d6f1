package main

import (
	"strings"
	"testing"

	"github.com/conntracer/conntracer/internal/testenv"
)

// TestTopFinWait2AgreesWithSS: a client closes connections that its
// server never closes; the client's sockets sit in FIN_WAIT2, orphaned
// (no file descriptor left), and top's FIN_WAIT2 count for the client
// equals `ss -tan state fin-wait-2` in the namespace (it showed 0).
func TestTopFinWait2AgreesWithSS(t *testing.T) {
	testenv.RequireRoot(t)
	ns := testenv.NewNetNS(t)
	srv := testenv.StartHoldServer(t, ns, "ctr-fw2-srv")
	r := startTop(t, "--interval", "3s", "--netns", ns.Name)
	var plan []testenv.Conn
	for range 15 {
		plan = append(plan, testenv.Conn{Addr: srv.Addr4(), Req: 10, Resp: 10, Mode: testenv.ClientCloses})
	}
	client := testenv.RunClient(t, ns, "ctr-fw2-client", plan)
	d := r.wait(t)
	kernel := 0
	for _, l := range strings.Split(ns.Output(t, "ss", "-tanH", "state", "fin-wait-2"), "\n") {
		if strings.TrimSpace(l) != "" {
			kernel++
		}
	}
	if kernel != 15 {
		t.Fatalf("ss shows %d FIN-WAIT-2 sockets, want 15 (the server never closes)", kernel)
	}
	p := procByPID(d, client.PID)
	if p == nil {
		t.Fatalf("client %d missing from the document", client.PID)
	}
	if got := p.States["FIN_WAIT2"]; got != uint32(kernel) {
		t.Errorf("client's FIN_WAIT2: top %d, ss state fin-wait-2 %d (states %v)", got, kernel, p.States)
	}
}
