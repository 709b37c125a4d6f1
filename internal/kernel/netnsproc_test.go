package kernel

import "testing"

func TestParseConntrackProcStat(t *testing.T) {
	// 6.18's layout: hexadecimal, one line per CPU, columns named by the header.
	in := "entries  clashres found new invalid ignore delete chainlength insert insert_failed drop early_drop icmp_error  expect_new expect_create expect_delete search_restart\n" +
		"00000100  00000000 00000000 00000000 00000003 00000000 00000000 00000000 00000000 00000001 0000008f 00000000 00000000  00000000 00000000 00000000 00000002\n" +
		"00000100  00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000091 00000000 00000000  00000000 00000000 00000000 00000000\n"
	m, err := parseConntrackProcStat([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if m["entries"] != 256 || m["drop"] != 0x8f+0x91 || m["invalid"] != 3 || m["insert_failed"] != 1 || m["search_restart"] != 2 {
		t.Errorf("parsed %v", m)
	}
}

func TestParseNetstat(t *testing.T) {
	in := "TcpExt: SyncookiesSent ListenOverflows ListenDrops\nTcpExt: 0 54 54\nIpExt: InNoRoutes\nIpExt: 0\n"
	if v, ok := parseNetstat([]byte(in), "TcpExt", "ListenOverflows"); !ok || v != 54 {
		t.Errorf("ListenOverflows = %d, %v", v, ok)
	}
}
