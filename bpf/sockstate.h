/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The socket-owner tables, `socks` and `listeners`, declared once for every
 * object that uses them. tcplife writes them; drops only reads them. Each
 * object that includes this header gets its own copy in its ELF, and the
 * loader hands the later objects the maps of the first that loaded them
 * (MapReplacements, which refuses a map whose type, key, value or size
 * differs from the declaration: one declaration cannot drift from itself).
 */
#ifndef CONNTRACER_SOCKSTATE_H
#define CONNTRACER_SOCKSTATE_H

/* The process that owns a socket, captured in process context. */
struct owner {
	__u64 cgroup_id;
	__u64 start_ns;
	__u32 tgid;
	__u32 tid;
	__u8 comm[TASK_COMM_LEN];
};

/*
 * Per-connection state while the connection lives. User space also reads
 * it, sampling the whole socks map once per interval (sample.go), to know
 * what is open right now: hence the current state and the tuple, which
 * are stored when they become known (the tuple once per connection, the
 * state with one byte store per transition) rather than sent per change.
 */
struct sock_state {
	struct owner owner;
	__u64 open_ns;
	__u64 tx_base; /* tcp_sock.bytes_acked at ESTABLISHED (counts our SYN) */
	__u64 rx_base; /* tcp_sock.bytes_received at ESTABLISHED */
	__u64 established_ns; /* -> ESTABLISHED time: connect/handshake latency */
	__u64 cookie;  /* socket cookie of a socket open before tracing (sock_diag gave it one), else 0 */
	__u32 netns;
	__u16 sport;   /* host order; 0 in SYN_SENT (the port is bound after the transition) */
	__u16 dport;   /* host order */
	__u8 saddr[16];
	__u8 daddr[16];
	__u8 role;
	__u8 flags;
	__u8 closed_by;
	__u8 state;    /* current TCP state */
	__u8 family;   /* AF_INET or AF_INET6 */
	__u8 pad[3];
};

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
 * socks: state of every TCP connection seen, keyed by its struct sock *.
 * Inserted by tcplife at SYN_SENT (active) or SYN_RECV (passive), or at the
 * first transition of a socket that was open before tracing started;
 * updated by later transitions and by accept(); deleted by tcplife when the
 * socket reaches TCP_CLOSE. LRU: a missed CLOSE (a program detached
 * mid-flight, a socket torn down without passing through CLOSE) cannot leak
 * an entry, the oldest is evicted instead. The pointer is reused by later
 * sockets, which is why every record also carries its open time. drops only
 * looks owners up in it. User space only reads it: the sampler walks it
 * with batch lookups once per interval to count the sockets open right now,
 * by owner, remote and state. The loader sizes it (Options.MaxSockets).
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 131072);
	__type(key, __u64);
	__type(value, struct sock_state);
} socks SEC(".maps");

/*
 * listeners: the process that called listen() on each (netns, port), so that
 * a connection closed before anyone accepted it is still attributed.
 * Inserted by tcplife at -> LISTEN (process context, inside listen());
 * deleted by tcplife at LISTEN -> CLOSE. With SO_REUSEPORT several listeners
 * share a port: the last one wins, and the first to close removes the entry
 * (the next accept() still attributes exactly). drops only looks listeners
 * up in it. LRU so that it cannot grow unbounded.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, struct listener_key);
	__type(value, struct listener_owner);
} listeners SEC(".maps");

#endif /* CONNTRACER_SOCKSTATE_H */
