package main

import (
	"github.com/conntracer/conntracer/internal/aggregate"
	"github.com/conntracer/conntracer/internal/export"

	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/conntracer/conntracer/internal/testenv"
)

// TestTopShowsConnectUnixAndDrops runs the scenarios of the connect and
// drop tests (connect_test.go, connect_tcp_test.go, drops_test.go in the
// internal/probe) under one `tracer top --once --output json`, and checks
// that the document's sections carry them, through the aggregator and the
// samplers that `tracer top` feeds it with:
//   - a Unix listener with backlog 1 that never accepts and a client
//     making non-blocking connects: the `unix` section's counts for that
//     caller equal what the client saw, the listener is sampled (this
//     process, queue over its limit), and an unix_backlog_overflow finding
//     names the path;
//   - an nft rule dropping SYNs in a fresh namespace where conntrack is
//     active: `drops` counts NETFILTER_DROP for that namespace and the
//     refused process, exactly as nft counts it, and `conntrack` shows no
//     conntrack drop there;
//   - connects refused in another namespace: `connect_failures` has the
//     client's pid with ECONNREFUSED counted exactly.
func TestTopShowsConnectUnixAndDrops(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTool(t, "nft")
	dropNS := testenv.NewNetNS(t)
	l := testenv.StartListener(t, dropNS, "ctr-listen", 128)
	testenv.NFT(t, dropNS, fmt.Sprintf(`table inet ctrtest {
	chain out {
		type filter hook output priority 0;
		ct state new counter
		tcp dport %d counter drop comment "ruledrop"
	}
}`, l.Port))
	refusedNS := testenv.NewNetNS(t)
	sock := filepath.Join(t.TempDir(), "full.sock")
	testenv.ListenUnix(t, sock, "stream", 1)

	r := startTop(t, "--interval", "6s", "--sample-interval", "500ms")
	r.skipWhereKernelLacks(t, "syscalls/sys_exit_connect")
	unixRes := testenv.RunConnects(t, nil, "ctr-unix-cli", testenv.ConnectPlan{Addr: sock, Count: 200, NonBlock: true})
	refused := testenv.RunConnects(t, refusedNS, "ctr-refused-b", testenv.ConnectPlan{Addr: "127.0.0.1:9", Count: 20})
	b := testenv.StartBurst(t, dropNS, "ctr-dropped", fmt.Sprintf("127.0.0.1:%d", l.Port), 5, 1500*time.Millisecond)
	if b.Connected != 0 {
		t.Fatalf("%d connects got through the drop rule", b.Connected)
	}
	b.Release(t) // no more SYN retransmissions
	ruleDrops := testenv.NFTCounter(t, dropNS, "ruledrop")
	d := r.wait(t)

	t.Run("unix backlog overflow", func(t *testing.T) {
		if unixRes.Errnos["EAGAIN"] == 0 {
			t.Fatalf("client saw %v, want EAGAIN failures", unixRes.Errnos)
		}
		var path *aggregate.UnixPathStats
		for i := range d.Unix {
			if d.Unix[i].Path == sock {
				path = &d.Unix[i]
			}
		}
		if path == nil {
			t.Fatalf("no unix entry for %s in %+v", sock, d.Unix)
		}
		var counts map[string]uint64
		for _, c := range path.Callers {
			if c.PID == uint32(unixRes.PID) && c.Comm == "ctr-unix-cli" {
				counts = c.Counts
			}
		}
		if len(counts) != len(unixRes.Errnos) {
			t.Errorf("caller %d counted %v, client saw %v", unixRes.PID, counts, unixRes.Errnos)
		}
		for k, v := range unixRes.Errnos {
			if counts[k] != uint64(v) {
				t.Errorf("caller %d counted %v, client saw %v", unixRes.PID, counts, unixRes.Errnos)
				break
			}
		}
		if path.ListenerPID != uint32(os.Getpid()) || path.Backlog != 1 || path.Queue <= path.Backlog {
			t.Errorf("listener pid %d backlog %d queue %d: want this process (%d), backlog 1, a full queue",
				path.ListenerPID, path.Backlog, path.Queue, os.Getpid())
		}
		f := findingOf(d, "unix_backlog_overflow", func(f *export.Finding) bool { return f.Path == sock })
		if f == nil || f.PID != uint32(unixRes.PID) || f.Evidence["eagain"] != float64(unixRes.Errnos["EAGAIN"]) {
			t.Errorf("unix_backlog_overflow for %s: %+v", sock, f)
		}
	})

	t.Run("rule drop", func(t *testing.T) {
		r.skipWithoutDropReasons(t)
		if ruleDrops == 0 {
			t.Fatal("nft counted no drops")
		}
		var n uint64
		for _, c := range d.Drops.ByReason {
			if c.NetNS != dropNS.Inode || c.Reason != "NETFILTER_DROP" {
				continue
			}
			n += c.Count
			if c.PID != uint32(b.PID) || c.Comm != "ctr-dropped" || c.NoConntrackEntry {
				t.Errorf("drop line %+v: want pid %d ctr-dropped, not a no-conntrack-entry drop", c, b.PID)
			}
		}
		if n != ruleDrops {
			t.Errorf("drops: NETFILTER_DROP in netns %d = %d, the nft rule counted %d (%+v)", dropNS.Inode, n, ruleDrops, d.Drops.ByReason)
		}
		for _, c := range d.Conntrack {
			if c.NetNS == dropNS.Inode && (c.ConntrackDrops != 0 || len(c.RefusedFlows) != 0) {
				t.Errorf("a rule's drop counted under conntrack: %+v", c)
			}
		}
		if f := findingOf(d, "conntrack_table_full", func(f *export.Finding) bool { return f.NetNS == dropNS.Inode }); f != nil {
			t.Errorf("a rule's drop reported as table full: %+v", f)
		}
	})

	t.Run("connect refused", func(t *testing.T) {
		if refused.Errnos["ECONNREFUSED"] != 20 {
			t.Fatalf("client saw %v, want 20 ECONNREFUSED", refused.Errnos)
		}
		found := false
		for _, c := range d.ConnectFailures {
			if c.PID != uint32(refused.PID) {
				continue
			}
			found = true
			if c.Comm != "ctr-refused-b" || c.Destination != "127.0.0.1:9" || c.NetNS != refusedNS.Inode ||
				len(c.Counts) != 1 || c.Counts["ECONNREFUSED"] != 20 {
				t.Errorf("connect_failures line %+v: want ctr-refused-b to 127.0.0.1:9 in netns %d, ECONNREFUSED 20", c, refusedNS.Inode)
			}
		}
		if !found {
			t.Errorf("no connect_failures line for pid %d: %+v", refused.PID, d.ConnectFailures)
		}
	})
}

// findingOf returns the first finding of kind that match accepts.
func findingOf(d *export.Document, kind string, match func(*export.Finding) bool) *export.Finding {
	for i := range d.Findings {
		if d.Findings[i].Kind == kind && match(&d.Findings[i]) {
			return &d.Findings[i]
		}
	}
	return nil
}
