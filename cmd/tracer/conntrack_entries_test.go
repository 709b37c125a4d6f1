package main

import (
	"fmt"
	"maps"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/conntracer/conntracer/internal/events"
	"github.com/conntracer/conntracer/internal/testenv"
	"github.com/conntracer/conntracer/internal/top"
)

// ctEntriesRule makes conntrack track the namespace's traffic.
const ctEntriesRule = `table inet ctrtest {
	chain out {
		type filter hook output priority 0;
		ct state new counter
	}
}`

// ctNS returns the document's conntrack object of namespace ino.
func ctNS(t *testing.T, d *top.Document, ino uint32) events.ConntrackNSSnapshot {
	t.Helper()
	for _, c := range d.Conntrack {
		if c.NetNS == ino {
			return c
		}
	}
	t.Fatalf("no conntrack object for netns %d in %+v", ino, d.Conntrack)
	return events.ConntrackNSSnapshot{}
}

// kernelEntriesOf counts, by TCP state, the entries of `conntrack -L`
// whose original source is one of the client's local addresses: the
// kernel's view of the entries that client's flows hold.
func kernelEntriesOf(list []testenv.CtEntry, c *testenv.Client) map[string]uint64 {
	locals := map[netip.AddrPort]bool{}
	for _, r := range c.Results {
		if r.Local != "" {
			locals[r.LocalAddrPort()] = true
		}
	}
	m := map[string]uint64{}
	for _, e := range list {
		if locals[e.OrigSrc] {
			m[e.State]++
		}
	}
	return m
}

func sum(m map[string]uint64) uint64 {
	var n uint64
	for _, v := range m {
		n += v
	}
	return n
}

func holdPlan(addr string, n int) []testenv.Conn {
	plan := make([]testenv.Conn, n)
	for i := range plan {
		plan[i] = testenv.Conn{Addr: addr, Req: 10, Resp: 10, Mode: testenv.ClientCloses, Hold: true}
	}
	return plan
}

// Conntrack entries per process, from ctnetlink events: in a fresh
// namespace where an nft ct rule makes conntrack track the traffic, two
// clients hold 7 and 3 connections to a server there, and UDP flows go
// nowhere. `tracer top` (conntrack entries: ctnetlink events) counts each
// client's entries, by conntrack TCP state, exactly as `conntrack -L` run
// in the namespace shows for that client's tuples, and the namespace's
// entries by state and protocol as the whole listing shows them. Then, in
// a second run that finds the connections open at start-up (its first
// dump), the clients close: their entries pass TIME_WAIT (1 s in this
// namespace), the kernel destroys them, and the DESTROY events bring both
// clients to zero, as conntrack -L agrees, with no event lost and no
// resync but the start-up one.
func TestConntrackEntriesPerProcess(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTool(t, "nft")
	testenv.RequireTool(t, "conntrack")
	ns := testenv.NewNetNS(t)
	testenv.NFT(t, ns, ctEntriesRule)
	ns.Output(t, "sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_timeout_time_wait=1")
	srv := testenv.StartServer(t, ns, "ctr-ct-server")
	netnsArg := fmt.Sprint(ns.Inode)

	r := startTop(t, "--interval", "4s", "--sample-interval", "500ms", "--netns-interval", "500ms", "--netns", netnsArg)
	if !strings.Contains(r.stderr.String(), "tracer: conntrack entries: ctnetlink events") {
		t.Errorf("start-up notes do not say the conntrack entry path:\n%s", r.stderr)
	}
	a := testenv.StartClient(t, ns, "ctr-ct-seven", holdPlan(srv.Addr4(), 7))
	b := testenv.StartClient(t, ns, "ctr-ct-three", holdPlan(srv.Addr4(), 3))
	testenv.SendUDP(t, ns, 30000, 10)
	d := r.wait(t)
	list := testenv.ConntrackList(t, ns)

	ct := ctNS(t, d, ns.Inode)
	procs := map[uint32]events.ProcessCount{}
	for _, p := range ct.TopProcesses {
		procs[p.PID] = p
	}
	for _, c := range []struct {
		cl   *testenv.Client
		comm string
		n    uint64
	}{{a, "ctr-ct-seven", 7}, {b, "ctr-ct-three", 3}} {
		want := kernelEntriesOf(list, c.cl)
		got := procs[uint32(c.cl.PID)]
		if sum(want) != c.n {
			t.Errorf("conntrack -L lists %v for %s's tuples, want %d ESTABLISHED", want, c.comm, c.n)
		}
		if got.Entries != sum(want) || got.Comm != c.comm || !maps.Equal(got.ByState, want) {
			t.Errorf("%s (pid %d): tracer %+v, conntrack -L %v", c.comm, c.cl.PID, got, want)
		}
	}
	kState, kProto := map[string]uint64{}, map[string]uint64{}
	for _, e := range list {
		kProto[e.Proto]++
		if e.State != "" {
			kState[e.State]++
		}
	}
	if ct.Tracked != uint64(len(list)) || !maps.Equal(ct.ByState, kState) || !maps.Equal(ct.ByProto, kProto) || kProto["udp"] != 10 {
		t.Errorf("namespace: tracer %d entries %v %v; conntrack -L %d entries %v %v",
			ct.Tracked, ct.ByState, ct.ByProto, len(list), kState, kProto)
	}
	if ct.Unattributed != kProto["udp"] {
		t.Errorf("%d entries unattributed, want the %d UDP flows", ct.Unattributed, kProto["udp"])
	}

	t.Run("destroy", func(t *testing.T) {
		r := startTop(t, "--interval", "5s", "--sample-interval", "500ms", "--netns-interval", "500ms", "--netns", netnsArg)
		a.Release(t)
		b.Release(t)
		// Expired entries are reaped by the kernel's garbage collector,
		// or by a listing: either way a DESTROY event each.
		deadline := time.Now().Add(3 * time.Second)
		var left map[string]uint64
		for time.Now().Before(deadline) {
			list := testenv.ConntrackList(t, ns)
			left = kernelEntriesOf(list, a)
			maps.Copy(left, kernelEntriesOf(list, b))
			if len(left) == 0 {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		if len(left) != 0 {
			t.Fatalf("conntrack -L still lists the clients' entries: %v", left)
		}
		d := r.wait(t)
		ct := ctNS(t, d, ns.Inode)
		for _, p := range ct.TopProcesses {
			if (p.PID == uint32(a.PID) || p.PID == uint32(b.PID)) && p.Entries != 0 {
				t.Errorf("after the clients closed, the tracer still counts %+v; conntrack -L lists none", p)
			}
		}
		if ct.Lost != 0 || ct.Resyncs != 1 {
			t.Errorf("lost %d, %d resyncs: the counts came down through a dump, not DESTROY events", ct.Lost, ct.Resyncs)
		}
		list := testenv.ConntrackList(t, ns)
		if ct.Tracked != uint64(len(list)) {
			t.Errorf("namespace: tracer %d entries, conntrack -L %d", ct.Tracked, len(list))
		}
	})
}
