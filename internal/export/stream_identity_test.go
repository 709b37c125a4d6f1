package export

import (
	"bytes"
	"encoding/json"
	"io"
	"strings"
	"testing"

	"github.com/conntracer/conntracer/internal/events"
)

// identities names cgroup 77 (every sample event's owner) as a pod's
// container; others are unknown.
func identities() events.CgroupLookup {
	ident := events.Identity{Runtime: "containerd", ContainerID: strings.Repeat("ab", 32),
		PodUID: "7c2f1d3e-8a9b-4c5d-9e0f-1a2b3c4d5e6f", Namespace: "shop", Pod: "checkout-7d9f", Container: "api"}
	info := &events.CgroupInfo{Path: "/kubepods/x", Identity: ident, Workload: ident.Workload()}
	return func(id uint64) *events.CgroupInfo {
		if id != 77 {
			return nil
		}
		return info
	}
}

// netnsNames names the sample events' namespace.
func netnsNames(ino uint32) string {
	if ino == 4026531840 {
		return "blue"
	}
	return ""
}

func TestStreamIdentity(t *testing.T) {
	evs := sampleEvents()
	evs[1].Conn.Owner.CgroupID = 78 // not named
	evs[2].Conn.NetNS = 4026531841  // not named
	for _, f := range []Format{FormatText, FormatJSON} {
		var buf bytes.Buffer
		s := NewStream(&buf, f, fixedClock)
		s.SetIdentities(identities())
		s.SetNetNSNames(netnsNames)
		for i := range evs {
			if err := s.Print(&evs[i]); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.Flush(); err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
		if f == FormatText {
			head := lines[0]
			i, n, j := strings.Index(head, "END"), strings.Index(head, "NETNS"), strings.Index(head, "WORKLOAD")
			if i < 0 || n != i+endWidth || j != n+netnsWidth {
				t.Errorf("header %q: want NETNS %d columns after END, WORKLOAD %d after NETNS", head, endWidth, netnsWidth)
			}
			for k, want := range map[int]string{1: "blue", 2: "blue", 3: "4026531841"} {
				if got := strings.Fields(lines[k][n:])[0]; got != want {
					t.Errorf("line %d NETNS %q, want %q (the name, else the inode)", k, got, want)
				}
			}
			col := strings.Index(head, "WORKLOAD")
			if got := lines[1][col:]; got != "shop/checkout-7d9f container api" {
				t.Errorf("line 1 WORKLOAD %q", got)
			}
			if got := lines[2]; !strings.HasSuffix(got, " -") { // wide columns push it right
				t.Errorf("unnamed owner's WORKLOAD %q, want -", got)
			}
			if got := lines[3][col:]; got != "shop/checkout-7d9f container api" {
				t.Errorf("connect_failed (ECONNREFUSED) line's WORKLOAD %q", got)
			}
			continue
		}
		for n, line := range lines {
			var m map[string]any
			if err := json.Unmarshal([]byte(line), &m); err != nil {
				t.Fatalf("line %d not JSON: %v\n%s", n, err, line)
			}
			if name, ok := m["netns_name"]; (n == 2) == ok || ok && name != "blue" {
				t.Errorf("line %d: netns_name %v (netns %v)", n, name, m["netns"])
			}
			if n == 1 {
				if _, ok := m["pod"]; ok {
					t.Errorf("unnamed owner has a pod field: %s", line)
				}
				continue
			}
			if m["namespace"] != "shop" || m["pod"] != "checkout-7d9f" || m["container"] != "api" ||
				m["runtime"] != "containerd" || m["container_id"] != strings.Repeat("ab", 32) {
				t.Errorf("line %d lacks the identity: %s", n, line)
			}
		}
	}
}

func TestStreamIdentityDoesNotAllocate(t *testing.T) {
	evs := sampleEvents()
	for _, f := range []Format{FormatText, FormatJSON} {
		s := NewStream(io.Discard, f, fixedClock)
		s.SetIdentities(identities())
		s.SetNetNSNames(netnsNames)
		if allocs := testing.AllocsPerRun(1000, func() {
			for i := range evs {
				_ = s.Print(&evs[i])
			}
		}); allocs != 0 {
			t.Errorf("%s: %.1f allocations per batch, want 0", f, allocs)
		}
	}
}
