/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The ring buffer every object of the tracer writes to, the per-CPU count of
 * records that did not fit, and the wakeup policy, declared once for all
 * objects (tcplife, connect, drops, conntrack). Each object gets its own
 * copies; the loader replaces every `events` with one shared map
 * (MapReplacements) and sums every object's `lost_records`.
 */
#ifndef CONNTRACER_RECORDS_H
#define CONNTRACER_RECORDS_H

/* Wake the reader once this many bytes are waiting; below it, it polls. */
const volatile __u64 wakeup_bytes = 64 * 1024;

/* events: the shared ring buffer; its size here is only a placeholder. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22);
} events SEC(".maps");

/*
 * lost_records: per-CPU count of this object's records that did not fit in
 * the ring buffer (bpf_ringbuf_reserve failed). Only incremented here; user
 * space sums the CPUs and reports the total as lost events.
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} lost_records SEC(".maps");

/*
 * The record kinds (enum record_kind, conntracer.h) belong to the ring
 * buffer, not to any one object: this unused global puts the enum into the
 * BTF of every object that writes records, so that bpf2go generates each
 * object's own copy of the constants (tcplifeRecordKind, connectRecordKind,
 * ...) and the Go decoder of each object's records uses its own object's.
 */
const enum record_kind unused_record_kind __attribute__((unused));

/* percpu_inc adds one to slot of a per-CPU array of __u64 counters. */
static __always_inline void percpu_inc(void *map, __u32 slot)
{
	__u64 *n = bpf_map_lookup_elem(map, &slot);

	if (n)
		*n += 1;
}

static __always_inline void count_lost(void)
{
	percpu_inc(&lost_records, 0);
}

/*
 * submit_record submits a reserved record without waking the reader, unless
 * wakeup_bytes are waiting: a wakeup per record halves a busy box's
 * connection rate (measured), and the reader polls on a short timer.
 */
static __always_inline void submit_record(void *rec)
{
	__u64 wake = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= wakeup_bytes ?
			     BPF_RB_FORCE_WAKEUP :
			     BPF_RB_NO_WAKEUP;

	bpf_ringbuf_submit(rec, wake);
}

#endif /* CONNTRACER_RECORDS_H */
