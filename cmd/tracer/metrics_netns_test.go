package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/conntracer/conntracer/internal/kernel"
	"github.com/conntracer/conntracer/internal/testenv"
)

// scrape returns the /metrics lines that start with prefix (a metric name
// and "{", or a name's beginning) and contain label.
func scrape(t *testing.T, addr, prefix, label string) (string, error) {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, prefix) && strings.Contains(l, label) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n"), err
}

// TestServeConntrackDropsFromEmptyTableAndNamespaceGone: in a namespace
// whose conntrack table was empty when the tracer started, conntrack drops
// equal the kernel's `drop` statistic exactly (the baseline is the empty
// table, not the first sample with drops in it); when the namespace is
// deleted, its series leave /metrics within two samples of the namespace
// sampler.
func TestServeConntrackDropsFromEmptyTableAndNamespaceGone(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTool(t, "nft")
	ns := testenv.NewNetNS(t)
	l := testenv.StartListener(t, ns, "ctd-listen", 1024)
	testenv.TrackConntrack(t, ns, "ctdtest")
	const every = 300 * time.Millisecond
	r := startServe(t, "--netns", ns.Name, "--sample-interval", "200ms", "--netns-interval", every.String(),
		"--reconcile-interval", "0", "--unix-interval", "0", "--counters-interval", "0")
	label := fmt.Sprintf(`netns="%d"`, ns.Inode)
	// The baseline: the sampler has seen the empty table (which has no
	// series to wait for) before the burst fills it.
	time.Sleep(testenv.Scaled(2 * every))

	f, err := os.Open("/run/netns/" + ns.Name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	restore := testenv.LowerConntrackMax(t, 256)
	b := testenv.StartBurst(t, ns, "ctd-churner", fmt.Sprintf("127.0.0.1:%d", l.Port), 400, 1200*time.Millisecond)
	b.Release(t)
	restore()
	st, err := kernel.ConntrackStats(int(f.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	if st.Drop == 0 {
		t.Fatalf("table never filled: %d connects failed, no conntrack drop", b.Failed)
	}
	if got, _ := scrape(t, r.addr, "conntracer_conntrack_", label); !strings.Contains(got, "conntracer_conntrack_entries{") {
		t.Fatalf("no conntrack series for the namespace before it is deleted: %q", got)
	}
	want := fmt.Sprintf("conntracer_conntrack_drops_total{%s,netns_name=%q} %d", label, ns.Name, st.Drop)
	testenv.WaitFor(t, 10*time.Second, want, func() (bool, string) {
		got, err := scrape(t, r.addr, "conntracer_conntrack_drops_total{", label)
		return got == want && err == nil, fmt.Sprint(got, err)
	})
	t.Logf("conntrack drops: kernel %d, tracer %d (%d connects failed)", st.Drop, st.Drop, b.Failed)

	if got, _ := scrape(t, r.addr, "conntracer_", label); true {
		t.Logf("series of the namespace before it is deleted:\n%s", got)
	}
	l.Stop()
	f.Close()
	ns.Delete(t)
	gone := time.Now()
	testenv.WaitFor(t, 10*time.Second, "series of the deleted namespace gone", func() (bool, string) {
		got, err := scrape(t, r.addr, "conntracer_", label) // every series of the namespace
		return got == "" && err == nil, fmt.Sprint(got, err)
	})
	// Two sampler rounds, and the socket round that publishes the
	// snapshot; the rest is slack for a loaded (or emulated) machine.
	if took := time.Since(gone); took > testenv.Scaled(2*every+time.Second) {
		t.Errorf("series of the deleted namespace left /metrics after %s, want within two samples (%s)", took, 2*every)
	} else {
		t.Logf("series gone %s after the namespace was deleted", took.Round(time.Millisecond))
	}
}
