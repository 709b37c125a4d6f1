// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * conntrack: the conntrack table's entries as the kernel inserts, removes
 * and refuses them, on the kernel's own conntrack functions.
 *
 * Design. Three functions of nf_conntrack (a module or built in) tell the
 * whole lifecycle of an entry, once per entry rather than per packet:
 *
 *   __nf_conntrack_confirm(skb)  the first packet of a flow leaves the
 *       netfilter hooks: its unconfirmed entry (skb->_nfct) is inserted into
 *       the table. Only a return of NF_ACCEPT with the same entry still on
 *       the skb is an insert: NF_DROP is insert_failed (clash, chain too
 *       long, dying), and on a clash the kernel may instead attach the skb to
 *       the entry already in the table (__nf_ct_resolve_clash) and free ours,
 *       which must not be reported as a second insert. So the entry is read
 *       at the call and compared at the return: the `confirming` map carries
 *       it across.
 *   nf_ct_delete(ct)  every removal (timeout through gc or lookup, early
 *       drop, conntrack -F, ctnetlink delete, RST/FIN handling) goes through
 *       it; it sets IPS_DYING with test_and_set_bit, so the call that finds
 *       the bit clear is the one that removes the entry (a confirmed one:
 *       unconfirmed entries are freed, never deleted). Two CPUs racing to
 *       delete one entry could both see the bit clear at entry; the window is
 *       a few instructions and both would report the same entry.
 *       Where the compiler split it (Debian's 5.10 and 7.2: the exported
 *       nf_ct_delete is test_and_set_bit plus a jump to nf_ct_delete.part.0,
 *       and nf_conntrack's own callers, gc, early drop and the flush of
 *       conntrack -F, test the bit themselves and call the part directly),
 *       a hook on nf_ct_delete misses most removals. There the removal is
 *       hooked one step further, at the unlink from the hash table that the
 *       winning call runs exactly once per entry, after the bit is set:
 *       __nf_ct_delete_from_lists (nf_ct_delete_from_lists on 5.10;
 *       static, but a function of its own on every kernel measured, in the
 *       module's BTF from 6.1). Its only caller is nf_ct_delete (or its
 *       part), on both of its paths, so each confirmed entry it is given is
 *       one removal, without the race above. The Go side picks the hook
 *       from kallsyms (conntrack_kernel.go: ctRemovalHook).
 *   __nf_conntrack_alloc(net, zone, orig, repl, gfp, hash)  returns
 *       ERR_PTR(-ENOMEM) when the namespace's table is full and early drop
 *       found nothing to evict (the "table full, dropping packet" case; also
 *       the rare failure of the slab allocation itself). Its arguments are
 *       the refused flow's tuples; the caller (init_conntrack) then counts the
 *       namespace's `drop` statistic and drops the packet.
 *
 * Two attach modes share the logic: fentry/fexit (trampolines, the
 * arguments at the return too) and kprobe/kretprobe for kernels that refuse
 * tracing programs. A kretprobe sees only the return value, so the kprobe
 * mode carries the arguments it needs across the call in the same maps,
 * keyed by task (see stash_key).
 *
 * Cost: one record per inserted, removed or refused entry, with the shared
 * no-wakeup policy; the confirm hook adds a hash update and delete per new
 * entry (fentry mode) or an in-place update per call (kprobe mode); nothing
 * per packet. struct nf_conn and the tuples are in vmlinux BTF on Debian's
 * 6.1, 6.12 and the 6.18 host even with nf_conntrack a module: CO-RE
 * resolves them there, and the loader finds the functions in the module's
 * BTF (fentry) or by name (kprobe).
 *
 * The kprobe programs read their arguments and return values with regs.h,
 * which picks the running kernel's architecture (x86-64 or arm64) at load
 * time, rather than with BPF_KPROBE, whose registers are fixed at compile
 * time (__TARGET_ARCH_*) while one object serves every architecture.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>
#include "kernel_defs.h"
#include "conntracer.h"
#include "records.h"
#include "filter.h"
#include "regs.h"

#define NF_ACCEPT 1         /* uapi/linux/netfilter.h */
#define NFCT_INFOMASK 7UL   /* linux/skbuff.h: the ctinfo bits of skb->_nfct */

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* One call's state carried from a function's entry to its return. */
struct ct_frame {
	__u64 p[3]; /* confirm: skb, entry; alloc: net, orig tuple, reply tuple */
};

/* The calls in progress under one key: a softirq can nest one more on the same task. */
struct ct_stack {
	struct ct_frame f[2];
	__u32 depth;
	__u32 pad;
};

/*
 * confirming: __nf_conntrack_confirm calls in progress. fentry mode: key is
 * the skb (one call per skb at a time), inserted at entry and deleted at
 * the return. kprobe mode: key is the task (stash_key), the entry stays
 * with depth 0 between calls so that a call costs an in-place update. LRU:
 * a return that never comes (program detached mid-call, kretprobe instances
 * exhausted) leaves an entry that the least-recently-used eviction removes;
 * calls in progress are the most recently used, never evicted first.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, __u64);
	__type(value, struct ct_stack);
} confirming SEC(".maps");

/*
 * allocating: __nf_conntrack_alloc calls in progress, kprobe mode only (an
 * fexit program has the arguments). Key is the task (stash_key); inserted by
 * the first call of a task and updated in place after; LRU as confirming.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, __u64);
	__type(value, struct ct_stack);
} allocating SEC(".maps");

/* Put the shared type in BTF so that bpf2go generates its Go type. */
const struct ct_entry_event *unused_ct_entry_event __attribute__((unused));

/*
 * stash_key names the task for the kprobe mode's stacks. Idle tasks all
 * have pid 0, one per CPU, and a softirq interrupting one runs on that CPU
 * without migrating: those are keyed by CPU.
 */
static __always_inline __u64 stash_key(void)
{
	__u64 id = bpf_get_current_pid_tgid();

	if ((__u32)id == 0)
		return (1ULL << 63) | bpf_get_smp_processor_id();
	return id;
}

/* push stores one call's frame; a full stack (a return was missed) drops its oldest. */
static __always_inline void push(void *map, __u64 key, struct ct_frame *fr)
{
	struct ct_stack *s = bpf_map_lookup_elem(map, &key);

	if (!s) {
		struct ct_stack n = { .f[0] = *fr, .depth = 1 };

		bpf_map_update_elem(map, &key, &n, BPF_ANY);
		return;
	}
	if (s->depth >= 2) {
		s->f[0] = s->f[1];
		s->depth = 1;
	}
	if (s->depth == 0)
		s->f[0] = *fr;
	else
		s->f[1] = *fr;
	s->depth++;
}

/* pop takes the innermost call's frame; remove deletes the emptied entry. */
static __always_inline bool pop(void *map, __u64 key, struct ct_frame *fr, bool remove)
{
	struct ct_stack *s = bpf_map_lookup_elem(map, &key);

	if (!s || s->depth == 0)
		return false;
	if (s->depth >= 2) {
		*fr = s->f[1];
		s->depth = 1;
		return true;
	}
	*fr = s->f[0];
	s->depth = 0;
	if (remove)
		bpf_map_delete_elem(map, &key);
	return true;
}

static __always_inline bool has_ports(__u8 proto)
{
	return proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_SCTP ||
	       proto == IPPROTO_DCCP || proto == IPPROTO_UDPLITE;
}

/* put_tuple copies one direction's addresses and ports into the record. */
static __always_inline void put_tuple(const struct nf_conntrack_tuple *kt, __u8 *saddr, __u8 *daddr,
				      __u16 *sport, __u16 *dport, struct ct_entry_event *e, bool first)
{
	struct nf_conntrack_tuple t;

	if (bpf_core_read(&t, sizeof(t), kt))
		return;
	if (first) {
		e->family = (__u8)t.src.l3num;
		e->proto = t.dst.protonum;
	}
	__builtin_memcpy(saddr, &t.src.u3, 16);
	__builtin_memcpy(daddr, &t.dst.u3, 16);
	if (has_ports(t.dst.protonum)) {
		*sport = bpf_ntohs(t.src.u.all);
		*dport = bpf_ntohs(t.dst.u.all);
	}
}

/*
 * emit sends one record for an entry, or for a refused flow's tuples (ct
 * NULL). All reads go through bpf_probe_read_kernel: the same code serves
 * fentry and kprobe programs.
 */
static __always_inline void emit(__u8 kind, struct nf_conn *ct, struct net *net,
				 const struct nf_conntrack_tuple *orig, const struct nf_conntrack_tuple *repl)
{
	struct ct_entry_event *e;
	__u32 netns;

	if (ct) {
		net = BPF_CORE_READ(ct, ct_net.net);
		orig = &ct->tuplehash[0].tuple;
		repl = &ct->tuplehash[1].tuple;
	}
	netns = BPF_CORE_READ(net, ns.inum);
	if (filter_netns && netns != filter_netns)
		return;
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_lost();
		return;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->kind = kind;
	e->netns = netns;
	e->time_ns = bpf_ktime_get_boot_ns();
	put_tuple(orig, e->orig_saddr, e->orig_daddr, &e->orig_sport, &e->orig_dport, e, true);
	if (repl)
		put_tuple(repl, e->reply_saddr, e->reply_daddr, &e->reply_sport, &e->reply_dport, e, false);
	if (ct && e->proto == IPPROTO_TCP)
		e->tcp_state = BPF_CORE_READ(ct, proto.tcp.state);
	submit_record(e);
}

/* skb_entry returns the skb's conntrack entry if the skb is in the original direction. */
static __always_inline __u64 skb_entry(struct sk_buff *skb)
{
	__u64 nfct = BPF_CORE_READ(skb, _nfct);

	if ((nfct & NFCT_INFOMASK) >= IP_CT_IS_REPLY)
		return 0; /* the kernel returns NF_ACCEPT without inserting */
	return nfct & ~NFCT_INFOMASK;
}

/* confirm_done reports an insert when confirm accepted the very entry it was given. */
static __always_inline void confirm_done(struct ct_frame *fr, long ret)
{
	/* Plain locals: inside BPF_CORE_READ every access is relocated, and
	 * ct_frame is not a kernel type. */
	struct sk_buff *skb = (struct sk_buff *)fr->p[0];
	struct nf_conn *ct = (struct nf_conn *)fr->p[1];

	if (ret != NF_ACCEPT || !ct)
		return;
	/* A clash resolved by attaching the skb to the winner: not ours. */
	if ((BPF_CORE_READ(skb, _nfct) & ~NFCT_INFOMASK) != (__u64)ct)
		return;
	if (!(BPF_CORE_READ(ct, status) & IPS_CONFIRMED))
		return;
	emit(RECORD_CT_NEW, ct, NULL, NULL, NULL);
}

static __always_inline void delete_start(struct nf_conn *ct)
{
	unsigned long status = BPF_CORE_READ(ct, status);

	/* Confirmed and not yet dying: this call removes it (see the top). */
	if ((status & (IPS_CONFIRMED | IPS_DYING)) == IPS_CONFIRMED)
		emit(RECORD_CT_DESTROY, ct, NULL, NULL, NULL);
}

/* unlink_start: the entry leaves the hash table (IPS_DYING already set by the caller). */
static __always_inline void unlink_start(struct nf_conn *ct)
{
	if (BPF_CORE_READ(ct, status) & IPS_CONFIRMED)
		emit(RECORD_CT_DESTROY, ct, NULL, NULL, NULL);
}

static __always_inline bool is_err(const void *p)
{
	return (unsigned long)p >= (unsigned long)-MAX_ERRNO;
}

/* fentry mode. */

SEC("fentry/__nf_conntrack_confirm")
int BPF_PROG(ct_confirm_enter, struct sk_buff *skb)
{
	struct ct_frame fr = { .p = { (__u64)skb, skb_entry(skb) } };

	if (fr.p[1])
		push(&confirming, (__u64)skb, &fr);
	return 0;
}

SEC("fexit/__nf_conntrack_confirm")
int BPF_PROG(ct_confirm_exit, struct sk_buff *skb, int ret)
{
	struct ct_frame fr;

	if (pop(&confirming, (__u64)skb, &fr, true))
		confirm_done(&fr, ret);
	return 0;
}

SEC("fentry/nf_ct_delete")
int BPF_PROG(ct_delete_enter, struct nf_conn *ct)
{
	delete_start(ct);
	return 0;
}

/* The target is set at load to the name kallsyms has (see the top). */
SEC("fentry/__nf_ct_delete_from_lists")
int BPF_PROG(ct_unlink_enter, struct nf_conn *ct)
{
	unlink_start(ct);
	return 0;
}

SEC("fexit/__nf_conntrack_alloc")
int BPF_PROG(ct_alloc_exit, struct net *net, const struct nf_conntrack_zone *zone,
	     const struct nf_conntrack_tuple *orig, const struct nf_conntrack_tuple *repl, gfp_t gfp,
	     u32 hash, struct nf_conn *ret)
{
	if (is_err(ret))
		emit(RECORD_CT_ALLOC_FAILED, NULL, net, orig, repl);
	return 0;
}

/* kprobe mode: the same, arguments carried to the return per task. */

SEC("kprobe/__nf_conntrack_confirm")
int ct_confirm_kp(struct pt_regs *ctx)
{
	struct sk_buff *skb = (struct sk_buff *)kprobe_arg(ctx, 0);
	/* Pushed even without an entry: every return pops one frame. */
	struct ct_frame fr = { .p = { (__u64)skb, skb_entry(skb) } };

	push(&confirming, stash_key(), &fr);
	return 0;
}

SEC("kretprobe/__nf_conntrack_confirm")
int ct_confirm_krp(struct pt_regs *ctx)
{
	int ret = (int)kprobe_ret(ctx);
	struct ct_frame fr;

	if (pop(&confirming, stash_key(), &fr, false))
		confirm_done(&fr, ret);
	return 0;
}

SEC("kprobe/nf_ct_delete")
int ct_delete_kp(struct pt_regs *ctx)
{
	delete_start((struct nf_conn *)kprobe_arg(ctx, 0));
	return 0;
}

/* Attached to __nf_ct_delete_from_lists or nf_ct_delete_from_lists, as kallsyms says. */
SEC("kprobe/__nf_ct_delete_from_lists")
int ct_unlink_kp(struct pt_regs *ctx)
{
	unlink_start((struct nf_conn *)kprobe_arg(ctx, 0));
	return 0;
}

/* __nf_conntrack_alloc(net, zone, orig, repl, gfp, hash) */
SEC("kprobe/__nf_conntrack_alloc")
int ct_alloc_kp(struct pt_regs *ctx)
{
	struct ct_frame fr = { .p = { kprobe_arg(ctx, 0), kprobe_arg(ctx, 2), kprobe_arg(ctx, 3) } };

	push(&allocating, stash_key(), &fr);
	return 0;
}

SEC("kretprobe/__nf_conntrack_alloc")
int ct_alloc_krp(struct pt_regs *ctx)
{
	struct nf_conn *ret = (struct nf_conn *)kprobe_ret(ctx);
	struct ct_frame fr;

	if (pop(&allocating, stash_key(), &fr, false) && is_err(ret))
		emit(RECORD_CT_ALLOC_FAILED, NULL, (struct net *)fr.p[0],
		     (const struct nf_conntrack_tuple *)fr.p[1], (const struct nf_conntrack_tuple *)fr.p[2]);
	return 0;
}
