// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * tcplife: one record per TCP connection, sent when it ends.
 *
 * Design. Every state change of every TCP socket goes through
 * sock:inet_sock_set_state. Sending each change to user space halves the
 * connection rate of a busy box (measured: 0.50-0.60x with a wakeup per
 * event), so the state of each connection is kept here, keyed by its
 * struct sock *, and a single conn_event leaves the kernel when the socket
 * reaches TCP_CLOSE (about 0.96x). The reader is never woken per record:
 * records are submitted with BPF_RB_NO_WAKEUP until `wakeup_bytes` are
 * waiting, and user space also polls on a short timer.
 *
 * Owner attribution. State changes into ESTABLISHED (passive side) and most
 * closes run in softirq, where `current` is whoever happened to be on the
 * CPU. The owner is therefore captured only in process context:
 *   - active opens on the way into SYN_SENT (inside connect());
 *   - passive opens when the process accept()s the socket (syscall exit
 *     tracepoints walk the new fd to its struct sock); until then the
 *     listening process (captured at listen()) stands in.
 * The close record carries that stored owner, whatever context it runs in.
 *
 * The state tracepoint is attached in one of three ways, chosen at run time
 * by the loader (tp_btf, else raw_tracepoint, else classic tracepoint); all
 * three share handle_state() and read the socket through CO-RE
 * (BPF_CORE_READ), which is valid in each program type.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>
#include "conntracer.h"

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define EPIPE 32
#define ECONNRESET 104

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Configuration, set by the loader before load. Zero means "no filter". */
const volatile __u32 filter_netns = 0;
const volatile __u32 filter_tgid = 0;
const volatile __u16 filter_port = 0;
const volatile __u8 filter_family = 0;
const volatile __u8 filter_comm_set = 0;
const volatile __u8 filter_comm[TASK_COMM_LEN] = {};
const volatile __u64 filter_cgroup_id = 0;
const volatile __u32 filter_cgroup_level = 0;
/* Wake the reader once this many bytes are waiting; below it, it polls. */
const volatile __u64 wakeup_bytes = 64 * 1024;

/*
 * events: the ring buffer all of the tracer's programs write to. The loader
 * creates it once and hands it to every object, so its size here is only a
 * placeholder.
 */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22);
} events SEC(".maps");

/*
 * lost_records: per-CPU count of records that did not fit in the ring
 * buffer (bpf_ringbuf_reserve failed). Only incremented here; user space
 * sums the CPUs and reports the total as lost events.
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} lost_records SEC(".maps");

/*
 * The record struct and enums of conntracer.h are only used through casts and
 * as constants, which leaves them out of BTF; these unused globals put them
 * there so that bpf2go -type generates
 * their Go constants (the Go side never mirrors a C definition by hand).
 */
const struct conn_event *unused_conn_event __attribute__((unused));
const enum record_kind unused_record_kind __attribute__((unused));
const enum conn_role unused_conn_role __attribute__((unused));
const enum conn_end_state unused_conn_end __attribute__((unused));
const enum conn_side unused_conn_side __attribute__((unused));
const enum conn_flags unused_conn_flags __attribute__((unused));

/* The process that owns a socket, captured in process context. */
struct owner {
	__u64 cgroup_id;
	__u64 start_ns;
	__u32 tgid;
	__u32 tid;
	__u8 comm[TASK_COMM_LEN];
};

/* Per-connection state while the connection lives. */
struct sock_state {
	struct owner owner;
	__u64 open_ns;
	__u64 tx_base; /* tcp_sock.bytes_acked at ESTABLISHED (counts our SYN) */
	__u64 rx_base; /* tcp_sock.bytes_received at ESTABLISHED */
	__u8 role;
	__u8 flags;
	__u8 closed_by;
	__u8 pad[5];
};

/*
 * socks: state of every TCP connection seen, keyed by its struct sock *.
 * Inserted at SYN_SENT (active) or SYN_RECV (passive), or at the first
 * transition of a socket that was open before tracing started; updated by
 * later transitions and by accept(); deleted when the socket reaches
 * TCP_CLOSE. LRU: a missed CLOSE (a program detached mid-flight, a socket
 * torn down without passing through CLOSE) cannot leak an entry, the oldest
 * is evicted instead. The pointer is reused by later sockets, which is why
 * every record also carries its open time.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 131072);
	__type(key, __u64);
	__type(value, struct sock_state);
} socks SEC(".maps");

struct listener_key {
	__u32 netns;
	__u16 port;
	__u16 pad;
};

struct listener_owner {
	struct owner owner;
	__u8 flags; /* CONN_CGROUP_MATCH */
	__u8 pad[7];
};

/*
 * listeners: the process that called listen() on each (netns, port), so that
 * a connection closed before anyone accepted it is still attributed.
 * Inserted at -> LISTEN (process context, inside listen()); deleted at
 * LISTEN -> CLOSE. With SO_REUSEPORT several listeners share a port: the
 * last one wins, and the first to close removes the entry (the next
 * accept() still attributes exactly). LRU so that it cannot grow unbounded.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, struct listener_key);
	__type(value, struct listener_owner);
} listeners SEC(".maps");

static __always_inline __u8 owner_from_current(struct owner *o)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct task_struct *leader = BPF_CORE_READ(task, group_leader);
	__u64 id = bpf_get_current_pid_tgid();

	o->tgid = id >> 32;
	o->tid = (__u32)id;
	o->cgroup_id = bpf_get_current_cgroup_id();
	/* The process's identity is its leader's start time, as in /proc/PID/stat. */
	o->start_ns = BPF_CORE_READ(leader, start_boottime);
	/* The leader's comm names the process; a thread may have renamed itself. */
	bpf_probe_read_kernel_str(o->comm, sizeof(o->comm), &leader->comm);

	if (filter_cgroup_id &&
	    bpf_get_current_ancestor_cgroup_id(filter_cgroup_level) == filter_cgroup_id)
		return CONN_CGROUP_MATCH;
	return 0;
}

/* Kernels before the move of sk_flags into struct sock_common (as skc_flags)
 * keep it in struct sock; pick whichever the running kernel has. */
struct sock___flags_in_sock {
	unsigned long sk_flags;
} __attribute__((preserve_access_index));

static __always_inline unsigned long sock_flags(const struct sock *sk)
{
	if (bpf_core_field_exists(sk->__sk_common.skc_flags))
		return BPF_CORE_READ(sk, __sk_common.skc_flags);
	return BPF_CORE_READ((struct sock___flags_in_sock *)sk, sk_flags);
}

static __always_inline __u32 sock_netns(const struct sock *sk)
{
	return BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
}

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

static __always_inline void count_lost(void)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&lost_records, &zero);

	if (n)
		*n += 1;
}

/* Classify the end of a connection from the state it left for CLOSE. */
static __always_inline __u8 end_state(int oldstate, int err, bool fin_in, bool fin_acked,
				      __u8 flags, __u8 *closed_by)
{
	if (oldstate == TCP_SYN_SENT) {
		*closed_by = SIDE_NONE;
		return END_CONNECT_FAILED;
	}
	if (err) {
		if (!*closed_by && (err == ECONNRESET || err == EPIPE))
			*closed_by = SIDE_REMOTE;
		return END_RESET;
	}
	/*
	 * tcp_time_wait() hands the connection to a timewait socket and then
	 * closes the full socket (tcp_done -> TCP_CLOSE): the tracepoint never
	 * shows TIME_WAIT itself. It is reached from FIN_WAIT2 or CLOSING once
	 * the peer's FIN was received (tcp_fin sets SOCK_DONE). An orphaned
	 * FIN_WAIT2 that times out without the peer's FIN is not TIME_WAIT
	 * (ss shows its timewait socket as FIN-WAIT-2).
	 */
	if ((oldstate == TCP_FIN_WAIT2 || oldstate == TCP_CLOSING) && fin_in)
		return END_TIME_WAIT;
	if (oldstate == TCP_LAST_ACK && fin_acked)
		return (flags & CONN_CLOSE_WAIT) ? END_CLOSE_WAIT : END_CLOSED;
	if (oldstate == TCP_ESTABLISHED || oldstate == TCP_CLOSE_WAIT ||
	    oldstate == TCP_FIN_WAIT1 || oldstate == TCP_SYN_RECV ||
	    oldstate == TCP_LAST_ACK || oldstate == TCP_CLOSING) {
		/* Aborted without a socket error: this side sent the RST
		 * (SO_LINGER 0, or closed with unread data). */
		if (!*closed_by)
			*closed_by = SIDE_LOCAL;
		return END_RESET;
	}
	return END_CLOSED;
}

static __always_inline void emit_close(struct sock *sk, struct sock_state *st, int oldstate,
				       __u16 family)
{
	struct inet_sock *inet = (struct inet_sock *)sk;
	struct tcp_sock *tp = (struct tcp_sock *)sk;
	__u32 netns = sock_netns(sk);
	__u16 sport = bpf_ntohs(BPF_CORE_READ(inet, inet_sport));
	__u16 dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	__u8 flags = st->flags;

	if (filter_netns && netns != filter_netns)
		return;
	if (filter_family && family != filter_family)
		return;
	if (filter_port && sport != filter_port && dport != filter_port)
		return;
	/* Owner filters run here only when the owner is known; otherwise user
	 * space attributes the socket (start-up snapshot) and filters then. */
	if (flags & (CONN_OWNER_CONNECT | CONN_OWNER_ACCEPT | CONN_OWNER_LISTENER)) {
		if (filter_tgid && st->owner.tgid != filter_tgid)
			return;
		if (filter_comm_set && !comm_matches(st->owner.comm))
			return;
		if (filter_cgroup_id && !(flags & CONN_CGROUP_MATCH))
			return;
	}

	struct conn_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_lost();
		return;
	}
	__builtin_memset(e, 0, sizeof(*e));

	int err = BPF_CORE_READ(sk, sk_err);
	unsigned long sk_flags = sock_flags(sk);
	bool fin_in = sk_flags & (1UL << bpf_core_enum_value(enum sock_flags, SOCK_DONE));
	/* Our FIN counts in bytes_acked once acked: the whole send sequence,
	 * FIN included, is acked when snd_una reached write_seq. */
	bool fin_acked = (flags & CONN_FIN_SENT) &&
			 BPF_CORE_READ(tp, snd_una) == BPF_CORE_READ(tp, write_seq);
	__u64 acked = BPF_CORE_READ(tp, bytes_acked);
	__u64 received = BPF_CORE_READ(tp, bytes_received);
	__u64 tx_sub = st->tx_base + fin_acked;
	__u64 rx_sub = st->rx_base + fin_in;
	__u8 closed_by = st->closed_by;

	e->kind = RECORD_CONN_CLOSED;
	e->role = st->role;
	e->end_state = end_state(oldstate, err, fin_in, fin_acked, flags, &closed_by);
	e->closed_by = closed_by;
	e->last_state = oldstate;
	e->flags = flags;
	e->error = err > 0 && err < 256 ? err : 0;
	e->family = family;
	e->open_ns = st->open_ns;
	e->close_ns = bpf_ktime_get_boot_ns();
	e->cookie = BPF_CORE_READ(sk, __sk_common.skc_cookie.counter);
	e->cgroup_id = st->owner.cgroup_id;
	e->proc_start_ns = st->owner.start_ns;
	e->tx_bytes = acked > tx_sub ? acked - tx_sub : 0;
	e->rx_bytes = received > rx_sub ? received - rx_sub : 0;
	e->netns = netns;
	e->tgid = st->owner.tgid;
	e->tid = st->owner.tid;
	e->sport = sport;
	e->dport = dport;
	if (family == AF_INET) {
		BPF_CORE_READ_INTO(&e->saddr, sk, __sk_common.skc_rcv_saddr);
		BPF_CORE_READ_INTO(&e->daddr, sk, __sk_common.skc_daddr);
	} else {
		BPF_CORE_READ_INTO(&e->saddr, sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8);
		BPF_CORE_READ_INTO(&e->daddr, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr8);
	}
	__builtin_memcpy(e->comm, st->owner.comm, sizeof(e->comm));

	__u64 wake = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= wakeup_bytes ?
			     BPF_RB_FORCE_WAKEUP :
			     BPF_RB_NO_WAKEUP;
	bpf_ringbuf_submit(e, wake);
}

static __always_inline int handle_state(struct sock *sk, int oldstate, int newstate)
{
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	struct sock_state *st;
	__u64 key = (__u64)sk;

	if (family != AF_INET && family != AF_INET6)
		return 0;
	if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;

	/* A passive open: the child socket is cloned from the listener, so
	 * the transition reads LISTEN -> SYN_RECV. Runs in softirq. */
	if (newstate == TCP_SYN_RECV) {
		struct sock_state s = { .role = ROLE_PASSIVE, .flags = CONN_SEEN_OPEN };
		struct listener_key lk = {
			.netns = sock_netns(sk),
			.port = BPF_CORE_READ(sk, __sk_common.skc_num),
		};
		struct listener_owner *lo = bpf_map_lookup_elem(&listeners, &lk);

		if (lo) {
			s.owner = lo->owner;
			s.flags |= CONN_OWNER_LISTENER | lo->flags;
		}
		s.open_ns = bpf_ktime_get_boot_ns();
		bpf_map_update_elem(&socks, &key, &s, BPF_ANY);
		return 0;
	}
	if (newstate == TCP_LISTEN) {
		struct listener_owner lo = {};
		struct listener_key lk = {
			.netns = sock_netns(sk),
			.port = BPF_CORE_READ(sk, __sk_common.skc_num),
		};

		lo.flags = owner_from_current(&lo.owner);
		bpf_map_update_elem(&listeners, &lk, &lo, BPF_ANY);
		return 0;
	}
	if (oldstate == TCP_LISTEN) {
		struct listener_key lk = {
			.netns = sock_netns(sk),
			.port = BPF_CORE_READ(sk, __sk_common.skc_num),
		};

		bpf_map_delete_elem(&listeners, &lk);
		return 0;
	}
	/* An active open, inside connect(): current is the owner. */
	if (newstate == TCP_SYN_SENT) {
		struct sock_state s = { .role = ROLE_ACTIVE };

		s.flags = CONN_SEEN_OPEN | CONN_OWNER_CONNECT | owner_from_current(&s.owner);
		s.open_ns = bpf_ktime_get_boot_ns();
		bpf_map_update_elem(&socks, &key, &s, BPF_ANY);
		return 0;
	}

	st = bpf_map_lookup_elem(&socks, &key);
	if (!st) {
		/* Open before tracing started (or evicted): track it from
		 * here with what can be known; user space names the owner. */
		struct sock_state s = {};

		if (newstate == TCP_CLOSE) {
			emit_close(sk, &s, oldstate, family);
			return 0;
		}
		bpf_map_update_elem(&socks, &key, &s, BPF_NOEXIST);
		st = bpf_map_lookup_elem(&socks, &key);
		if (!st)
			return 0;
	}

	switch (newstate) {
	case TCP_ESTABLISHED:
		st->flags |= CONN_ESTABLISHED;
		st->tx_base = BPF_CORE_READ((struct tcp_sock *)sk, bytes_acked);
		st->rx_base = BPF_CORE_READ((struct tcp_sock *)sk, bytes_received);
		break;
	case TCP_FIN_WAIT1:
		st->flags |= CONN_FIN_SENT;
		if (!st->closed_by)
			st->closed_by = SIDE_LOCAL;
		break;
	case TCP_CLOSE_WAIT:
		st->flags |= CONN_CLOSE_WAIT;
		if (!st->closed_by)
			st->closed_by = SIDE_REMOTE;
		break;
	case TCP_LAST_ACK:
		st->flags |= CONN_FIN_SENT;
		break;
	case TCP_CLOSE:
		emit_close(sk, st, oldstate, family);
		bpf_map_delete_elem(&socks, &key);
		break;
	}
	return 0;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(ct_state_btf, struct sock *sk, int oldstate, int newstate)
{
	return handle_state(sk, oldstate, newstate);
}

SEC("raw_tracepoint/inet_sock_set_state")
int ct_state_raw(struct bpf_raw_tracepoint_args *ctx)
{
	return handle_state((struct sock *)ctx->args[0], (int)ctx->args[1], (int)ctx->args[2]);
}

SEC("tracepoint/sock/inet_sock_set_state")
int ct_state_tp(struct trace_event_raw_inet_sock_set_state *ctx)
{
	if (ctx->protocol != IPPROTO_TCP)
		return 0;
	return handle_state((struct sock *)ctx->skaddr, ctx->oldstate, ctx->newstate);
}

/*
 * Passive owner: when accept() or accept4() returns a descriptor, walk
 * current->files to its struct sock. If that socket is one we track as a
 * passive open, the accepting process becomes its owner. A descriptor that
 * is not a socket yields a pointer that is simply not a key in socks.
 */
struct syscall_exit_ctx {
	__u64 common;  /* common_type, common_flags, common_preempt_count, common_pid */
	__s32 nr;      /* __syscall_nr */
	__s32 pad;
	__s64 ret;
};

static __always_inline int handle_accept(long fd)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt;
	struct file **fds;
	struct file *file = NULL;
	struct socket *sock;
	struct sock_state *st;
	__u64 key;

	if (fd < 0)
		return 0;
	fdt = BPF_CORE_READ(task, files, fdt);
	if ((unsigned long)fd >= BPF_CORE_READ(fdt, max_fds))
		return 0;
	fds = BPF_CORE_READ(fdt, fd);
	bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]);
	if (!file)
		return 0;
	sock = BPF_CORE_READ(file, private_data);
	if (!sock)
		return 0;
	key = (__u64)BPF_CORE_READ(sock, sk);
	st = bpf_map_lookup_elem(&socks, &key);
	if (!st || st->role != ROLE_PASSIVE)
		return 0;
	__u8 cg = owner_from_current(&st->owner);
	st->flags = (st->flags & ~(CONN_OWNER_LISTENER | CONN_CGROUP_MATCH)) | CONN_OWNER_ACCEPT | cg;
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_accept4")
int ct_accept4_exit(struct syscall_exit_ctx *ctx)
{
	return handle_accept(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_accept")
int ct_accept_exit(struct syscall_exit_ctx *ctx)
{
	return handle_accept(ctx->ret);
}
