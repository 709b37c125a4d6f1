package events

import (
	"net/netip"
	"testing"
)

func conn(local, remote string, pid uint32, comm string, src OwnerSource) Event {
	ev := Event{Kind: KindConnClosed}
	ev.Conn.Local = netip.MustParseAddrPort(local)
	ev.Conn.Remote = netip.MustParseAddrPort(remote)
	ev.Conn.Family = FamilyIPv4
	if ev.Conn.Local.Addr().Is6() {
		ev.Conn.Family = FamilyIPv6
	}
	ev.Conn.NetNS = 100
	ev.Conn.Owner.PID = pid
	ev.Conn.Owner.SetComm(comm)
	ev.Conn.Owner.Source = src
	return ev
}

func TestFilterMatch(t *testing.T) {
	nginx := conn("10.0.0.1:443", "10.0.0.9:50000", 10, "nginx", OwnerAccept)
	curl6 := conn("[::1]:40000", "[::1]:80", 20, "curl", OwnerConnect)
	unknown := conn("10.0.0.1:22", "10.0.0.7:51000", 0, "", OwnerUnknown)
	snap := conn("10.0.0.1:5432", "10.0.0.8:52000", 30, "postgres", OwnerSnapshot)
	snap.Conn.Owner.CgroupPath = "/system.slice/postgresql.service"
	snap.Conn.Owner.CgroupID = 555

	tests := []struct {
		name string
		f    Filter
		want []bool // nginx, curl6, unknown, snap
	}{
		{"zero filter matches all", Filter{}, []bool{true, true, true, true}},
		{"pid", Filter{PID: 10}, []bool{true, false, false, false}},
		{"comm", Filter{Comm: "curl"}, []bool{false, true, false, false}},
		{"comm truncated like the kernel", Filter{Comm: "postgres-and-more-stuff"}, []bool{false, false, false, false}},
		{"local port", Filter{Port: 443}, []bool{true, false, false, false}},
		{"remote port", Filter{Port: 80}, []bool{false, true, false, false}},
		{"family", Filter{Family: FamilyIPv6}, []bool{false, true, false, false}},
		{"netns", Filter{NetNS: 101}, []bool{false, false, false, false}},
		{"cgroup by path below", Filter{CgroupID: 1, CgroupPath: "/system.slice"}, []bool{true, true, false, true}},
		{"cgroup exact id", Filter{CgroupID: 555, CgroupPath: "/elsewhere"}, []bool{true, true, false, true}},
		{"cgroup path is not a string prefix", Filter{CgroupID: 1, CgroupPath: "/system.sl"}, []bool{true, true, false, false}},
	}
	evs := []Event{nginx, curl6, unknown, snap}
	for _, tt := range tests {
		for i := range evs {
			if got := tt.f.Match(&evs[i]); got != tt.want[i] {
				t.Errorf("%s: event %d (%s): got %v want %v", tt.name, i, evs[i].Conn.Owner.CommBytes(), got, tt.want[i])
			}
		}
	}
}

func TestOwnersAttributesConnectionsOpenBeforeTracing(t *testing.T) {
	o := NewOwners()
	existing := conn("10.0.0.1:5432", "10.0.0.8:52000", 30, "postgres", OwnerSnapshot)
	existing.Kind = KindConnExisting
	existing.Conn.Cookie = 7
	o.Apply(&existing)
	noOwner := existing
	noOwner.Conn.Cookie = 8
	noOwner.Conn.Owner = Process{}
	o.Apply(&noOwner)
	if o.Len() != 2 {
		t.Fatalf("table holds %d entries, want 2", o.Len())
	}

	closed := conn("10.0.0.1:5432", "10.0.0.8:52000", 0, "", OwnerUnknown)
	closed.Conn.Cookie = 7
	o.Apply(&closed)
	if closed.Conn.Owner.PID != 30 || closed.Conn.Owner.Source != OwnerSnapshot || string(closed.Conn.Owner.CommBytes()) != "postgres" {
		t.Errorf("owner %+v, want postgres pid 30 from the snapshot", closed.Conn.Owner)
	}
	if o.Len() != 1 {
		t.Errorf("entry not deleted on close: %d left", o.Len())
	}

	// A kernel-attributed close keeps its owner.
	existing.Conn.Cookie = 9
	o.Apply(&existing)
	kern := conn("10.0.0.1:1", "10.0.0.2:2", 44, "app", OwnerConnect)
	kern.Conn.Cookie = 9
	o.Apply(&kern)
	if kern.Conn.Owner.PID != 44 || o.Len() != 1 {
		t.Errorf("kernel owner overwritten (%d) or entry kept (%d)", kern.Conn.Owner.PID, o.Len())
	}
}

func TestNamesAreStable(t *testing.T) {
	// These strings are part of the JSON interface documented in README.
	for got, want := range map[string]string{
		EndConnectFailed.String(): "connect_failed", EndReset.String(): "reset",
		EndTimeWait.String(): "time_wait", EndCloseWait.String(): "close_wait", EndClosed.String(): "closed",
		RoleActive.String(): "active", RolePassive.String(): "passive", RoleUnknown.String(): "unknown",
		SideLocal.String(): "local", SideRemote.String(): "remote", SideNone.String(): "none",
		TCPFinWait2.String(): "FIN_WAIT2", TCPNewSynRecv.String(): "NEW_SYN_RECV", TCPState(99).String(): "UNKNOWN",
		ErrnoName(111): "ECONNREFUSED", ErrnoName(0): "", ErrnoName(200): "errno 200",
		FamilyIPv4.String(): "ipv4", FamilyIPv6.String(): "ipv6",
	} {
		if got != want {
			t.Errorf("got %q want %q", got, want)
		}
	}
}

func TestOwnersTakesTheSYNOutOfActiveOpensSeenLate(t *testing.T) {
	for _, tt := range []struct {
		role   Role
		seen   bool
		tx     uint64
		wantTx uint64
	}{
		{RoleActive, false, 110, 109}, // bytes_acked counted our SYN
		{RolePassive, false, 110, 110},
		{RoleActive, true, 110, 110}, // the kernel had a baseline: exact already
	} {
		o := NewOwners()
		ex := conn("10.0.0.1:40000", "10.0.0.2:80", 5, "app", OwnerSnapshot)
		ex.Kind, ex.Conn.Cookie, ex.Conn.Role = KindConnExisting, 3, tt.role
		o.Apply(&ex)
		cl := conn("10.0.0.1:40000", "10.0.0.2:80", 0, "", OwnerUnknown)
		cl.Conn.Cookie, cl.Conn.TxBytes, cl.Conn.SeenOpen = 3, tt.tx, tt.seen
		if tt.seen {
			cl.Conn.Role = RoleActive
		}
		o.Apply(&cl)
		if cl.Conn.TxBytes != tt.wantTx || cl.Conn.Role != tt.role {
			t.Errorf("%s seen=%v: tx %d role %s, want %d %s", tt.role, tt.seen, cl.Conn.TxBytes, cl.Conn.Role, tt.wantTx, tt.role)
		}
	}
}

func TestEventNetNS(t *testing.T) {
	cases := []Event{
		{Kind: KindConnClosed, Conn: Conn{NetNS: 1}},
		{Kind: KindConnect, Connect: Connect{NetNS: 1}},
		{Kind: KindUnixListener, Connect: Connect{NetNS: 1}},
		{Kind: KindUnixDgramSend, Connect: Connect{NetNS: 1}},
		{Kind: KindDrop, Drop: Drop{NetNS: 1}},
		{Kind: KindListenOverflow, Drop: Drop{NetNS: 1}},
		{Kind: KindConntrackStats, Conntrack: Conntrack{NetNS: 1}},
		{Kind: KindConntrackNew, ConntrackEntry: ConntrackEntry{NetNS: 1}},
		{Kind: KindConntrackResync, ConntrackEntry: ConntrackEntry{NetNS: 1}},
		{Kind: KindKernelCounters, Counters: Counters{NetNS: 1}},
	}
	for _, ev := range cases {
		if got := ev.NetNS(); got != 1 {
			t.Errorf("%s: NetNS() = %d, want the payload's 1", ev.Kind, got)
		}
	}
}
