// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * connect: one record per failed connect() call, and per Unix connect.
 *
 * Design. A connect() that fails never creates a TCP state change worth a
 * conn_event (EADDRNOTAVAIL fails before SYN_SENT), and a Unix socket has no
 * TCP state at all: the only place that sees both the caller and the result
 * is the syscall itself, and its exit tracepoint is enough:
 *   - sys_exit_connect reads the call's arguments (fd, address pointer,
 *     length) from the caller's saved registers and, for every failure
 *     (and every Unix connect, failed or not), writes a connect_event:
 *     result, caller, the address read from the caller's memory (still
 *     mapped and unchanged: the caller is blocked in the syscall), and the
 *     socket's type and namespace found by walking the fd to its struct
 *     socket as tcplife's accept hook does;
 *   - with connect_latency (--connect-latency), sys_enter_connect also
 *     stashes, per thread, the entry time (pending map), and the records
 *     carry the call's latency. It is off by default: an entry hook on any
 *     system call sends every system call of every process on the machine
 *     through the tracepoint's dispatch (perf_syscall_enter), measured at
 *     0.5% of all CPU time under a connection churn, for a number that
 *     only blocking connects make interesting; a failed TCP connect's
 *     duration is in its connection's record anyway (SYN_SENT -> CLOSE).
 *   - on kernels without task local storage (5.11), bpf_task_pt_regs (5.15)
 *     or bpf_get_current_task_btf (5.11) in tracepoint programs, such as
 *     5.10, the compat variant runs instead (ct_connect_*_compat, chosen by
 *     the Go side's feature probes): the exit cannot read the caller's
 *     registers, so sys_enter_connect is always hooked and stashes the
 *     arguments per thread in the pending_by_tid hash map, and the task's
 *     fields are read with probe reads instead of BTF loads. It pays the
 *     entry hook's dispatch cost above on every system call; the records
 *     and counts are the same.
 * Successful IPv4/IPv6 connects and EINPROGRESS are only counted (counters
 * map): TCP's own conn_event reports those connections, with the SYN_SENT
 * -> ESTABLISHED latency, and the real outcome of a non-blocking connect is
 * that socket's next state change (SYN_SENT -> CLOSE with the socket error:
 * refused, timed out, unreachable). Event-loop programs (nginx, Go, node)
 * connect non-blocking, so a record per EINPROGRESS would double the
 * records of every outbound connection; emit_in_progress turns them on.
 * Connected UDP sockets (resolvers) would likewise flood the buffer.
 *
 * Unix datagram sends that fail because the receiver's queue is full
 * (EAGAIN: net.unix.max_dgram_qlen datagrams wait unread) or the receiver
 * is gone (ECONNREFUSED, ENOENT) are counted per sender, destination and
 * errno in unix_dgram_sends by the ct_unix_*_exit programs, one on the exit
 * tracepoint of each of write, sendto, sendmsg and sendmmsg (a program per
 * call rather than a switch on the tracepoint's syscall number, which
 * differs between architectures). They have no entry hook: the arguments
 * are read from the caller's saved registers (regs.h: x86-64 and arm64),
 * and only after the return value says the call failed that way, so
 * successful sends pay the tracepoint and a few comparisons.
 *
 * Cost. The overload pattern this exists for (a proxy's non-blocking Unix
 * connects failing with EAGAIN) runs at tens of thousands of calls per
 * second: the records are submitted without waking the reader, and nothing
 * is read that the record does not need.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "kernel_defs.h"
#include "conntracer.h"
#include "records.h"
#include "filter.h"
#include "regs.h"

/* offsetof(struct sockaddr_un, sun_path) */
#define SUN_PATH_OFFSET 2

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Send a record for each EINPROGRESS too (otherwise only counted). */
const volatile __u8 emit_in_progress = 0;
/* sys_enter_connect is attached and stashes each call's start: records and
 * Unix counts carry latencies. Otherwise they are flagged CONNECT_NO_LATENCY. */
const volatile __u8 connect_latency = 0;

/* enum connect_counter: slots of the counters map. */
enum connect_counter {
	CONNECT_CALLS = 0,     /* connect() exits seen with a stash (filters passed) */
	CONNECT_OK_INET = 1,   /* successful IPv4/IPv6 connects: counted, not sent */
	CONNECT_NO_ENTER = 2,  /* exits without a stash (attached mid-call, or evicted) */
	CONNECT_IN_PROGRESS = 3, /* EINPROGRESS: counted; sent only if emit_in_progress */
	CONNECT_UNIX_FULL = 4,   /* Unix connects sent as records: unix_connects was full */
	UNIX_DGRAM_FULL = 5,     /* Unix datagram send failures lost: unix_dgram_sends was full */
	UNIX_DGRAM_FAILS = 6,    /* Unix datagram send failures counted (filters passed) */
	CONNECT_COUNTERS = 7,
};

/*
 * counters: per-CPU event counts by enum connect_counter. Only incremented
 * here; user space sums the CPUs when asked. Fixed size: cannot grow.
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CONNECT_COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

/* What sys_enter_connect leaves for sys_exit_connect. */
struct pending_connect {
	__u64 start_ns;
	__u64 uaddr; /* user pointer to the struct sockaddr */
	__u32 fd;
	__u32 addrlen;
};

/*
 * pending: the connect() call in progress of each thread, in the thread's
 * task local storage. Written at sys_enter_connect, read and cleared
 * (start_ns = 0) at sys_exit_connect of the same thread, which a thread
 * always reaches before its next syscall. The kernel frees the entry with
 * the task, so it cannot leak; task storage costs a pointer dereference
 * where a hash map (LRU, keyed by thread id) costs a hash, an insert and a
 * delete per call, measured at a quarter of the hook's cost.
 */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct pending_connect);
} pending SEC(".maps");

/*
 * pending_by_tid: the compat variant's connect() calls in progress (the
 * place of pending where the kernel has no task local storage), keyed by
 * thread (bpf_get_current_pid_tgid). Inserted (or overwritten) by
 * ct_connect_enter_compat at sys_enter_connect; looked up and deleted by
 * ct_connect_exit_compat at sys_exit_connect of the same thread, which a
 * thread always reaches before its next system call. LRU and bounded: an
 * entry left behind (the tracer detached between a call's entry and its
 * exit) is evicted by newer ones, and an exit that finds none (attached
 * mid-call, or evicted because more threads than this were in connect() at
 * once) counts as CONNECT_NO_ENTER. The entry is its thread's only one, so
 * the map holds at most one per thread in connect().
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 10240);
	__type(key, __u64);
	__type(value, struct pending_connect);
} pending_by_tid SEC(".maps");

/*
 * unix_connects: connect() calls on Unix sockets, counted per process,
 * address and result (struct unix_connect_key -> unix_connect_stats). The
 * overload this tracer exists for, a proxy's non-blocking connects failing
 * with EAGAIN at tens of thousands a second, costs a hash lookup and two
 * atomic adds per call here, where a ring buffer record costs three times
 * that in the kernel plus decoding in user space. Inserted at a key's first
 * call; user space reads it on a timer, turns count deltas into events,
 * and deletes keys idle for a minute (a call racing with that delete is the
 * only way to lose one). Plain hash, not LRU: eviction would lose counts
 * silently; when it is full, new keys fall back to a record per call.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct unix_connect_key);
	__type(value, struct unix_connect_stats);
} unix_connects SEC(".maps");

/*
 * unix_dgram_sends: failed sends on Unix datagram sockets, counted per
 * sender process, destination address and errno, with the same key and
 * value as unix_connects (latency_sum_ns stays 0 and the flags say
 * CONNECT_NO_LATENCY: there is no entry hook).
 * Only EAGAIN (the receiver's queue is full), ECONNREFUSED and ENOENT (the
 * receiver is gone) are counted: a syslog or journald client that cannot
 * keep up fails thousands of times a second, so counting in place is the
 * only affordable form. Inserted at a key's first failure by
 * the ct_unix_*_exit programs; user space reads it on the same timer as
 * unix_connects and deletes keys idle for a minute. Plain hash, not LRU:
 * eviction would lose counts silently; when it is full, a new key's
 * failures are only counted in UNIX_DGRAM_FULL.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct unix_connect_key);
	__type(value, struct unix_connect_stats);
} unix_dgram_sends SEC(".maps");

/* See tcplife.bpf.c: puts the record's types into BTF for bpf2go -type. */
const struct connect_event *unused_connect_event __attribute__((unused));
const struct unix_connect_key *unused_unix_connect_key __attribute__((unused));
const struct unix_connect_stats *unused_unix_connect_stats __attribute__((unused));
const enum connect_flags unused_connect_flags __attribute__((unused));
const enum connect_counter unused_connect_counter __attribute__((unused));

/* Layout of sys_enter_connect's record (its format file); the exit's,
 * struct sys_exit_ctx, is in regs.h. */
struct sys_enter_connect_ctx {
	__u64 common;
	__s32 nr;
	__s32 pad;
	__u64 fd;
	__u64 uservaddr;
	__u64 addrlen;
};

static __always_inline void count(__u32 slot)
{
	percpu_inc(&counters, slot);
}

SEC("tracepoint/syscalls/sys_enter_connect")
int ct_connect_enter(struct sys_enter_connect_ctx *ctx)
{
	struct pending_connect *p;

	if (filter_tgid && (bpf_get_current_pid_tgid() >> 32) != filter_tgid)
		return 0;
	p = bpf_task_storage_get(&pending, bpf_get_current_task_btf(), NULL,
				 BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!p)
		return 0;
	p->start_ns = bpf_ktime_get_boot_ns();
	p->uaddr = ctx->uservaddr;
	p->fd = (__u32)ctx->fd;
	p->addrlen = (__u32)ctx->addrlen;
	return 0;
}

/*
 * Reading the current task. The task pointer is BTF-typed
 * (bpf_get_current_task_btf), so its fields are plain loads that the
 * verifier guards, a few ns each, where bpf_probe_read_kernel costs about
 * 25 ns a field. The compat programs, for kernels whose tracepoint programs
 * cannot call bpf_get_current_task_btf (5.10), hold an untyped pointer
 * (bpf_get_current_task) and read the same fields with probe reads.
 * `compat` is a constant in each program: the other branch is compiled out.
 */
static __always_inline struct task_struct *current_task(const bool compat)
{
	if (compat)
		return (struct task_struct *)bpf_get_current_task();
	return bpf_get_current_task_btf();
}

static __always_inline struct task_struct *task_leader(struct task_struct *t, const bool compat)
{
	return compat ? BPF_CORE_READ(t, group_leader) : t->group_leader;
}

static __always_inline __u32 task_netns(struct task_struct *t, const bool compat)
{
	return compat ? BPF_CORE_READ(t, nsproxy, net_ns, ns.inum) : t->nsproxy->net_ns->ns.inum;
}

static __always_inline __u64 task_start(struct task_struct *leader, const bool compat)
{
	return compat ? BPF_CORE_READ(leader, start_boottime) : leader->start_boottime;
}

/* task_comm copies the leader's comm (TASK_COMM_LEN bytes) to dst. */
static __always_inline void task_comm(struct task_struct *leader, __u8 *dst, const bool compat)
{
	if (compat)
		bpf_core_read(dst, TASK_COMM_LEN, &leader->comm);
	else
		__builtin_memcpy(dst, leader->comm, TASK_COMM_LEN);
}

/* leader_passes_comm applies --comm to the task's leader. */
static __always_inline bool leader_passes_comm(struct task_struct *leader, const bool compat)
{
	__u8 comm[TASK_COMM_LEN];

	if (!filter_comm_set)
		return true;
	if (!compat)
		return comm_matches((const __u8 *)leader->comm);
	task_comm(leader, comm, true);
	return comm_matches(comm);
}

/*
 * socket_of returns the struct socket behind fd, or NULL if fd is not a
 * socket. Only the indexed load from the fd array, which the verifier
 * cannot bound, is a probe read in the BTF-typed walk.
 */
static __always_inline struct socket *socket_of(struct task_struct *task, __u32 fd, __u8 *flags,
						const bool compat)
{
	struct fdtable *fdt = compat ? BPF_CORE_READ(task, files, fdt) : task->files->fdt;
	struct file *file = NULL;
	unsigned int max_fds = compat ? BPF_CORE_READ(fdt, max_fds) : fdt->max_fds;
	struct file **fds = compat ? BPF_CORE_READ(fdt, fd) : fdt->fd;

	if (fd >= max_fds)
		return NULL;
	bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]);
	if (!file)
		return NULL;
	/* connect() on a non-socket fails with ENOTSOCK: its private_data
	 * is something else, so check the inode type first. */
	if ((BPF_CORE_READ(file, f_inode, i_mode) & S_IFMT) != S_IFSOCK)
		return NULL;
	if (BPF_CORE_READ(file, f_flags) & O_NONBLOCK)
		*flags |= CONNECT_NONBLOCK;
	return BPF_CORE_READ(file, private_data);
}

/*
 * count_unix counts a Unix connect in unix_connects. It returns false when
 * the call must be sent as a record instead (the map is full). Runs before
 * any filter that needs the socket: only the netns filter does, and it
 * uses the caller's namespace here.
 */
static __always_inline bool count_unix(struct task_struct *task, __u64 id, long ret,
					 const struct pending_connect *p,
					 struct unix_connect_key *k, __u64 n, const bool compat)
{
	struct unix_connect_stats *st;
	__u64 now = bpf_ktime_get_boot_ns();
	struct task_struct *leader = task_leader(task, compat);

	k->netns = task_netns(task, compat);
	if (filter_netns && k->netns != filter_netns)
		return true;
	if (!leader_passes_comm(leader, compat))
		return true; /* filtered out */
	k->tgid = id >> 32;
	k->proc_start_ns = task_start(leader, compat);
	k->errno = ret < 0 && ret > -256 ? -ret : 0;
	k->path_len = n > SUN_PATH_OFFSET ? n - SUN_PATH_OFFSET : 0;

	st = bpf_map_lookup_elem(&unix_connects, k);
	if (!st) {
		struct unix_connect_stats v = {};
		__u8 flags = 0;
		struct socket *sock = socket_of(task, p->fd, &flags, compat);

		if (sock)
			v.sock_type = BPF_CORE_READ(sock, type);
		v.flags = flags | (sock ? CONNECT_FD_SOCKET : 0) |
			  (p->start_ns ? 0 : CONNECT_NO_LATENCY);
		v.first_ns = now;
		v.cgroup_id = bpf_get_current_cgroup_id();
		v.tid = (__u32)id;
		task_comm(leader, v.comm, compat);
		if (bpf_map_update_elem(&unix_connects, k, &v, BPF_NOEXIST) != 0 &&
		    !bpf_map_lookup_elem(&unix_connects, k)) {
			count(CONNECT_UNIX_FULL);
			return false;
		}
		st = bpf_map_lookup_elem(&unix_connects, k);
		if (!st)
			return false;
	}
	__sync_fetch_and_add(&st->calls, 1);
	if (p->start_ns)
		__sync_fetch_and_add(&st->latency_sum_ns, now - p->start_ns);
	st->last_ns = now;
	return true;
}

/* put_addr fills in the record's destination from the caller's memory and submits it. */
static __always_inline void put_addr(struct connect_event *e, const struct pending_connect *pa,
				     __u16 family, __u8 flags)
{
	struct pending_connect p = *pa;

	switch (family) {
	case AF_INET: {
		struct sockaddr_in sin;

		__builtin_memset(e->daddr, 0, sizeof(e->daddr));
		if (p.addrlen < sizeof(sin) ||
		    bpf_probe_read_user(&sin, sizeof(sin), (void *)p.uaddr) != 0) {
			flags |= CONNECT_ADDR_FAULT;
			break;
		}
		__builtin_memcpy(e->daddr, &sin.sin_addr, 4);
		e->dport = bpf_ntohs(sin.sin_port);
		break;
	}
	case AF_INET6: {
		struct sockaddr_in6 sin6;

		if (p.addrlen < sizeof(sin6) ||
		    bpf_probe_read_user(&sin6, sizeof(sin6), (void *)p.uaddr) != 0) {
			__builtin_memset(e->daddr, 0, sizeof(e->daddr));
			flags |= CONNECT_ADDR_FAULT;
			break;
		}
		__builtin_memcpy(e->daddr, &sin6.sin6_addr, 16);
		e->dport = bpf_ntohs(sin6.sin6_port);
		break;
	}
	case AF_UNIX: {
		__u64 n = p.addrlen;

		__builtin_memset(e->daddr, 0, sizeof(e->daddr));
		if (n <= SUN_PATH_OFFSET)
			break;
		n -= SUN_PATH_OFFSET;
		/* Keep clang from folding the bound into a form the
		 * verifier cannot follow. */
		asm volatile("" : "+r"(n));
		if (n > sizeof(e->path))
			n = sizeof(e->path);
		/* Only the bytes the caller passed: reading a full
		 * sockaddr_un could run past its buffer into an unmapped
		 * page and fail. */
		if (bpf_probe_read_user(e->path, n, (void *)(p.uaddr + SUN_PATH_OFFSET)) != 0) {
			flags |= CONNECT_ADDR_FAULT;
			break;
		}
		e->path_len = n;
		break;
	}
	default:
		__builtin_memset(e->daddr, 0, sizeof(e->daddr));
	}
	e->flags = flags;
	/* A port filter keeps IPv4/IPv6 connects to that port only. */
	if (filter_port && e->dport != filter_port) {
		bpf_ringbuf_discard(e, BPF_RB_NO_WAKEUP);
		return;
	}

	submit_record(e);
}

/*
 * connect_exit is the exit's work once the call's arguments are known (p),
 * shared by ct_connect_exit and its compat variant.
 */
static __always_inline int connect_exit(long ret, __u64 id, struct pending_connect *pa, __u8 flags,
					const bool compat)
{
	struct pending_connect p = *pa;
	__u16 family = 0;

	count(CONNECT_CALLS);
	/* Every outbound TCP connection of an event-loop client ends here. A
	 * Unix connect never returns EINPROGRESS (af_unix completes or fails
	 * at once: EAGAIN), so the address is not needed to count it: count
	 * before reading the caller's memory, which was half of this
	 * program's time on such a connect (measured). */
	if (ret == -EINPROGRESS && !emit_in_progress) {
		count(CONNECT_IN_PROGRESS);
		return 0;
	}

	/*
	 * One copy from the caller's memory of what the address needs,
	 * straight into a Unix key: the family, and the path if it is one.
	 * Only the bytes the caller passed: a full sockaddr_un could run past
	 * its buffer into an unmapped page and fail.
	 */
	struct unix_connect_key k;
	__u64 n = p.addrlen;

	__builtin_memset(&k, 0, sizeof(k));
	asm volatile("" : "+r"(n));
	if (n > sizeof(k.family) + sizeof(k.path))
		n = sizeof(k.family) + sizeof(k.path);
	if (n >= sizeof(family)) {
		if (bpf_probe_read_user(&k.family, n, (void *)p.uaddr) == 0)
			family = k.family;
		else
			flags |= CONNECT_ADDR_FAULT;
	}
	struct task_struct *task = current_task(compat);

	if (family == AF_UNIX && !filter_family && !filter_port &&
	    !(filter_cgroup_id &&
	      bpf_get_current_ancestor_cgroup_id(filter_cgroup_level) != filter_cgroup_id) &&
	    count_unix(task, id, ret, &p, &k, n, compat))
		return 0;
	if (ret == 0 && family != AF_UNIX) {
		count(CONNECT_OK_INET);
		return 0;
	}
	if (ret == -EINPROGRESS) {
		count(CONNECT_IN_PROGRESS);
		if (!emit_in_progress)
			return 0;
	}
	if (filter_family && family != filter_family)
		return 0;
	if (filter_cgroup_id &&
	    bpf_get_current_ancestor_cgroup_id(filter_cgroup_level) != filter_cgroup_id)
		return 0;

	struct socket *sock = socket_of(task, p.fd, &flags, compat);
	__u32 netns = 0;
	__u16 type = 0;

	if (sock) {
		flags |= CONNECT_FD_SOCKET;
		type = BPF_CORE_READ(sock, type);
		netns = BPF_CORE_READ(sock, sk, __sk_common.skc_net.net, ns.inum);
	}
	if (filter_netns && netns != filter_netns)
		return 0;

	struct connect_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_lost();
		return 0;
	}
	struct task_struct *leader = task_leader(task, compat);

	e->kind = RECORD_CONNECT;
	e->family = family;
	e->ret = ret;
	e->start_ns = p.start_ns;
	e->end_ns = bpf_ktime_get_boot_ns();
	e->cgroup_id = bpf_get_current_cgroup_id();
	e->proc_start_ns = task_start(leader, compat);
	e->netns = netns;
	e->tgid = id >> 32;
	e->tid = (__u32)id;
	e->sock_type = type;
	e->dport = 0;
	e->path_len = 0;
	task_comm(leader, e->comm, compat);
	if (filter_comm_set && !comm_matches(e->comm)) {
		bpf_ringbuf_discard(e, BPF_RB_NO_WAKEUP);
		return 0;
	}
	put_addr(e, &p, family, flags);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_connect")
int ct_connect_exit(struct sys_exit_ctx *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct pending_connect *pp;
	struct pending_connect p;
	__u8 flags = 0;

	if (filter_tgid && (id >> 32) != filter_tgid)
		return 0;
	if (connect_latency) {
		pp = bpf_task_storage_get(&pending, bpf_get_current_task_btf(), NULL, 0);
		if (!pp || !pp->start_ns) {
			count(CONNECT_NO_ENTER);
			return 0;
		}
		p = *pp;
		pp->start_ns = 0;
	} else {
		/* No entry hook: connect(fd, addr, addrlen) is read from the
		 * caller's saved registers (regs.h: where each architecture
		 * keeps them at the syscall's exit). The task's pt_regs are
		 * BTF-typed: plain loads. */
		struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());

		p.start_ns = 0;
		p.fd = (__u32)syscall_arg(regs, 0);
		p.uaddr = syscall_arg(regs, 1);
		p.addrlen = (__u32)syscall_arg(regs, 2);
		flags |= CONNECT_NO_LATENCY;
	}
	return connect_exit(ctx->ret, id, &p, flags, false);
}

/*
 * The compat variant (see the top): the arguments stashed per thread at
 * the entry, the task read with probe reads.
 */
SEC("tracepoint/syscalls/sys_enter_connect")
int ct_connect_enter_compat(struct sys_enter_connect_ctx *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct pending_connect p = {
		.start_ns = bpf_ktime_get_boot_ns(),
		.uaddr = ctx->uservaddr,
		.fd = (__u32)ctx->fd,
		.addrlen = (__u32)ctx->addrlen,
	};

	if (filter_tgid && (id >> 32) != filter_tgid)
		return 0;
	bpf_map_update_elem(&pending_by_tid, &id, &p, BPF_ANY);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_connect")
int ct_connect_exit_compat(struct sys_exit_ctx *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct pending_connect *pp;
	struct pending_connect p;
	__u8 flags = 0;

	if (filter_tgid && (id >> 32) != filter_tgid)
		return 0;
	pp = bpf_map_lookup_elem(&pending_by_tid, &id);
	if (!pp) {
		count(CONNECT_NO_ENTER);
		return 0;
	}
	p = *pp;
	bpf_map_delete_elem(&pending_by_tid, &id);
	if (!connect_latency) {
		/* Measured all the same, but reported only when asked, as
		 * the other variant does. */
		p.start_ns = 0;
		flags |= CONNECT_NO_LATENCY;
	}
	return connect_exit(ctx->ret, id, &p, flags, true);
}


/*
 * read_peer_addr copies the bound address of sk's connected peer into the
 * key's family and path: a datagram socket that was connect()ed sends
 * without an address. The peer is unix_sk(sk)->peer, its address
 * unix_sk(peer)->addr (struct unix_address: len bytes of sockaddr_un).
 * Runs on failures only, so probe reads are fine here. Returns the bytes
 * copied (0: no peer, e.g. after ECONNREFUSED cleared it, or an unbound
 * peer).
 */
static __always_inline __u64 read_peer_addr(struct sock *sk, struct unix_connect_key *k)
{
	struct unix_sock *peer = (struct unix_sock *)BPF_CORE_READ((struct unix_sock *)sk, peer);
	struct unix_address *a;
	__u64 n;

	if (!peer)
		return 0;
	a = BPF_CORE_READ(peer, addr);
	if (!a)
		return 0;
	n = (__u32)BPF_CORE_READ(a, len);
	asm volatile("" : "+r"(n));
	if (n > sizeof(k->family) + sizeof(k->path))
		n = sizeof(k->family) + sizeof(k->path);
	if (n < sizeof(k->family) ||
	    bpf_probe_read_kernel(&k->family, n, &a->name[0]) != 0)
		return 0;
	return n;
}

/* The system calls a Unix datagram socket sends with. */
enum send_call {
	SEND_WRITE,
	SEND_SENDTO,
	SEND_SENDMSG,
	SEND_SENDMMSG,
};

/*
 * unix_send_failed counts one failed send on a Unix datagram socket in
 * unix_dgram_sends. call is the system call (a constant: each program
 * inlines its own copy); its arguments are still in the caller's saved
 * registers at exit (regs.h), so no entry hook is needed and a successful
 * send pays only the program's first comparisons.
 */
static __always_inline int unix_send_failed(const enum send_call call, long ret)
{
	__u64 id = bpf_get_current_pid_tgid();

	if (filter_tgid && (id >> 32) != filter_tgid)
		return 0;
	/* A port filter keeps IPv4/IPv6 only, as for connects. */
	if ((filter_family && filter_family != AF_UNIX) || filter_port)
		return 0;
	if (filter_cgroup_id &&
	    bpf_get_current_ancestor_cgroup_id(filter_cgroup_level) != filter_cgroup_id)
		return 0;

	struct task_struct *task = bpf_get_current_task_btf();
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(task);
	__u8 flags = 0;
	struct socket *sock = socket_of(task, (__u32)syscall_arg(regs, 0), &flags, false);
	struct sock *sk;

	if (!sock || BPF_CORE_READ(sock, type) != SOCK_DGRAM)
		return 0;
	sk = BPF_CORE_READ(sock, sk);
	if (!sk || BPF_CORE_READ(sk, __sk_common.skc_family) != AF_UNIX)
		return 0;

	struct unix_connect_key k;
	__u64 uaddr = 0, n = 0, msgflags = 0;

	__builtin_memset(&k, 0, sizeof(k));
	switch (call) {
	case SEND_WRITE:
		break;
	case SEND_SENDTO: /* sendto(fd, buf, len, flags, dest_addr, addrlen) */
		uaddr = syscall_arg(regs, 4);
		n = (__u32)syscall_arg(regs, 5);
		msgflags = syscall_arg(regs, 3);
		break;
	case SEND_SENDMSG: /* sendmsg(fd, msg, flags) */
	case SEND_SENDMMSG: { /* sendmmsg(fd, msgvec, vlen, flags) */
		/* sendmmsg fails only when its first message does: that
		 * message's header starts the vector. */
		struct user_msghdr mh;

		if (bpf_probe_read_user(&mh, sizeof(mh), (void *)syscall_arg(regs, 1)) == 0) {
			uaddr = (__u64)mh.msg_name;
			n = (__u32)mh.msg_namelen;
		} else {
			flags |= CONNECT_ADDR_FAULT;
		}
		msgflags = call == SEND_SENDMSG ? syscall_arg(regs, 2) : syscall_arg(regs, 3);
		break;
	}
	}
	if (msgflags & MSG_DONTWAIT)
		flags |= CONNECT_NONBLOCK;
	if (uaddr) {
		asm volatile("" : "+r"(n));
		if (n > sizeof(k.family) + sizeof(k.path))
			n = sizeof(k.family) + sizeof(k.path);
		if (n < sizeof(k.family) ||
		    bpf_probe_read_user(&k.family, n, (void *)uaddr) != 0) {
			flags |= CONNECT_ADDR_FAULT;
			n = 0;
		}
	} else {
		flags |= CONNECT_PEER;
		n = read_peer_addr(sk, &k);
		k.family = AF_UNIX;
	}

	k.netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	if (filter_netns && k.netns != filter_netns)
		return 0;
	if (filter_comm_set && !comm_matches((const __u8 *)task->group_leader->comm))
		return 0;
	k.tgid = id >> 32;
	k.proc_start_ns = task->group_leader->start_boottime;
	k.errno = -ret;
	k.path_len = n > SUN_PATH_OFFSET ? n - SUN_PATH_OFFSET : 0;

	__u64 now = bpf_ktime_get_boot_ns();
	struct unix_connect_stats *st = bpf_map_lookup_elem(&unix_dgram_sends, &k);

	if (!st) {
		struct unix_connect_stats v = {};

		v.sock_type = SOCK_DGRAM;
		v.flags = flags | CONNECT_FD_SOCKET | CONNECT_NO_LATENCY;
		v.first_ns = now;
		v.cgroup_id = bpf_get_current_cgroup_id();
		v.tid = (__u32)id;
		__builtin_memcpy(v.comm, task->group_leader->comm, sizeof(v.comm));
		bpf_map_update_elem(&unix_dgram_sends, &k, &v, BPF_NOEXIST);
		st = bpf_map_lookup_elem(&unix_dgram_sends, &k);
		if (!st) {
			count(UNIX_DGRAM_FULL);
			return 0;
		}
	}
	count(UNIX_DGRAM_FAILS);
	__sync_fetch_and_add(&st->calls, 1);
	st->last_ns = now;
	return 0;
}

/*
 * The ct_unix_*_exit programs, one on the exit tracepoint of each send
 * call. The return value is tested first: a successful send, or any other
 * error, costs three comparisons here; only the failures that mean a full
 * or vanished receiver go on to look at the fd.
 */
static __always_inline bool receiver_failure(long ret)
{
	return ret == -EAGAIN || ret == -ECONNREFUSED || ret == -ENOENT;
}

SEC("tracepoint/syscalls/sys_exit_sendto")
int ct_unix_sendto_exit(struct sys_exit_ctx *ctx)
{
	return receiver_failure(ctx->ret) ? unix_send_failed(SEND_SENDTO, ctx->ret) : 0;
}

SEC("tracepoint/syscalls/sys_exit_sendmsg")
int ct_unix_sendmsg_exit(struct sys_exit_ctx *ctx)
{
	return receiver_failure(ctx->ret) ? unix_send_failed(SEND_SENDMSG, ctx->ret) : 0;
}

SEC("tracepoint/syscalls/sys_exit_sendmmsg")
int ct_unix_sendmmsg_exit(struct sys_exit_ctx *ctx)
{
	return receiver_failure(ctx->ret) ? unix_send_failed(SEND_SENDMMSG, ctx->ret) : 0;
}

SEC("tracepoint/syscalls/sys_exit_write")
int ct_unix_write_exit(struct sys_exit_ctx *ctx)
{
	return receiver_failure(ctx->ret) ? unix_send_failed(SEND_WRITE, ctx->ret) : 0;
}
