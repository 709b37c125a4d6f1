/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The user's filters, set by the loader before load (the same values in
 * every object that includes this header). Zero means "no filter".
 */
#ifndef CONNTRACER_FILTER_H
#define CONNTRACER_FILTER_H

const volatile __u32 filter_netns = 0;
const volatile __u32 filter_tgid = 0;
const volatile __u16 filter_port = 0;
const volatile __u8 filter_family = 0;
const volatile __u8 filter_comm_set = 0;
const volatile __u8 filter_comm[TASK_COMM_LEN] = {};
/* Owner inside this cgroup v2 or below: bpf_get_current_ancestor_cgroup_id
 * at filter_cgroup_level equals filter_cgroup_id. */
const volatile __u64 filter_cgroup_id = 0;
const volatile __u32 filter_cgroup_level = 0;

/* comm_matches compares a process name with --comm, as the kernel stores
 * both: at most 15 bytes and a NUL. */
static __always_inline bool comm_matches(const __u8 *comm)
{
	for (int i = 0; i < TASK_COMM_LEN; i++) {
		if (comm[i] != filter_comm[i])
			return false;
		if (comm[i] == 0)
			return true;
	}
	return true;
}

#endif /* CONNTRACER_FILTER_H */
