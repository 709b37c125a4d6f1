package export

import "github.com/conntracer/conntracer/internal/events"

// SetIdentities names the owners' containers, pods or units through
// lookup (nil: none): JSON lines gain the identity's fields, text lines a
// WORKLOAD column. The CgroupInfo's strings must be printable ASCII without
// '"' or '\\', as the resolver makes them. The lookup runs on the event loop; it must not
// allocate (identity.Resolver.Lookup reads a map under a read lock).
// Call before the first line.
func (s *Stream) SetIdentities(lookup events.CgroupLookup) { s.identities = lookup }

// SetNetNSNames names network namespaces in JSON lines (netns_name, beside
// the netns inode) through lookup (nil: none); names must be printable
// ASCII without '"' or '\\', as kernel.NetNSNames keeps them.
func (s *Stream) SetNetNSNames(lookup events.NetNSLookup) { s.netnsNames = lookup }

// appendJSONNetNSName appends `,"netns_name":"NAME"` when the namespace
// has a name.
func (s *Stream) appendJSONNetNSName(b []byte, ino uint32) []byte {
	if s.netnsNames == nil || ino == 0 {
		return b
	}
	name := s.netnsNames(ino)
	if name == "" {
		return b
	}
	b = append(b, `,"netns_name":"`...)
	b = append(b, name...)
	return append(b, '"')
}

// textWorkloadHeader is the text header's extra column, after END (whose
// widest value, "connect_failed (ECONNREFUSED)", is 29 characters).
const textWorkloadHeader = "WORKLOAD"

// endWidth is the END column's width when a WORKLOAD column follows it.
const endWidth = 30

// appendTextWorkload appends the WORKLOAD column to a text line whose END
// column began at start: "-" when nothing is known.
func (s *Stream) appendTextWorkload(b []byte, start int, cgroupID uint64) []byte {
	if s.identities == nil {
		return b
	}
	b = pad(b, start, endWidth)
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
