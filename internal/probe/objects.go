package probe

import (
	"fmt"

	"github.com/cilium/ebpf"
)

// Names that every BPF object declares through the shared headers
// (bpf/records.h, bpf/filter.h): the same C names in each object, so one
// place sets them.
const (
	mapEvents      = "events"       // bpf/records.h: replaced by the shared ring buffer
	varWakeupBytes = "wakeup_bytes" // bpf/records.h
)

// filterVariables returns the values of bpf/filter.h's constants.
func (f Filter) variables() map[string]any {
	var comm [16]byte
	copy(comm[:15], f.Comm)
	return map[string]any{
		"filter_netns":        f.NetNS,
		"filter_tgid":         f.PID,
		"filter_port":         f.Port,
		"filter_family":       uint8(f.Family),
		"filter_comm_set":     boolByte(f.Comm != ""),
		"filter_comm":         comm,
		"filter_cgroup_id":    f.CgroupID,
		"filter_cgroup_level": f.CgroupLevel,
	}
}

// prepare writes constants into an object's spec before load and sizes its
// placeholder ring buffer like the shared one, which MapReplacements
// requires. A constant the object lacks is an error: the Go side and the C
// side disagree.
func (p *Probe) prepare(spec *ebpf.CollectionSpec, object string, vars ...map[string]any) error {
	set := func(name string, value any) error {
		v, ok := spec.Variables[name]
		if !ok {
			return fmt.Errorf("variable %s missing from the %s object", name, object)
		}
		if err := v.Set(value); err != nil {
			return fmt.Errorf("set %s in the %s object: %w", name, object, err)
		}
		return nil
	}
	if err := set(varWakeupBytes, p.opts.WakeupBytes); err != nil {
		return err
	}
	for _, m := range vars {
		for name, value := range m {
			if err := set(name, value); err != nil {
				return err
			}
		}
	}
	spec.Maps[mapEvents].MaxEntries = uint32(p.opts.RingBufferBytes)
	return nil
}

func boolByte(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}
