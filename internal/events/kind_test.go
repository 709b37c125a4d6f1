package events

import "testing"

// TestKindNumbersAndNames pins every kind's number and name: recordings
// store the number (internal/record), and JSON output, exports and reports
// print the name. A new kind adds a line here; no line ever changes.
func TestKindNumbersAndNames(t *testing.T) {
	kinds := []struct {
		k    Kind
		num  uint8
		name string
	}{
		{KindUnknown, 0, "unknown"},
		{KindConnClosed, 1, "conn_closed"},
		{KindConnExisting, 2, "conn_existing"},
		{KindConnect, 3, "connect"},
		{KindUnixListener, 4, "unix_listener"},
		{KindSockOpen, 32, "sock_open"},
		{KindSockSampleDone, 33, "sock_sample_done"},
		{KindTimeWait, 34, "time_wait"},
		{KindTimeWaitDone, 35, "time_wait_done"},
		{KindPortRange, 36, "port_range"},
		{KindDrop, 40, "drop"},
		{KindDropCount, 41, "drop_count"},
		{KindListenOverflow, 42, "listen_overflow"},
		{KindConntrackStats, 43, "conntrack_stats"},
		{KindNetNSNew, 44, "netns_new"},
		{KindNetNSGone, 45, "netns_gone"},
		{KindKernelCounters, 48, "kernel_counters"},
		{KindTracerCounters, 49, "tracer_counters"},
		{KindConntrackNew, 56, "conntrack_new"},
		{KindConntrackDestroy, 57, "conntrack_destroy"},
		{KindConntrackAllocFailed, 58, "conntrack_alloc_failed"},
		{KindConntrackResync, 59, "conntrack_resync"},
		{KindConntrackUpdate, 60, "conntrack_update"},
		{KindUnixDgramSend, 64, "unix_dgram_send"},
		{KindCgroupIdentity, 72, "cgroup_identity"},
		{KindNetNSName, 73, "netns_name"},
	}
	pinned := map[uint8]string{}
	for _, tt := range kinds {
		if uint8(tt.k) != tt.num {
			t.Errorf("%s is %d, want %d: recordings store the number", tt.name, uint8(tt.k), tt.num)
		}
		if got := tt.k.String(); got != tt.name {
			t.Errorf("Kind(%d).String() = %q, want %q", tt.num, got, tt.name)
		}
		pinned[tt.num] = tt.name
	}
	// Every number either is a pinned kind or reads as unknown: a kind
	// added without a line above fails here.
	for n := 0; n < 256; n++ {
		name, ok := pinned[uint8(n)]
		if !ok {
			name = "unknown"
		}
		if got := Kind(n).String(); got != name {
			t.Errorf("Kind(%d).String() = %q, want %q (a new kind must be pinned in this test)", n, got, name)
		}
	}
}
