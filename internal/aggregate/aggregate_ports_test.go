package aggregate

import (
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
)

// TestPortTopIsSortedPrefix: the bounded selection of Snapshot.Ports is
// exactly the first k of the whole table sorted, counts included, ties on
// the count broken by namespace and addresses as before.
func TestPortTopIsSortedPrefix(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	pt := newPortTable()
	for i := 0; i < 5000; i++ {
		k := portKey{netns: uint32(1 + r.IntN(3)),
			local:  netip.AddrFrom4([4]byte{10, 0, 0, byte(r.IntN(4))}),
			remote: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 1, byte(r.IntN(8)), byte(r.IntN(256))}), uint16(r.IntN(70000)))}
		u := pt.use[k]
		u.used += uint32(1 + r.IntN(3)*r.IntN(3)) // mostly small, many ties
		u.timeWait = u.used / 2
		pt.use[k] = u
	}
	var all []PortUse
	for pk, u := range pt.use {
		all = append(all, PortUse{NetNS: pk.netns, Local: pk.local, Remote: pk.remote, Used: u.used, TimeWait: u.timeWait, RangeSize: pt.rangeSize(pk.netns)})
	}
	slices.SortFunc(all, func(x, y PortUse) int { return portOrder(&x, &y) })
	for _, k := range []int{1, 7, 1000, len(all), len(all) + 10} {
		got := pt.top(k)
		want := all[:min(k, len(all))]
		if !slices.Equal(got, want) {
			t.Fatalf("top(%d) differs from the first %d of the sorted table", k, len(want))
		}
	}
}

// TestPortsByDestEitherSide: the per-destination sums are the same
// whichever side byDest indexes.
func TestPortsByDestEitherSide(t *testing.T) {
	pt := newPortTable()
	d1 := netip.MustParseAddrPort("10.1.0.1:443")
	d2 := netip.MustParseAddrPort("10.1.0.2:443")
	pt.use[portKey{netns: 1, local: netip.MustParseAddr("10.0.0.1"), remote: d1}] = portUse{used: 3}
	pt.use[portKey{netns: 1, local: netip.MustParseAddr("10.0.0.2"), remote: d1}] = portUse{used: 4, timeWait: 1}
	pt.use[portKey{netns: 1, local: netip.MustParseAddr("10.0.0.1"), remote: d2}] = portUse{used: 5}
	pt.use[portKey{netns: 2, local: netip.MustParseAddr("10.0.0.1"), remote: d1}] = portUse{used: 9}
	wanted := func(add func(dest)) { add(dest{1, d1}) }
	for _, n := range []int{1, 100} {
		got := pt.byDest(n, wanted)
		if got[dest{1, d1}] != 7 {
			t.Errorf("byDest(%d): %d ports towards %s, want 7", n, got[dest{1, d1}], d1)
		}
	}
}
