// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * drops: which packets the kernel dropped, where, and why.
 *
 * Design. skb:kfree_skb fires for every packet freed with a drop reason
 * (Linux 5.17+). Normal frees (SKB_CONSUMED, and NOT_SPECIFIED, which most
 * "nothing wrong" paths still use) are ignored unless `keep_normal` is set,
 * so a box that drops nothing pays one comparison per kfree_skb.
 *
 * A drop storm must neither lose counts nor flood the ring buffer. Every
 * drop is therefore counted in the kernel, in drop_counts, per
 * (location, reason, netns, owner): user space reads that map once a second
 * and its totals are exact. Individual records (tuple, interface, owner)
 * are samples: at most `records_per_sec` per CPU leave the kernel, and the
 * drops that were counted but not sent are counted in unsent_records.
 *
 * Reasons are resolved by name on the running kernel (bpf_core_enum_value):
 * their numbers differ between kernels (NO_SOCKET is 2 on 6.1, 3 on 6.12).
 * The record carries the raw number; user space names it from the kernel's
 * BTF.
 *
 * Owners. A packet that still has its socket (skb->sk: outgoing packets,
 * e.g. a SYN that conntrack refused inside connect()) is looked up in
 * tcplife's socks map, which the loader shares with this object; an
 * incoming TCP packet without one is matched with tcplife's listeners map
 * on (netns, destination port), which names the listener of a refused
 * handshake (TCP_LISTEN_OVERFLOW).
 *
 * All reads go through bpf_probe_read_kernel (BPF_CORE_READ), so one
 * handler serves the three attach modes (tp_btf, raw_tracepoint,
 * tracepoint): the cost is paid only for packets that are really dropped.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>
#include "kernel_defs.h"
#include "conntracer.h"
#include "sockstate.h"
#include "records.h"
#include "filter.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Configuration, set by the loader before load. Of filter.h's filters only
 * filter_netns applies to drops. */
const volatile __u8 keep_normal = 0;       /* also count NOT_SPECIFIED and SKB_CONSUMED */
const volatile __u32 records_per_sec = 0;  /* per CPU; 0: no limit */

/*
 * unsent_records: per-CPU count of drops not sent as records because this
 * CPU had already sent records_per_sec in the current second. Only
 * incremented here; user space sums it.
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} unsent_records SEC(".maps");

/* The rate limiter's state for one CPU: a one-second window. */
struct rate_window {
	__u64 start_ns;
	__u64 sent;
};

/*
 * rate: per-CPU window of the record rate limit. A single slot per CPU,
 * rewritten in place: nothing to insert or delete.
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct rate_window);
} rate SEC(".maps");

/*
 * drop_counts: exact number of drops per (location, reason, netns, owner,
 * NO_CT), per CPU. Inserted here on the first drop of a key and only
 * incremented after; user space reads (never deletes) it every second and
 * reports cumulative totals. LRU: the key space is small (a few dozen drop
 * sites times namespaces) but bounded only by what the box does, so the
 * least recently dropped-at key is evicted rather than refusing new ones.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_PERCPU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct drop_key);
	__type(value, __u64);
} drop_counts SEC(".maps");

/*
 * socks and listeners (sockstate.h): tcplife's tables, which the loader
 * shares with this object; only owners are looked up in them here.
 */

/* Put the shared types in BTF so that bpf2go generates their Go types. */
const struct drop_event *unused_drop_event __attribute__((unused));
const struct drop_key *unused_drop_key __attribute__((unused));
const enum drop_flags unused_drop_flags __attribute__((unused));

/* may_send reports whether this CPU is still under its record budget. */
static __always_inline bool may_send(__u64 now)
{
	__u32 zero = 0;
	struct rate_window *w;

	if (!records_per_sec)
		return true;
	w = bpf_map_lookup_elem(&rate, &zero);
	if (!w)
		return false;
	if (now - w->start_ns >= 1000000000ULL) {
		w->start_ns = now;
		w->sent = 0;
	}
	if (w->sent >= records_per_sec)
		return false;
	w->sent++;
	return true;
}

/* parse_headers fills family, addresses, protocol and ports from the packet. */
static __always_inline void parse_headers(struct sk_buff *skb, struct drop_event *e)
{
	unsigned char *head = BPF_CORE_READ(skb, head);
	__u16 nh = BPF_CORE_READ(skb, network_header);
	__u16 l4off;
	__u8 ver = 0;
	struct {
		__be16 sport;
		__be16 dport;
		__u8 rest[9];
		__u8 flags;
	} l4 = {};

	if (!head || nh == (__u16)~0U)
		return;
	if (bpf_probe_read_kernel(&ver, 1, head + nh))
		return;
	ver >>= 4;
	if (ver == 4 && (e->protocol == ETH_P_IP || e->protocol == 0)) {
		struct iphdr ip;

		if (bpf_probe_read_kernel(&ip, sizeof(ip), head + nh))
			return;
		e->family = AF_INET;
		e->l4proto = ip.protocol;
		__builtin_memcpy(e->saddr, &ip.saddr, 4);
		__builtin_memcpy(e->daddr, &ip.daddr, 4);
		e->flags |= DROP_HAS_ADDRS;
		/* Only the first fragment carries the transport header. */
		if (ip.frag_off & bpf_htons(0x1fff))
			return;
		l4off = nh + ip.ihl * 4;
	} else if (ver == 6 && (e->protocol == ETH_P_IPV6 || e->protocol == 0)) {
		struct ipv6hdr ip6;

		if (bpf_probe_read_kernel(&ip6, sizeof(ip6), head + nh))
			return;
		e->family = AF_INET6;
		e->l4proto = ip6.nexthdr; /* extension headers are not walked */
		__builtin_memcpy(e->saddr, &ip6.saddr, 16);
		__builtin_memcpy(e->daddr, &ip6.daddr, 16);
		e->flags |= DROP_HAS_ADDRS;
		l4off = nh + sizeof(ip6);
	} else {
		return;
	}
	if (e->l4proto == IPPROTO_TCP) {
		if (bpf_probe_read_kernel(&l4, sizeof(l4), head + l4off))
			return;
		e->tcp_flags = l4.flags;
	} else if (e->l4proto == IPPROTO_UDP) {
		if (bpf_probe_read_kernel(&l4, 4, head + l4off))
			return;
	} else {
		return;
	}
	e->sport = bpf_ntohs(l4.sport);
	e->dport = bpf_ntohs(l4.dport);
	e->flags |= DROP_HAS_PORTS;
}

/* find_owner names the process behind the packet, if tcplife knows it. */
static __always_inline void find_owner(struct sk_buff *skb, struct drop_event *e)
{
	__u64 sk = (__u64)BPF_CORE_READ(skb, sk);
	struct owner *o = NULL;

	if (sk) {
		struct sock_state *st = bpf_map_lookup_elem(&socks, &sk);

		if (st) {
			o = &st->owner;
			e->flags |= DROP_OWNER_SOCKET;
		}
	}
	if (!o && e->l4proto == IPPROTO_TCP && (e->flags & DROP_HAS_PORTS)) {
		/* An incoming segment: its destination port is the local one. */
		struct listener_key lk = { .netns = e->netns, .port = e->dport };
		struct listener_owner *lo = bpf_map_lookup_elem(&listeners, &lk);

		if (lo) {
			o = &lo->owner;
			e->flags |= DROP_OWNER_LISTENER;
		}
	}
	if (o && o->tgid) {
		e->tgid = o->tgid;
		__builtin_memcpy(e->comm, o->comm, TASK_COMM_LEN);
	} else {
		e->flags &= ~(DROP_OWNER_SOCKET | DROP_OWNER_LISTENER);
	}
}

/* Whether this kernel's kfree_skb carries a drop reason (5.17+). */
static __always_inline bool has_drop_reason(void)
{
	return bpf_core_enum_value_exists(enum skb_drop_reason, SKB_DROP_REASON_NOT_SPECIFIED);
}

static __always_inline int handle_drop(struct sk_buff *skb, __u64 location, __u32 reason)
{
	struct drop_event e = {};
	struct drop_key key = {};
	struct net_device *dev;
	struct drop_event *out;
	__u64 *count, one = 1;
	__u64 now;

	/* Before 5.17 kfree_skb has no reason and enum skb_drop_reason does not
	 * exist: every kfree_skb counts (normal frees went to consume_skb), by
	 * location only. The check is a CO-RE constant: the other branch is
	 * dead code the verifier never walks. */
	if (!keep_normal && has_drop_reason()) {
		if (reason == 0 /* SKB_NOT_DROPPED_YET */ ||
		    reason == bpf_core_enum_value(enum skb_drop_reason, SKB_DROP_REASON_NOT_SPECIFIED))
			return 0;
		/* SKB_CONSUMED exists since 6.11 (kfree_skb_reason for normal frees). */
		if (bpf_core_enum_value_exists(enum skb_drop_reason, SKB_CONSUMED) &&
		    reason == bpf_core_enum_value(enum skb_drop_reason, SKB_CONSUMED))
			return 0;
	}
	if (!skb)
		return 0;

	dev = BPF_CORE_READ(skb, dev);
	if (dev) {
		e.netns = BPF_CORE_READ(dev, nd_net.net, ns.inum);
		e.ifindex = BPF_CORE_READ(dev, ifindex);
	} else {
		struct sock *sk = BPF_CORE_READ(skb, sk);

		if (sk)
			e.netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	}
	if (filter_netns && e.netns != filter_netns)
		return 0;

	e.kind = RECORD_DROP;
	e.reason = reason;
	e.location = location;
	e.protocol = bpf_ntohs(BPF_CORE_READ(skb, protocol));
	parse_headers(skb, &e);
	find_owner(skb, &e);

	/*
	 * A conntrack table-full drop is a NETFILTER_DROP of a packet that
	 * conntrack could not attach an entry to (init_conntrack failed, so
	 * skb->_nfct stays 0). A rule's drop of a tracked packet has one. User
	 * space confirms with the namespace's conntrack `drop` statistic.
	 */
	if (has_drop_reason() &&
	    reason == bpf_core_enum_value(enum skb_drop_reason, SKB_DROP_REASON_NETFILTER_DROP) &&
	    bpf_core_field_exists(skb->_nfct) && BPF_CORE_READ(skb, _nfct) == 0)
		e.flags |= DROP_NO_CT;

	key.location = location;
	key.reason = reason;
	key.netns = e.netns;
	key.tgid = e.tgid;
	key.flags = e.flags & DROP_NO_CT;
	count = bpf_map_lookup_elem(&drop_counts, &key);
	if (count)
		*count += 1;
	else
		bpf_map_update_elem(&drop_counts, &key, &one, BPF_NOEXIST);

	now = bpf_ktime_get_boot_ns();
	if (!may_send(now)) {
		percpu_inc(&unsent_records, 0);
		return 0;
	}
	out = bpf_ringbuf_reserve(&events, sizeof(*out), 0);
	if (!out) {
		count_lost();
		return 0;
	}
	e.time_ns = now;
	__builtin_memcpy(out, &e, sizeof(e));
	submit_record(out);
	return 0;
}

/* The reason argument is read only where it exists: the verifier refuses
 * (tp_btf) or the attach refuses (raw tracepoint: max_ctx_offset) a read
 * past the tracepoint's arguments, and handle_drop reads skb by probe
 * reads only, so the untyped ctx[0] is enough. */
SEC("tp_btf/kfree_skb")
int ct_kfree_skb_btf(unsigned long long *ctx)
{
	__u32 reason = has_drop_reason() ? (__u32)ctx[2] : 0;

	return handle_drop((struct sk_buff *)ctx[0], ctx[1], reason);
}

SEC("raw_tracepoint/kfree_skb")
int ct_kfree_skb_raw(struct bpf_raw_tracepoint_args *ctx)
{
	__u32 reason = has_drop_reason() ? (__u32)ctx->args[2] : 0;

	return handle_drop((struct sk_buff *)ctx->args[0], ctx->args[1], reason);
}

SEC("tracepoint/skb/kfree_skb")
int ct_kfree_skb_tp(struct trace_event_raw_kfree_skb *ctx)
{
	__u32 reason = bpf_core_field_exists(ctx->reason) ? (__u32)ctx->reason : 0;

	return handle_drop((struct sk_buff *)ctx->skbaddr, (__u64)ctx->location, reason);
}
