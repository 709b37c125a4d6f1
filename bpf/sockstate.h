/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Values of tcplife's `socks` and `listeners` maps. Other objects (drops)
 * read those maps through MapReplacements, which refuses a map whose key or
 * value size differs from the declaration: every object that declares them
 * includes this header, so the layouts cannot drift apart.
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

#endif /* CONNTRACER_SOCKSTATE_H */
