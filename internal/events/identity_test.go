package events

import (
	"strings"
	"testing"
)

func TestWorkloadFilter(t *testing.T) {
	cid := strings.Repeat("4b", 32)
	named := &CgroupInfo{Identity: Identity{Namespace: "shop", Pod: "checkout-7d9f", Container: "api", ContainerID: cid}}
	lookup := func(cg uint64) *CgroupInfo {
		if cg == 7 {
			return named
		}
		return nil
	}
	owner := Process{PID: 1, CgroupID: 7, Source: OwnerConnect}
	other := Process{PID: 2, CgroupID: 8, Source: OwnerConnect}
	for _, tc := range []struct {
		w           WorkloadFilter
		match, miss bool // owner matches; other matches
	}{
		{WorkloadFilter{}, true, true},
		{WorkloadFilter{Container: "api"}, true, false},
		{WorkloadFilter{Container: cid[:12]}, true, false},
		{WorkloadFilter{Container: cid[:3]}, false, false}, // too short to be an id prefix
		{WorkloadFilter{Container: "web"}, false, false},
		{WorkloadFilter{Namespace: "shop"}, true, false},
		{WorkloadFilter{Namespace: "shop", Pod: "checkout-7d9f"}, true, false},
		{WorkloadFilter{Namespace: "kube-system", Pod: "checkout-7d9f"}, false, false},
		{WorkloadFilter{Pod: "checkout-7d9f", Container: "sidecar"}, false, false},
	} {
		f := Filter{Workload: tc.w, Identities: lookup}
		if got := f.matchOwner(&owner); got != tc.match {
			t.Errorf("%+v: owner match %v, want %v", tc.w, got, tc.match)
		}
		if got := f.matchOwner(&other); got != tc.miss {
			t.Errorf("%+v: unnamed owner match %v, want %v", tc.w, got, tc.miss)
		}
	}
	// Without a lookup nothing is named, so nothing matches a workload.
	f := Filter{Workload: WorkloadFilter{Container: "api"}}
	if f.matchOwner(&owner) {
		t.Error("matched without a lookup")
	}
	f.Identities = lookup
	if n := testing.AllocsPerRun(100, func() { f.matchOwner(&owner) }); n != 0 {
		t.Errorf("%v allocations per match, want 0", n)
	}
}
