package kernel

import "testing"

func TestParseMIBAndSockstat(t *testing.T) {
	vals := map[string]uint64{}
	parseMIB([]byte("Tcp: RtoAlgorithm RtoMin MaxConn ActiveOpens PassiveOpens\nTcp: 1 200 -1 42 7\nUdp: InDatagrams\nUdp: 3\n"), vals)
	parseMIB([]byte("TcpExt: SyncookiesSent ListenOverflows\nTcpExt: 0 5\nIpExt: InNoRoutes\nIpExt: 9\n"), vals)
	parseSockstat([]byte("sockets: used 180\nTCP: inuse 5 orphan 1 tw 2 alloc 9 mem 3\nUDP: inuse 0 mem 0\n"), vals)
	want := map[string]uint64{"TcpActiveOpens": 42, "TcpPassiveOpens": 7, "UdpInDatagrams": 3, "TcpExtListenOverflows": 5,
		"IpExtInNoRoutes": 9, "SockstatSocketsUsed": 180, "SockstatTCPInuse": 5, "SockstatTCPOrphan": 1,
		"SockstatTCPTw": 2, "SockstatTCPAlloc": 9, "SockstatTCPMem": 3}
	for k, v := range want {
		if vals[k] != v {
			t.Errorf("%s = %d, want %d", k, vals[k], v)
		}
	}
	if _, ok := vals["TcpMaxConn"]; ok {
		t.Error("TcpMaxConn (-1) should be left out")
	}
}
