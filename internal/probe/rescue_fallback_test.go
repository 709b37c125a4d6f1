package probe

import (
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/conntracer/conntracer/internal/testenv"
)

// TestStateProgramRunsAloneWhenItsRescuerFails: a rescuer the verifier
// refuses (here one made invalid on purpose) leaves the state program
// loaded and attached in its mode, alone, and the rescuer's hook off with
// the verifier's reason, instead of failing the mode.
func TestStateProgramRunsAloneWhenItsRescuerFails(t *testing.T) {
	testenv.RequireRoot(t)
	if !kernelHasTaskBTF() {
		t.Skip("tp_btf's state program needs bpf_get_current_task_btf (5.11+), which this kernel lacks")
	}
	p := &Probe{opts: DefaultOptions(), objects: newObjects()}
	defer p.Close()
	var err error
	p.ring, err = ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.RingBuf, MaxEntries: uint32(p.opts.RingBufferBytes)})
	if err != nil {
		t.Fatal(err)
	}
	l := &loader{p: p}
	accept := acceptProgs(l)
	coll, mode, failed, err := l.loadFirst(&loadSpec{
		object: "tcplife",
		hook:   stateHook,
		load: func() (*ebpf.CollectionSpec, error) {
			spec, err := loadTcplife()
			if err == nil {
				// Returns without setting R0: the verifier refuses it.
				spec.Programs[tcplifeProgCtRescueBtf].Instructions = asm.Instructions{asm.Return()}
			}
			return spec, err
		},
		without: accept.unused,
		only:    AttachTPBTF,
		modes: withRescuers(tracepointModes("sock", "inet_sock_set_state", map[AttachMode]string{
			AttachTPBTF:      tcplifeProgCtStateBtf,
			AttachRawTP:      tcplifeProgCtStateRaw,
			AttachTracepoint: tcplifeProgCtStateTp,
		})),
	})
	if err != nil || coll == nil {
		t.Fatalf("load: %v %v", err, failed)
	}
	p.adopt("tcplife", coll)
	if r := attachRescuer(l, coll, mode); r != nil {
		t.Fatal("an invalid rescuer was attached")
	}
	state := findAttachment(p.Attachments(), stateHook)
	rescue := findAttachment(p.Attachments(), RescueHook)
	if state == nil || state.Mode != AttachTPBTF {
		t.Fatalf("state hook %v, want tp_btf: %v", state, p.Attachments())
	}
	if rescue == nil || rescue.Mode != "" || rescue.Err == nil || !strings.Contains(rescue.Err.Error(), tcplifeProgCtRescueBtf) {
		t.Fatalf("rescue hook %v: want off, naming %s and why", rescue, tcplifeProgCtRescueBtf)
	}
	if _, ok := coll.Programs[tcplifeProgCtRescueBtf]; ok {
		t.Errorf("the rescuer is loaded")
	}
	t.Logf("%v", rescue)
	// The misses read without a rescuer: nothing rescued, the state
	// program's skipped runs all unhandled.
	progs, err := p.RecursionMisses()
	if err != nil {
		t.Fatal(err)
	}
	for _, pm := range progs {
		if pm.Rescuer || pm.Rescued != 0 || pm.Unhandled() != pm.Misses {
			t.Errorf("%+v: want no rescuer and no rescue", pm)
		}
	}
}
