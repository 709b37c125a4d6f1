package probe

import (
	"testing"

	"github.com/conntracer/conntracer/internal/events"
	"github.com/conntracer/conntracer/internal/kernel"
	"github.com/conntracer/conntracer/internal/testenv"
)

// TestKernelFiltersDropEventsBeforeUserSpace checks that filters run in the
// kernel: the records read from the ring buffer are only the matching ones.
func TestKernelFiltersDropEventsBeforeUserSpace(t *testing.T) {
	testenv.RequireRoot(t)
	ns := testenv.NewNetNS(t)
	srv := testenv.StartServer(t, ns, "ctr-server")
	plan4 := []testenv.Conn{
		{Addr: srv.Addr4(), Req: 1, Resp: 1, Mode: testenv.ClientCloses},
		{Addr: srv.Addr4(), Req: 2, Resp: 2, Mode: testenv.ServerCloses},
	}
	plan6 := []testenv.Conn{
		{Addr: srv.Addr6(), Req: 3, Resp: 3, Mode: testenv.ClientCloses},
		{Addr: srv.Addr6(), Req: 4, Resp: 4, Mode: testenv.ClientCloses},
		{Addr: srv.Addr6(), Req: 5, Resp: 5, Mode: testenv.ServerCloses},
	}

	tests := []struct {
		name   string
		filter func(f *Filter)
		want   func(c *events.Conn) bool
		count  int
	}{
		{"comm", func(f *Filter) { f.Comm = "ctr-filter-6" },
			func(c *events.Conn) bool { return string(c.Owner.CommBytes()) == "ctr-filter-6" }, 3},
		{"port", func(f *Filter) { f.Port = srv.Port6 },
			func(c *events.Conn) bool { return c.Local.Port() == srv.Port6 || c.Remote.Port() == srv.Port6 }, 6},
		{"family", func(f *Filter) { f.Family = events.FamilyIPv4 },
			func(c *events.Conn) bool { return c.Family == events.FamilyIPv4 }, 4},
		{"pid of the server", func(f *Filter) { f.PID = uint32(srv.PID) },
			func(c *events.Conn) bool { return c.Owner.PID == uint32(srv.PID) }, 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := DefaultOptions()
			opts.Filter.NetNS = ns.Inode
			tt.filter(&opts.Filter)
			tr := startTracing(t, opts)
			testenv.RunClient(t, ns, "ctr-filter-4", plan4)
			testenv.RunClient(t, ns, "ctr-filter-6", plan6)
			evs := tr.col.waitFor(t, tt.count)
			if err := tr.stop(); err != nil {
				t.Fatal(err)
			}
			if len(evs) != tt.count {
				t.Errorf("got %d events, want %d", len(evs), tt.count)
			}
			for _, ev := range evs {
				if !tt.want(&ev.Conn) {
					t.Errorf("event passed the filter: %s", describe(&ev))
				}
			}
			if st := tr.probe.Stats(); st.Records != uint64(tt.count) {
				t.Errorf("%d records crossed the ring buffer, want %d: the filter did not run in the kernel", st.Records, tt.count)
			}
		})
	}
}

// TestKernelCgroupFilterTakesTheSubtree: --cgroup names a cgroup, and
// processes in cgroups below it match too (the kernel checks the owner's
// ancestor at the level of the filter's cgroup).
func TestKernelCgroupFilterTakesTheSubtree(t *testing.T) {
	testenv.RequireRoot(t)
	mount, err := kernel.Cgroup2Mount()
	if err != nil {
		t.Skipf("no cgroup v2 hierarchy to test with: %v", err)
	}
	ns := testenv.NewNetNS(t)
	srv := testenv.StartServer(t, ns, "ctr-server")
	parent, child := testenv.NewCgroup(t, mount)
	id, level, err := kernel.ResolveCgroup(parent)
	if err != nil {
		t.Fatal(err)
	}
	if !kernelHasAncestorCgroup() {
		t.Skip("the in-kernel cgroup filter needs bpf_get_current_ancestor_cgroup_id in tracing programs (5.11+); this kernel filters in user space only")
	}
	opts := DefaultOptions()
	opts.Filter.NetNS = ns.Inode
	opts.Filter.CgroupID, opts.Filter.CgroupLevel = id, uint32(level)
	tr := startTracing(t, opts)

	plan := []testenv.Conn{{Addr: srv.Addr4(), Req: 1, Resp: 1, Mode: testenv.ClientCloses}}
	inside := testenv.RunClientInCgroup(t, ns, "ctr-inside", child, plan)
	testenv.RunClient(t, ns, "ctr-outside", plan)
	evs := tr.col.waitFor(t, 1)
	if err := tr.stop(); err != nil {
		t.Fatal(err)
	}
	if len(evs) != 1 || evs[0].Conn.Owner.PID != uint32(inside.PID) {
		for _, ev := range evs {
			t.Logf("  %s", describe(&ev))
		}
		t.Fatalf("got %d events, want only the one of pid %d in %s", len(evs), inside.PID, child)
	}
	childID, _, err := kernel.ResolveCgroup(child)
	if err != nil {
		t.Fatal(err)
	}
	if got := evs[0].Conn.Owner.CgroupID; got != childID {
		t.Errorf("owner cgroup id %d, want %d (%s)", got, childID, child)
	}
}
