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

/* Per-connection state while the connection lives. */
struct sock_state {
	struct owner owner;
	__u64 open_ns;
	__u64 tx_base; /* tcp_sock.bytes_acked at ESTABLISHED (counts our SYN) */
	__u64 rx_base; /* tcp_sock.bytes_received at ESTABLISHED */
	__u64 established_ns; /* -> ESTABLISHED time: connect/handshake latency */
	__u8 role;
	__u8 flags;
	__u8 closed_by;
	__u8 pad[5];
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
