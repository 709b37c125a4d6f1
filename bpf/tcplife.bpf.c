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
 * by the loader (tp_btf, else raw_tracepoint, else classic tracepoint). The
 * logic lives once in tcplife_state.h and is compiled twice: with plain
 * loads for tp_btf, where the verifier knows the socket's type, and with
 * bpf_probe_read_kernel (BPF_CORE_READ) for the other two. Field offsets
 * are CO-RE relocated in both.
 *
 * The rescuer. The kernel does not run a tracing program on a CPU where
 * that same program is already running: it counts a recursion miss instead
 * (kernel/trace/bpf_trace.c, __bpf_trace_run: prog->active). This happens
 * when an interrupt arrives while the state program handles a
 * process-context state change (connect(), close(), listen()) and the
 * softirq run on its way out changes another socket's state (loopback
 * SYN-ACKs, ACKs and FINs): that change is never seen, and a record goes
 * missing or comes out wrong. For tp_btf and raw_tracepoint the counter is
 * the program's own, so a second program on the same tracepoint, the
 * rescuer, still runs when the state program is skipped. The two cooperate
 * through state_guard: the state program pushes a token naming its
 * invocation (socket, old and new state) as its first act; the kernel
 * calls the tracepoint's programs in the order they were attached, state
 * program first, so the rescuer, run next for the same invocation, finds
 * that token and pops it, and does nothing else. It finds none exactly when
 * the kernel skipped the state program for this invocation: it then
 * handles the change itself, with the same logic, and counts it in
 * rescued_runs. Classic tracepoints cannot be rescued this way: their
 * programs are skipped together (trace_call_bpf: the per-CPU
 * bpf_prog_active is shared by every program), so a second one would be
 * skipped with the first. probe/rescue.go attaches the rescuer and reads
 * the count; the runs the state program missed that the rescuer did not
 * handle (misses - rescued) are state changes nobody saw.
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
#include "regs.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/*
 * The record struct and enums of conntracer.h are only used through casts and
 * as constants, which leaves them out of BTF; these unused globals put them
 * there so that bpf2go -type generates
 * their Go constants (the Go side never mirrors a C definition by hand).
 */
const struct conn_event *unused_conn_event __attribute__((unused));
const enum conn_role unused_conn_role __attribute__((unused));
const enum conn_end_state unused_conn_end __attribute__((unused));
const enum conn_side unused_conn_side __attribute__((unused));
const enum conn_flags unused_conn_flags __attribute__((unused));

/* socks and listeners, the maps this object fills: sockstate.h. */

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
	 * shows TIME_WAIT itself. It is reached from CLOSING, or from
	 * FIN_WAIT2 either once the peer's FIN arrived (tcp_fin sets
	 * SOCK_DONE) or, for a socket the application already closed, as
	 * soon as our FIN is acked (tcp_rcv_state_process, TCP_FIN_WAIT1:
	 * tcp_time_wait(sk, TCP_FIN_WAIT2, tmo)): the timewait socket then
	 * waits in substate FIN_WAIT2 for the peer's FIN and turns TIME_WAIT
	 * when it comes (no tracepoint shows that), as `ss` shows it. The
	 * first is END_TIME_WAIT, the second END_FIN_WAIT2; user space
	 * follows the latter through sock_diag. (The other FIN_WAIT2 -> CLOSE
	 * without an error, TCP_LINGER2 < 0, is rare.)
	 */
	if ((oldstate == TCP_FIN_WAIT2 || oldstate == TCP_CLOSING) && fin_in)
		return END_TIME_WAIT;
	if (oldstate == TCP_FIN_WAIT2)
		return END_FIN_WAIT2;
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

/* Kernels before sk_flags moved into struct sock_common keep it in struct sock. */
struct sock___flags_in_sock {
	unsigned long sk_flags;
} __attribute__((preserve_access_index));

struct inet_sock___flags_in_sock {
	struct sock___flags_in_sock sk;
} __attribute__((preserve_access_index));

struct inet_connection_sock___flags_in_sock {
	struct inet_sock___flags_in_sock icsk_inet;
} __attribute__((preserve_access_index));

struct tcp_sock___flags_in_sock {
	struct inet_connection_sock___flags_in_sock inet_conn;
} __attribute__((preserve_access_index));

/*
 * count_lost_nested counts a record that did not fit in the ring buffer,
 * as count_lost does, but with an atomic add: the rescuer can interrupt the
 * state program on the same CPU, and both write this counter (only when
 * the ring buffer is full, so the lock prefix costs nothing otherwise).
 */
static __always_inline void count_lost_nested(void)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&lost_records, &zero);

	if (n)
		__sync_fetch_and_add(n, 1);
}

/*
 * The state program's invocations whose rescuer has not run yet, per CPU:
 * a stack of tokens in a ring of GUARD_SLOTS (depth counts pushes minus
 * pops; slot depth-1 is the top). Normally it holds one token, for the
 * length of one invocation. Nesting adds one per level. A token is left
 * behind only when the rescuer itself was interrupted after its pop (the
 * nested rescuer is then skipped, and the nested state program's token
 * stays): such tokens are never the top for long, the ring overwrites them,
 * and the rescuer ignores tokens older than GUARD_MAX_AGE runs of the state
 * program, far more than run on one CPU between a state program and its
 * rescuer (one softirq pass).
 */
#define GUARD_SLOTS 16
#define GUARD_MAX_AGE (1u << 16)

struct guard_token {
	__u64 sk;
	__u32 seq;    /* state_guard.seq when pushed */
	__u16 states; /* oldstate << 8 | newstate */
	__u16 pad;
};

struct state_guard {
	__u64 seq;   /* runs of the state program on this CPU */
	__u64 depth; /* tokens pushed minus tokens popped */
	struct guard_token tok[GUARD_SLOTS];
};

/*
 * state_guard: one entry (key 0) per CPU, the token stack above. Pushed by
 * the state program (ct_state_btf, ct_state_raw) at each run, popped by the
 * rescuer of the same invocation. Nothing is inserted or deleted: an array;
 * user space never touches it.
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct state_guard);
} state_guard SEC(".maps");

/*
 * rescued_runs: per-CPU count of state changes the rescuer handled because
 * the kernel skipped the state program. Only the rescuer increments it (it
 * cannot interrupt itself: the kernel skips it too); user space sums the
 * CPUs (rescue.go). An array: nothing to delete.
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} rescued_runs SEC(".maps");

static __always_inline __u16 guard_states(int oldstate, int newstate)
{
	return (__u16)(((oldstate & 0xff) << 8) | (newstate & 0xff));
}

/* guard_push: the state program's first act, before any check. */
static __always_inline void guard_push(__u64 sk, int oldstate, int newstate)
{
	__u32 zero = 0;
	struct state_guard *g = bpf_map_lookup_elem(&state_guard, &zero);

	if (!g)
		return;
	__u64 d = g->depth;
	__u64 seq = g->seq + 1;
	struct guard_token *t = &g->tok[d & (GUARD_SLOTS - 1)];

	g->seq = seq;
	t->sk = sk;
	t->seq = (__u32)seq;
	t->states = guard_states(oldstate, newstate);
	/* The token is whole before it is counted: a rescuer nested from
	 * here on sees either the old depth or the complete token. */
	asm volatile("" ::: "memory");
	g->depth = d + 1;
}

/*
 * guard_skipped: the rescuer's first act. It looks for this invocation's
 * token from the top down (the slots above it belong to nested invocations
 * that have finished, their rescuer skipped) and pops down to it: the state
 * program ran, nothing to do. It returns true, and counts a rescue, when
 * there is none: the kernel skipped the state program for this invocation.
 * The slot depth - GUARD_SLOTS is not searched: a state program nested
 * before its depth store may be writing it.
 */
static __always_inline bool guard_skipped(__u64 sk, int oldstate, int newstate)
{
	__u32 zero = 0;
	struct state_guard *g = bpf_map_lookup_elem(&state_guard, &zero);

	if (!g)
		return false; /* cannot tell: never handle a change twice */
	__u64 d = g->depth;
	__u32 seq = (__u32)g->seq;
	__u16 states = guard_states(oldstate, newstate);

	for (__u32 i = 1; i < GUARD_SLOTS; i++) {
		if (i > d)
			break;
		struct guard_token *t = &g->tok[(d - i) & (GUARD_SLOTS - 1)];

		if (t->sk == sk && t->states == states && seq - t->seq < GUARD_MAX_AGE) {
			g->depth = d - i;
			return false;
		}
	}
	percpu_inc(&rescued_runs, 0);
	return true;
}

/*
 * unseen_closes: per-CPU count of sockets whose change to CLOSE reached
 * neither the state program nor its rescuer, with no skipped run counted
 * (measured on a shared host: state changes run in a softirq over some
 * tasks reach no BPF program; docs/notes/residual-loss.md). Only the CLOSE
 * deletes a socket's socks entry, and a struct sock is reused only once
 * freed: an open (SYN_SENT, SYN_RECV) that finds an entry under its own
 * address found one such socket. Slot 0: it had reached ESTABLISHED (a
 * connection whose record is lost); slot 1: it had not (a connect attempt,
 * or a child the kernel cloned and dropped in the accept race, which is no
 * connection). Counted only when the lost record would have passed the
 * filters. Incremented by the state program and its rescuer (atomically:
 * the rescuer can interrupt the state program); user space sums the CPUs
 * (unseen.go). An array: nothing to insert or delete.
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} unseen_closes SEC(".maps");

/* note_unseen: called by an open before it overwrites key's entry. */
static __always_inline void note_unseen(__u64 *key)
{
	struct sock_state *old = bpf_map_lookup_elem(&socks, key);
	__u32 slot;
	__u64 *n;

	if (!old)
		return;
	/* The filters of emit_close, on what the entry holds. */
	if (filter_netns && old->netns != filter_netns)
		return;
	if (filter_family && old->family != filter_family)
		return;
	if (filter_port && old->sport != filter_port && old->dport != filter_port)
		return;
	if (old->flags & (CONN_OWNER_CONNECT | CONN_OWNER_ACCEPT | CONN_OWNER_LISTENER)) {
		if (filter_tgid && old->owner.tgid != filter_tgid)
			return;
		if (filter_comm_set && !comm_matches(old->owner.comm))
			return;
		if (filter_cgroup_id && !(old->flags & CONN_CGROUP_MATCH))
			return;
	}
	slot = (old->flags & CONN_ESTABLISHED) ? 0 : 1;
	n = bpf_map_lookup_elem(&unseen_closes, &slot);
	if (n)
		__sync_fetch_and_add(n, 1);
}

/* tp_btf: plain loads through BTF-typed pointers. */
#define FN(name) name##_btf
#define RD(p, path) ((p)->path)
#define RD2(p, path, p2) ((p)->path->p2)
#define RD_INTO(dst, p, path) __builtin_memcpy((dst), &(p)->path, sizeof((p)->path))
#define CURRENT_TASK() bpf_get_current_task_btf()
/* Two plain loads where bpf_probe_read_kernel_str is a helper call. The
 * kernel keeps comm NUL-terminated (__set_task_comm), so a copy is a string. */
#define COMM_INTO(dst, task) __builtin_memcpy((dst), (task)->comm, TASK_COMM_LEN)
/* The helper checks the socket once more (full, TCP, stream) and gives the
 * verifier a tcp_sock; the 6 transitions of 10 that need no tcp_sock field
 * skip its call. */
#define TCP_SK(tp) bpf_skc_to_tcp_sock(tp)
#include "tcplife_state.h"
#undef FN
#undef RD
#undef RD2
#undef RD_INTO
#undef CURRENT_TASK
#undef COMM_INTO
#undef TCP_SK

/* raw_tracepoint and tracepoint: the same logic through bpf_probe_read_kernel. */
#define FN(name) name##_probe
#define RD(p, path) BPF_CORE_READ(p, path)
#define RD2(p, path, p2) BPF_CORE_READ(p, path, p2)
#define RD_INTO(dst, p, path) BPF_CORE_READ_INTO(dst, p, path)
#define CURRENT_TASK() ((struct task_struct *)bpf_get_current_task())
#define COMM_INTO(dst, task) bpf_probe_read_kernel_str((dst), TASK_COMM_LEN, &(task)->comm)
#define TCP_SK(tp) (tp)
#include "tcplife_state.h"
#undef FN
#undef RD
#undef RD2
#undef RD_INTO
#undef CURRENT_TASK
#undef COMM_INTO
#undef TCP_SK

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(ct_state_btf, struct sock *sk, int oldstate, int newstate)
{
	guard_push((__u64)sk, oldstate, newstate);
	/*
	 * Only full sockets change state through this tracepoint (TCP, and
	 * SCTP and MPTCP's own sockets, which carry their own protocol), so
	 * the protocol is the whole check. The logic reads sk as a tcp_sock
	 * for brevity: every path it reads directly lies within struct sock,
	 * as the verifier checks; the tcp_sock fields go through TCP_SK.
	 */
	if (sk->sk_protocol != IPPROTO_TCP)
		return 0;
	return handle_state_btf((struct tcp_sock *)sk, oldstate, newstate);
}

SEC("raw_tracepoint/inet_sock_set_state")
int ct_state_raw(struct bpf_raw_tracepoint_args *ctx)
{
	struct sock *sk = (struct sock *)ctx->args[0];

	guard_push((__u64)sk, (int)ctx->args[1], (int)ctx->args[2]);
	if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	return handle_state_probe((struct tcp_sock *)sk, (int)ctx->args[1], (int)ctx->args[2]);
}

/*
 * The rescuers of ct_state_btf and ct_state_raw (the design at the top):
 * attached after them to the same tracepoint, in the same mode. A run
 * whose state program ran (almost all) costs a map lookup and a compare.
 */
SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(ct_rescue_btf, struct sock *sk, int oldstate, int newstate)
{
	if (!guard_skipped((__u64)sk, oldstate, newstate))
		return 0;
	if (sk->sk_protocol != IPPROTO_TCP)
		return 0;
	return handle_state_btf((struct tcp_sock *)sk, oldstate, newstate);
}

SEC("raw_tracepoint/inet_sock_set_state")
int ct_rescue_raw(struct bpf_raw_tracepoint_args *ctx)
{
	struct sock *sk = (struct sock *)ctx->args[0];

	if (!guard_skipped((__u64)sk, (int)ctx->args[1], (int)ctx->args[2]))
		return 0;
	if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	return handle_state_probe((struct tcp_sock *)sk, (int)ctx->args[1], (int)ctx->args[2]);
}

SEC("tracepoint/sock/inet_sock_set_state")
int ct_state_tp(struct trace_event_raw_inet_sock_set_state *ctx)
{
	if (ctx->protocol != IPPROTO_TCP)
		return 0;
	return handle_state_probe((struct tcp_sock *)ctx->skaddr, ctx->oldstate, ctx->newstate);
}

/*
 * Passive owner: when accept() or accept4() returns a descriptor, walk
 * current->files to its struct sock. If that socket is one we track as a
 * passive open, the accepting process becomes its owner. A descriptor that
 * is not a socket yields a pointer that is simply not a key in socks.
 *
 * Cost: this runs once per accepted connection. The task is BTF-typed
 * (bpf_get_current_task_btf, allowed in tracepoint programs since 5.11),
 * so the walk to the fd table and the owner's fields are plain loads that
 * the verifier guards; only the indexed load from the fd array, which the
 * verifier cannot bound, and the two hops from the file to the sock are
 * probe reads (about 25 ns each: measured, the seven probe reads of a
 * walk from bpf_get_current_task() were half of this program's time).
 */
/* The socks entry of the socket behind an accepted descriptor's file, if
 * we track it as a passive open (a file that is not a socket yields a
 * pointer that is simply not a key in socks). */
static __always_inline struct sock_state *passive_of(struct file *file)
{
	struct sock_state *st;
	struct socket *sock;
	__u64 key;

	if (!file)
		return NULL;
	sock = BPF_CORE_READ(file, private_data);
	if (!sock)
		return NULL;
	key = (__u64)BPF_CORE_READ(sock, sk);
	if (!key)
		return NULL;
	st = bpf_map_lookup_elem(&socks, &key);
	if (!st || st->role != ROLE_PASSIVE)
		return NULL;
	return st;
}

/* The accepting process becomes the owner (cg: its cgroup filter match). */
static __always_inline void mark_accepted(struct sock_state *st, __u8 cg)
{
	st->flags = (st->flags & ~(CONN_OWNER_LISTENER | CONN_CGROUP_MATCH)) | CONN_OWNER_ACCEPT | cg;
}

static __always_inline int handle_accept(long fd)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct fdtable *fdt;
	struct file *file = NULL;
	struct sock_state *st;

	if (fd < 0)
		return 0;
	fdt = task->files->fdt;
	if ((unsigned long)fd >= fdt->max_fds)
		return 0;
	bpf_probe_read_kernel(&file, sizeof(file), &fdt->fd[fd]);
	st = passive_of(file);
	if (st)
		mark_accepted(st, owner_from_current_btf(&st->owner));
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_accept4")
int ct_accept4_exit(struct sys_exit_ctx *ctx)
{
	return handle_accept(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_accept")
int ct_accept_exit(struct sys_exit_ctx *ctx)
{
	return handle_accept(ctx->ret);
}

/*
 * The same walk for kernels whose tracepoint programs may not call
 * bpf_get_current_task_btf (before 5.11): every hop is a probe read from
 * bpf_get_current_task(). tcplife.go loads these instead of the two above
 * when a probe of that helper says the kernel lacks it.
 */
static __always_inline int handle_accept_probe(long fd)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt;
	struct file *file = NULL;
	struct sock_state *st;

	if (fd < 0)
		return 0;
	fdt = BPF_CORE_READ(task, files, fdt);
	if (!fdt || (unsigned long)fd >= BPF_CORE_READ(fdt, max_fds))
		return 0;
	struct file **fds = BPF_CORE_READ(fdt, fd);
	bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]);
	st = passive_of(file);
	if (st)
		mark_accepted(st, owner_from_current_probe(&st->owner));
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_accept4")
int ct_accept4_exit_probe(struct sys_exit_ctx *ctx)
{
	return handle_accept_probe(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_accept")
int ct_accept_exit_probe(struct sys_exit_ctx *ctx)
{
	return handle_accept_probe(ctx->ret);
}
