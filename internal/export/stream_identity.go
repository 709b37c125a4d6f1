package export

import (
	"strconv"

	"github.com/conntracer/conntracer/internal/events"
)

// SetIdentities names the owners' containers, pods or units through
// lookup (nil: none): JSON lines gain the identity's fields, text lines a
// WORKLOAD column. The CgroupInfo's strings must be printable ASCII without
// '"' or '\\', as the resolver makes them. The lookup runs on the event loop; it must not
// allocate (identity.Resolver.Lookup reads a map under a read lock).
// Call before the first line.
func (s *Stream) SetIdentities(lookup events.CgroupLookup) { s.identities = lookup }

// SetNetNSNames names network namespaces through lookup (nil: none):
// JSON lines gain netns_name beside the netns inode, text lines a NETNS
// column (the name, else the inode). Names must be printable ASCII
// without '"' or '\\', as identity.NetNSResolver keeps them. Call before
// the first line.
func (s *Stream) SetNetNSNames(lookup events.NetNSLookup) { s.netnsNames = lookup }

// appendJSONNetNSName appends `,"netns_name":"NAME"` when the namespace
// has a name.
func (s *Stream) appendJSONNetNSName(b []byte, ino uint32) []byte {
	name := s.netnsNameOf(ino)
	if name == "" {
		return b
	}
	b = append(b, `,"netns_name":"`...)
	b = append(b, name...)
	return append(b, '"')
}

// netnsNameOf is the namespace's name, "" when unknown or naming is off.
func (s *Stream) netnsNameOf(ino uint32) string {
	if s.netnsNames == nil || ino == 0 {
		return ""
	}
	return s.netnsNames(ino)
}

// textWorkloadHeader is the text header's extra column, after END (whose
// widest value, "connect_failed (ECONNREFUSED)", is 29 characters).
const textWorkloadHeader = "WORKLOAD"

// endWidth is the END column's width when a WORKLOAD column follows it.
const endWidth = 30

// textNetNSHeader is the NETNS column's header, after END and before
// WORKLOAD; netnsWidth its width when WORKLOAD follows (a longer name
// pushes WORKLOAD right).
const textNetNSHeader = "NETNS"

// appendTextHeaderTail widens the header's END column and names the
// columns after it.
func (s *Stream) appendTextHeaderTail(b []byte) []byte {
	if s.identities == nil && s.netnsNames == nil {
		return b
	}
	b = pad(b[:len(b)-1], len(b)-1-len("END"), endWidth) // the header ends "END\n"
	if s.netnsNames != nil {
		b = append(b, textNetNSHeader...)
		if s.identities != nil {
			b = pad(b, len(b)-len(textNetNSHeader), netnsWidth)
		}
	}
	if s.identities != nil {
		b = append(b, textWorkloadHeader...)
	}
	return append(b, '\n')
}

// appendTextWorkload appends the NETNS and WORKLOAD columns, those that
// are on, to a text line whose END column began at start: the
// namespace's name (its inode when nothing names it), the workload ("-"
// when nothing is known).
func (s *Stream) appendTextWorkload(b []byte, start int, cgroupID uint64, netns uint32) []byte {
	if s.identities == nil && s.netnsNames == nil {
		return b
	}
	b = pad(b, start, endWidth)
	if s.netnsNames != nil {
		start = len(b)
		if name := s.netnsNameOf(netns); name != "" {
			b = append(b, name...)
		} else {
			b = strconv.AppendUint(b, uint64(netns), 10)
		}
		if s.identities != nil {
			b = pad(b, start, netnsWidth)
		}
	}
	if s.identities == nil {
		return b
	}
	if info := s.lookupIdentity(cgroupID); info != nil && info.Workload != "" {
		return append(b, info.Workload...) // printable: the resolver cleans names
	}
	return append(b, '-')
}

func (s *Stream) lookupIdentity(cgroupID uint64) *events.CgroupInfo {
	if cgroupID == 0 {
		return nil
	}
	return s.identities(cgroupID)
}

// appendJSONIdentity appends the owner's identity fields, each only when
// known, after a JSON line's last field: namespace, pod, container,
// container_id, runtime, pod_uid, unit (names as in events.Identity).
func (s *Stream) appendJSONIdentity(b []byte, cgroupID uint64) []byte {
	if s.identities == nil {
		return b
	}
	info := s.lookupIdentity(cgroupID)
	if info == nil {
		return b
	}
	id := &info.Identity
	field := func(b []byte, name, v string) []byte {
		if v == "" {
			return b
		}
		b = append(b, `,"`...)
		b = append(b, name...)
		b = append(b, `":`...)
		// Names are printable ASCII without quotes or backslashes (the
		// resolver cleans what runtimes say), so they need no escaping.
		b = append(b, '"')
		b = append(b, v...)
		return append(b, '"')
	}
	b = field(b, "namespace", id.Namespace)
	b = field(b, "pod", id.Pod)
	b = field(b, "container", id.Container)
	b = field(b, "container_id", id.ContainerID)
	b = field(b, "runtime", id.Runtime)
	b = field(b, "pod_uid", id.PodUID)
	return field(b, "unit", id.Unit)
}
