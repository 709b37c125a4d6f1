package export

import (
	"encoding/json"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/conntracer/conntracer/internal/events"
)

// TestEventJSONOneSchema: every part of every kind `tracer export` writes
// as EventJSON is snake_case, names its enums, has comm as a string,
// kernel addresses as hex strings, kernel times as wall-clock times and
// null (never 0001-01-01 or 0) for what is not known.
func TestEventJSONOneSchema(t *testing.T) {
	var owner events.Process
	owner.PID, owner.TID, owner.Source, owner.CgroupID = 42, 43, events.OwnerConnect, 7
	owner.SetComm("nginx")
	boot := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	wall := func(ns uint64) time.Time { return boot.Add(time.Duration(ns)) }
	now := time.Date(2026, 11, 22, 1, 0, 0, 0, time.UTC)
	conn := events.Conn{Cookie: 9, NetNS: 4026531840, Family: events.FamilyIPv4,
		Local: netip.MustParseAddrPort("10.0.0.1:40000"), Remote: netip.MustParseAddrPort("10.0.0.2:6379"),
		Role: events.RoleActive, Owner: owner, OpenNs: 5e12, LastState: events.TCPEstablished, SeenOpen: true}
	conn2 := conn
	conn2.OpenNs = 0 // opened before tracing: unknown
	path := events.Connect{Owner: owner, NetNS: 9, Family: events.FamilyUnix, SockType: events.SockStream, Count: 3, StartNs: 1e9, EndNs: 2e9, NoLatency: true}
	path.Path.Set([]byte("/run/php.sock"))
	evs := []events.Event{
		{Kind: events.KindSockOpen, Conn: conn, Sample: events.Sample{TimeNs: 6e12}},
		{Kind: events.KindConnExisting, Conn: conn2},
		{Kind: events.KindTimeWait, Conn: conn, Sample: events.Sample{TimeNs: 6e12, ExpiresNs: 3e10}},
		{Kind: events.KindPortRange, Conn: events.Conn{NetNS: 9}, Sample: events.Sample{PortLow: 32768, PortHigh: 60999}},
		{Kind: events.KindConnect, Connect: events.Connect{Owner: owner, NetNS: 9, Family: events.FamilyIPv4, SockType: events.SockStream,
			Remote: netip.MustParseAddrPort("10.0.0.2:80"), Count: 1, StartNs: 1e9, EndNs: 1e9 + 5000, LatencySumNs: 5000}},
		{Kind: events.KindUnixListener, Connect: path},
		{Kind: events.KindDropCount, Drop: events.Drop{Reason: 2, ReasonName: "NO_SOCKET", Location: 0xffffffff81234567, Symbol: "tcp_v4_rcv+0x1", NetNS: 9, Count: 12, TimeNs: 7e12}},
		{Kind: events.KindConntrackStats, Conntrack: events.Conntrack{NetNS: 9, TimeNs: 7e12, Entries: 10, Max: 262144, TimeoutEstablished: 432000}},
		{Kind: events.KindConntrackNew, ConntrackEntry: events.ConntrackEntry{NetNS: 9, TimeNs: 7e12, ID: 5, Family: events.FamilyIPv4, Proto: 6,
			OrigSrc: netip.MustParseAddrPort("10.0.0.1:40000"), OrigDst: netip.MustParseAddrPort("10.0.0.2:80"), TCPState: 3}},
		{Kind: events.KindKernelCounters, Counters: events.Counters{NetNS: 9, TimeNs: 7e12}},
		{Kind: events.KindCgroupIdentity, Cgroup: events.CgroupRecord{ID: 7, Info: events.CgroupInfo{Path: "/kubepods/pod1/c",
			Identity: events.Identity{Runtime: "containerd", Namespace: "shop", Pod: "checkout-7d9f", Container: "api"},
			Workload: "shop/checkout-7d9f container api"}}},
		{Kind: events.KindNetNSName, NetNSName: events.NetNSRecord{Inode: 9, Name: "shop/checkout-7d9f", Source: events.NetNSByPod}},
	}
	goName := regexp.MustCompile(`"[A-Z][a-z][A-Za-z]*":`)
	for i := range evs {
		b, err := json.Marshal(NewEventJSON(&evs[i], now, wall))
		if err != nil {
			t.Fatal(err)
		}
		js := string(b)
		// Counter values are keyed by the kernel's own names (nstat's).
		if m := goName.FindString(regexp.MustCompile(`"values":\{[^}]*\}`).ReplaceAllString(js, "")); m != "" {
			t.Errorf("%s: Go field name %s: %s", evs[i].Kind, m, js)
		}
		for _, bad := range []string{"0001-01-01", `"comm":[`, `"open_time":"2026-11-01T00:00:00Z"`} {
			if strings.Contains(js, bad) {
				t.Errorf("%s: has %s: %s", evs[i].Kind, bad, js)
			}
		}
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		if m["type"] != evs[i].Kind.String() {
			t.Errorf("type %v, want %s", m["type"], evs[i].Kind)
		}
	}
	// Spot checks: enums by name, times on the wall clock, null unknown.
	want := map[int][]string{
		0:  {`"family":"ipv4"`, `"role":"active"`, `"last_state":"ESTABLISHED"`, `"comm":"nginx"`, `"open_time":"2026-11-01T01:23:20Z"`, `"close_time":null`, `"sampled_at":"2026-11-01T01:40:00Z"`, `"source":"connect"`},
		1:  {`"open_time":null`},
		2:  {`"expires_seconds":30`},
		3:  {`"port_low":32768`, `"port_high":60999`},
		4:  {`"errno":null`, `"latency_sum_ns":5000`, `"remote_addr":"10.0.0.2"`},
		5:  {`"path":"/run/php.sock"`, `"latency_sum_ns":null`, `"remote_addr":null`},
		6:  {`"location":"0xffffffff81234567"`, `"owner":null`, `"src_port":null`},
		7:  {`"timeout_established":432000`, `"timeout_time_wait":null`},
		8:  {`"orig_src":"10.0.0.1:40000"`, `"reply_src":null`},
		9:  {`"kernel_time":"2026-11-01T01:56:40Z"`},
		11: {`"netns_name":{"netns":9,"name":"shop/checkout-7d9f","source":"pod"}`},
		10: {`"cgroup":{"id":7,"path":"/kubepods/pod1/c","runtime":"containerd","namespace":"shop","pod":"checkout-7d9f","container":"api","workload":"shop/checkout-7d9f container api","gone":false}`},
	}
	for i, ws := range want {
		b, _ := json.Marshal(NewEventJSON(&evs[i], now, wall))
		for _, w := range ws {
			if !strings.Contains(string(b), w) {
				t.Errorf("%s: no %s in %s", evs[i].Kind, w, b)
			}
		}
	}
}
