package session

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/conntracer/conntracer/internal/events"
	"github.com/conntracer/conntracer/internal/identity"
	"github.com/conntracer/conntracer/internal/record"
	"github.com/conntracer/conntracer/internal/report"
)

// A recording names each container once, before its first event, and a
// report of it names the pod from the recording alone (the pod, and the
// resolver that named it, are gone by then).
func TestRecordingNamesContainersOnce(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rec.ctrec")
	rec, err := newRecorder(RecordConfig{Path: path}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	id := events.Identity{Runtime: "containerd", ContainerID: strings.Repeat("4b", 32), Namespace: "shop", Pod: "checkout-7d9f", Container: "api"}
	info := &events.CgroupInfo{Path: "/kubepods/x/" + id.ContainerID, Identity: id, Workload: id.Workload()}
	rec.names.lookup = func(cg uint64) *events.CgroupInfo {
		if cg == 77 {
			return info
		}
		return nil
	}
	t0 := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	for i := range 40 {
		owner := events.Process{PID: 4242, TID: 4242, CgroupID: 77, Source: events.OwnerConnect}
		if i%2 == 1 {
			owner = events.Process{PID: 5, TID: 5, CgroupID: 3, Source: events.OwnerConnect} // unnamed
		}
		ev := closedToRedis(i, 1, owner)
		rec.Record(&ev, t0.Add(time.Duration(i)*time.Millisecond))
	}
	if err := rec.Close(); err != nil {
		t.Fatal(err)
	}

	r, err := record.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	var ev events.Event
	var kinds []events.Kind
	for {
		_, err := r.Next(&ev)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		kinds = append(kinds, ev.Kind)
		if ev.Kind == events.KindCgroupIdentity && (ev.Cgroup.ID != 77 || ev.Cgroup.Info != *info) {
			t.Errorf("identity record %+v, want cgroup 77 %+v", ev.Cgroup, *info)
		}
	}
	r.Close()
	n := 0
	for _, k := range kinds {
		if k == events.KindCgroupIdentity {
			n++
		}
	}
	if n != 1 || kinds[0] != events.KindCgroupIdentity || len(kinds) != 41 {
		t.Errorf("want one identity record first, then 40 closes; got %d identity records in %v", n, kinds)
	}

	rep, err := report.Replay([]string{path}, report.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var text bytes.Buffer
	if err := rep.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(text.String(), "shop/checkout-7d9f container api") {
		t.Errorf("report does not name the pod:\n%s", text.String())
	}
	named := 0
	for _, p := range rep.Document().Final.Processes {
		if p.PID == 4242 && p.Workload == "shop/checkout-7d9f container api" && p.Identity.Namespace == "shop" {
			named++
		}
		if p.PID == 5 && p.Identity != nil {
			t.Errorf("unnamed process got an identity: %+v", p.Identity)
		}
	}
	if named != 1 {
		t.Errorf("report's final document names %d processes as the pod, want 1", named)
	}
}

// A recording names each network namespace before its first event, again
// when its name changes (its pod named after its first events), and a
// report of it names the namespace from the recording alone.
func TestRecordingNamesNetNS(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rec.ctrec")
	rec, err := newRecorder(RecordConfig{Path: path}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	const podNS, bareNS = 4026532301, 4026532302
	name := &identity.NetNSInfo{Name: "pod 9d3e2f1a-0b1c-4d2e-8f3a-4b5c6d7e8f90", Source: events.NetNSByPod}
	rec.names.netns = func(ino uint32) *identity.NetNSInfo {
		if ino == podNS {
			return name
		}
		return nil
	}
	t0 := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	for i := range 20 {
		if i == 10 { // the runtime answered: the pod's name
			name = &identity.NetNSInfo{Name: "shop/cart-5c8b", Source: events.NetNSByPod}
		}
		ns := uint32(podNS)
		if i%2 == 1 {
			ns = bareNS
		}
		ev := closedToRedis(i, ns, events.Process{PID: 4242, TID: 4242, Source: events.OwnerConnect})
		rec.Record(&ev, t0.Add(time.Duration(i)*time.Millisecond))
	}
	if err := rec.Close(); err != nil {
		t.Fatal(err)
	}
	r, err := record.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	var ev events.Event
	var names []string
	for i := 0; ; i++ {
		_, err := r.Next(&ev)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if ev.Kind == events.KindNetNSName {
			names = append(names, fmt.Sprintf("%d@%d %s", ev.NetNSName.Inode, i, ev.NetNSName.Name))
		}
	}
	r.Close()
	// Before event 0 (record 0) and before event 10 (record 11).
	want := []string{"4026532301@0 pod 9d3e2f1a-0b1c-4d2e-8f3a-4b5c6d7e8f90", "4026532301@11 shop/cart-5c8b"}
	if !slices.Equal(names, want) {
		t.Errorf("netns_name records %q, want %q", names, want)
	}

	rep, err := report.Replay([]string{path}, report.Options{})
	if err != nil {
		t.Fatal(err)
	}
	doc := rep.Document().Final
	if got := doc.NetNSNames; len(got) != 1 || got["4026532301"] != "shop/cart-5c8b" {
		t.Errorf("report's netns_names %v, want the pod's namespace by its last name", got)
	}
	var text bytes.Buffer
	if err := rep.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(text.String(), "NETNS") {
		t.Errorf("report's table has no NETNS column:\n%s", text.String())
	}
}

// closedToRedis is the i-th of a client's short connections to
// 10.0.3.7:6379 from namespace netns, closed into TIME_WAIT, owned by
// owner (named "client").
func closedToRedis(i int, netns uint32, owner events.Process) events.Event {
	owner.SetComm("client")
	kns := uint64(1e12) + uint64(i)*1e6
	return events.Event{Kind: events.KindConnClosed, Conn: events.Conn{Cookie: uint64(i + 1), NetNS: netns, Family: events.FamilyIPv4,
		Local:  netip.AddrPortFrom(netip.MustParseAddr("10.0.0.1"), uint16(40000+i)),
		Remote: netip.MustParseAddrPort("10.0.3.7:6379"), Role: events.RoleActive, Owner: owner,
		OpenNs: kns - 1e5, CloseNs: kns, EndState: events.EndTimeWait, SeenOpen: true}}
}
