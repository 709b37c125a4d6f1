package kernel

import (
	"fmt"
	"strings"

	"github.com/cilium/ebpf/btf"
)

// DropReasons returns the running kernel's enum skb_drop_reason as value ->
// name, names without the SKB_DROP_REASON_ / SKB_ prefix ("NO_SOCKET",
// "NETFILTER_DROP", "CONSUMED"), the way the kfree_skb tracepoint prints
// them. The numbers differ between kernel versions (NO_SOCKET is 2 on 6.1,
// 3 on 6.12), so they are read from the kernel's BTF, never hard-coded.
func DropReasons() (map[uint32]string, error) {
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		return nil, fmt.Errorf("load kernel BTF (needs /sys/kernel/btf/vmlinux): %w", err)
	}
	return dropReasonsFrom(spec)
}

func dropReasonsFrom(spec *btf.Spec) (map[uint32]string, error) {
	var e *btf.Enum
	if err := spec.TypeByName("skb_drop_reason", &e); err != nil {
		return nil, fmt.Errorf("enum skb_drop_reason in kernel BTF (drop reasons need Linux 5.17+): %w", err)
	}
	names := make(map[uint32]string, len(e.Values))
	for _, v := range e.Values {
		n := v.Name
		switch {
		case strings.HasPrefix(n, "SKB_DROP_REASON_"):
			n = strings.TrimPrefix(n, "SKB_DROP_REASON_")
		default:
			n = strings.TrimPrefix(n, "SKB_")
		}
		// Markers such as SKB_DROP_REASON_MAX and the subsystem masks
		// share values with real reasons: keep the first name.
		if _, dup := names[uint32(v.Value)]; !dup {
			names[uint32(v.Value)] = n
		}
	}
	return names, nil
}
