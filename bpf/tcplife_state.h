/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The per-state-change logic of tcplife, written once and compiled twice by
 * tcplife.bpf.c:
 *   - MODE btf:   for tp_btf, where the verifier knows the socket's BTF type,
 *                 so fields are plain loads (a few ns each);
 *   - MODE probe: for raw_tracepoint and classic tracepoint, where the socket
 *                 is an opaque pointer and every field costs a
 *                 bpf_probe_read_kernel call (about 25 ns each, measured).
 * The including file defines, before each inclusion:
 *   FN(name)           the mode-suffixed name of a function
 *   RD(tp, path)       read a field of struct tcp_sock *tp
 *   RD2(tp, path, p2)  read p2 through the pointer at path
 *   RD_INTO(dst, tp, path)  copy a field into dst
 *   CURRENT_TASK()     the current task, as a pointer RD can read through
 *   COMM_INTO(dst, task)  copy task->comm into dst (16 bytes)
 *   TCP_SK(tp)         tp as a pointer through which the fields that only
 *                      struct tcp_sock has can be read, or NULL: the caller
 *                      passes a struct sock * known to be TCP, and in tp_btf
 *                      mode the verifier only lets struct sock's own fields
 *                      be read through it
 * All field paths are CO-RE relocated in both modes.
 */

/* Shortcuts into struct tcp_sock -> inet_connection_sock -> inet_sock -> sock. */
#ifndef SKC
#define SKC inet_conn.icsk_inet.sk.__sk_common
#define SK inet_conn.icsk_inet.sk
#define INET inet_conn.icsk_inet
#endif

static __always_inline __u8 FN(owner_from_current)(struct owner *o)
{
	struct task_struct *task = CURRENT_TASK();
	struct task_struct *leader = RD(task, group_leader);
	__u64 id = bpf_get_current_pid_tgid();

	o->tgid = id >> 32;
	o->tid = (__u32)id;
	o->cgroup_id = bpf_get_current_cgroup_id();
	/* The process's identity is its leader's start time, as in /proc/PID/stat. */
	o->start_ns = RD(leader, start_boottime);
	/* The leader's comm names the process; a thread may have renamed itself. */
	COMM_INTO(o->comm, leader);

	if (filter_cgroup_id &&
	    bpf_get_current_ancestor_cgroup_id(filter_cgroup_level) == filter_cgroup_id)
		return CONN_CGROUP_MATCH;
	return 0;
}

static __always_inline __u32 FN(sock_netns)(struct tcp_sock *tp)
{
	return RD2(tp, SKC.skc_net.net, ns.inum);
}

static __always_inline unsigned long FN(sock_flags)(struct tcp_sock *tp)
{
	/* Kernels before the move of sk_flags into struct sock_common (as
	 * skc_flags) keep it in struct sock; use whichever this one has. */
	if (bpf_core_field_exists(tp->SKC.skc_flags))
		return RD(tp, SKC.skc_flags);
	return RD((struct tcp_sock___flags_in_sock *)tp, inet_conn.icsk_inet.sk.sk_flags);
}

static __always_inline void FN(emit_close)(struct tcp_sock *tp, struct sock_state *st,
					   int oldstate, __u16 family)
{
	struct tcp_sock *tcp = TCP_SK(tp);
	__u8 flags = st->flags;
	/* A connection that reached ESTABLISHED has had its whole tuple
	 * stored in st (fill_tuple, again at ESTABLISHED): take it from there, lines
	 * the map lookup just brought in, rather than from the socket's
	 * (the namespace alone is two more dependent loads). */
	bool stored = flags & CONN_ESTABLISHED;
	__u32 netns = stored ? st->netns : FN(sock_netns)(tp);
	/* inet_sport, not skc_num: by the time the tracepoint reports CLOSE,
	 * inet_put_port() has zeroed inet_num. */
	__u16 sport = stored ? st->sport : tcp ? bpf_ntohs(RD(tcp, INET.inet_sport)) : 0;
	__u16 dport = stored ? st->dport : bpf_ntohs(RD(tp, SKC.skc_dport));

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
		count_lost_nested();
		return;
	}

	int err = RD(tp, SK.sk_err);
	bool fin_in = FN(sock_flags)(tp) & (1UL << bpf_core_enum_value(enum sock_flags, SOCK_DONE));
	/* Our FIN counts in bytes_acked once acked: the whole send sequence,
	 * FIN included, is acked when snd_una reached write_seq. */
	bool fin_acked = false;
	__u64 acked = 0, received = 0;

	if (tcp) {
		fin_acked = (flags & CONN_FIN_SENT) && RD(tcp, snd_una) == RD(tcp, write_seq);
		acked = RD(tcp, bytes_acked);
		received = RD(tcp, bytes_received);
	}
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
	e->cookie = RD(tp, SKC.skc_cookie.counter);
	e->cgroup_id = st->owner.cgroup_id;
	e->proc_start_ns = st->owner.start_ns;
	e->tx_bytes = acked > tx_sub ? acked - tx_sub : 0;
	e->rx_bytes = received > rx_sub ? received - rx_sub : 0;
	e->established_ns = st->established_ns;
	e->netns = netns;
	e->tgid = st->owner.tgid;
	e->tid = st->owner.tid;
	e->sport = sport;
	e->dport = dport;
	if (stored) {
		/* st's arrays hold an IPv4 address in their first 4 bytes
		 * and zeros after: the inserted value started zeroed. */
		__builtin_memcpy(e->saddr, st->saddr, sizeof(e->saddr));
		__builtin_memcpy(e->daddr, st->daddr, sizeof(e->daddr));
	} else if (family == AF_INET) {
		/* The record is reserved, not zeroed: clear what IPv4 leaves. */
		__builtin_memset(e->saddr, 0, sizeof(e->saddr));
		__builtin_memset(e->daddr, 0, sizeof(e->daddr));
		RD_INTO(&e->saddr, tp, SKC.skc_rcv_saddr);
		RD_INTO(&e->daddr, tp, SKC.skc_daddr);
	} else {
		RD_INTO(&e->saddr, tp, SKC.skc_v6_rcv_saddr.in6_u.u6_addr8);
		RD_INTO(&e->daddr, tp, SKC.skc_v6_daddr.in6_u.u6_addr8);
	}
	__builtin_memcpy(e->comm, st->owner.comm, sizeof(e->comm));

	submit_record(e);
}

/*
 * fill_tuple stores the addresses once per connection, for the sampler.
 * In SYN_SENT the local port is still 0: tcp_v4_connect() and
 * tcp_v6_connect() set the state before inet_hash_connect() binds the
 * port, so ESTABLISHED reads it again.
 */
static __always_inline void FN(fill_tuple)(struct tcp_sock *tp, struct sock_state *s, __u16 family)
{
	s->family = family;
	s->netns = FN(sock_netns)(tp);
	s->sport = RD(tp, SKC.skc_num);
	s->dport = bpf_ntohs(RD(tp, SKC.skc_dport));
	if (family == AF_INET) {
		RD_INTO(&s->saddr, tp, SKC.skc_rcv_saddr);
		RD_INTO(&s->daddr, tp, SKC.skc_daddr);
	} else {
		RD_INTO(&s->saddr, tp, SKC.skc_v6_rcv_saddr.in6_u.u6_addr8);
		RD_INTO(&s->daddr, tp, SKC.skc_v6_daddr.in6_u.u6_addr8);
	}
}

/*
 * handle_state: the caller has checked that tp is a TCP socket (its
 * sk_protocol); the fields of struct tcp_sock proper are read through
 * TCP_SK only where they are needed (ESTABLISHED and CLOSE).
 */
static __always_inline int FN(handle_state)(struct tcp_sock *tp, int oldstate, int newstate)
{
	__u16 family = RD(tp, SKC.skc_family);
	struct sock_state *st;
	__u64 key = (__u64)tp;

	if (family != AF_INET && family != AF_INET6)
		return 0;

	/* A passive open: the child socket is cloned from the listener, so
	 * the transition reads LISTEN -> SYN_RECV. Runs in softirq. */
	if (newstate == TCP_SYN_RECV) {
		struct sock_state s = { .role = ROLE_PASSIVE, .flags = CONN_SEEN_OPEN,
					.state = TCP_SYN_RECV };
		struct listener_key lk = {
			.netns = FN(sock_netns)(tp),
			.port = RD(tp, SKC.skc_num),
		};
		struct listener_owner *lo = bpf_map_lookup_elem(&listeners, &lk);

		if (lo) {
			s.owner = lo->owner;
			s.flags |= CONN_OWNER_LISTENER | lo->flags;
		}
		s.open_ns = bpf_ktime_get_boot_ns();
		FN(fill_tuple)(tp, &s, family);
		note_unseen(&key);
		bpf_map_update_elem(&socks, &key, &s, BPF_ANY);
		return 0;
	}
	if (newstate == TCP_LISTEN) {
		struct listener_owner lo = {};
		struct listener_key lk = {
			.netns = FN(sock_netns)(tp),
			.port = RD(tp, SKC.skc_num),
		};

		lo.flags = FN(owner_from_current)(&lo.owner);
		bpf_map_update_elem(&listeners, &lk, &lo, BPF_ANY);
		return 0;
	}
	if (oldstate == TCP_LISTEN) {
		struct listener_key lk = {
			.netns = FN(sock_netns)(tp),
			.port = RD(tp, SKC.skc_num),
		};

		bpf_map_delete_elem(&listeners, &lk);
		return 0;
	}
	/* An active open, inside connect(): current is the owner. */
	if (newstate == TCP_SYN_SENT) {
		struct sock_state s = { .role = ROLE_ACTIVE, .state = TCP_SYN_SENT };

		s.flags = CONN_SEEN_OPEN | CONN_OWNER_CONNECT | FN(owner_from_current)(&s.owner);
		s.open_ns = bpf_ktime_get_boot_ns();
		FN(fill_tuple)(tp, &s, family);
		note_unseen(&key);
		bpf_map_update_elem(&socks, &key, &s, BPF_ANY);
		return 0;
	}

	st = bpf_map_lookup_elem(&socks, &key);
	if (!st) {
		/* Open before tracing started (or evicted): track it from
		 * here with what can be known; user space names the owner. */
		struct sock_state s = {};

		if (newstate == TCP_CLOSE) {
			FN(emit_close)(tp, &s, oldstate, family);
			return 0;
		}
		/* The start-up scan (sock_diag) gave it a cookie: user space
		 * finds its owner by that. */
		s.cookie = RD(tp, SKC.skc_cookie.counter);
		FN(fill_tuple)(tp, &s, family);
		bpf_map_update_elem(&socks, &key, &s, BPF_NOEXIST);
		st = bpf_map_lookup_elem(&socks, &key);
		if (!st)
			return 0;
	}

	st->state = newstate;
	switch (newstate) {
	case TCP_ESTABLISHED:
		st->flags |= CONN_ESTABLISHED;
		st->established_ns = bpf_ktime_get_boot_ns();
		/* Complete the tuple: an active open's local port is bound
		 * after SYN_SENT, and on older kernels (6.1, 6.12) a passive
		 * child's addresses and peer port are written after its
		 * SYN_RECV (until then it holds the listener's: 0.0.0.0 for
		 * a wildcard listener). */
		FN(fill_tuple)(tp, st, family);
		struct tcp_sock *tcp = TCP_SK(tp);

		if (tcp) {
			st->tx_base = RD(tcp, bytes_acked);
			st->rx_base = RD(tcp, bytes_received);
		}
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
		FN(emit_close)(tp, st, oldstate, family);
		bpf_map_delete_elem(&socks, &key);
		break;
	}
	return 0;
}
