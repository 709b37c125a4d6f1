/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Records shared between the BPF programs and Go. The Go types are generated
 * from these definitions by bpf2go (-type), never written by hand.
 *
 * Layout rules: every record starts with a one-byte kind so that one ring
 * buffer carries several record types; fields are fixed width, ordered so
 * that there is no implicit padding (a test in Go checks the sizes).
 */
#ifndef CONNTRACER_H
#define CONNTRACER_H

#define TASK_COMM_LEN 16

/* enum record_kind: the first byte of every ring buffer record. */
enum record_kind {
	RECORD_CONN_CLOSED = 1,
	RECORD_CONNECT = 2, /* struct connect_event (connect.bpf.c); 3..9 reserved for it */
	RECORD_DROP = 10,   /* struct drop_event (drops.bpf.c); 11..19 reserved for it */
	/* struct ct_entry_event (conntrack.bpf.c); 23..29 reserved for it */
	RECORD_CT_NEW = 20,          /* an entry confirmed into its namespace's table */
	RECORD_CT_DESTROY = 21,      /* an entry removed from the table */
	RECORD_CT_ALLOC_FAILED = 22, /* an entry refused: the table was full */
};

/* enum conn_role: which side opened the connection. */
enum conn_role {
	ROLE_UNKNOWN = 0, /* open before tracing started */
	ROLE_ACTIVE = 1,  /* connect(): SYN_SENT */
	ROLE_PASSIVE = 2, /* accepted: SYN_RECV */
};

/* enum conn_end_state: how a connection ended, from this socket's point of view. */
enum conn_end_state {
	END_UNKNOWN = 0,
	END_CONNECT_FAILED = 1, /* SYN_SENT -> CLOSE */
	END_RESET = 2,          /* aborted: RST sent or received, or timed out */
	END_TIME_WAIT = 3,      /* closed first, timewait socket took over */
	END_CLOSE_WAIT = 4,     /* peer closed first: CLOSE_WAIT -> LAST_ACK -> CLOSE */
	END_CLOSED = 5,         /* any other orderly close */
	END_FIN_WAIT2 = 6,      /* closed first, peer has not: timewait socket in FIN_WAIT2 */
};

/* enum conn_side: who closed first. */
enum conn_side {
	SIDE_NONE = 0,
	SIDE_LOCAL = 1,
	SIDE_REMOTE = 2,
};

/* enum conn_flags: facts collected along the connection's life. */
enum conn_flags {
	CONN_SEEN_OPEN = 1 << 0,      /* handshake seen: open time and byte baselines exact */
	CONN_OWNER_CONNECT = 1 << 1,  /* owner captured at connect() */
	CONN_OWNER_ACCEPT = 1 << 2,   /* owner captured at accept() */
	CONN_OWNER_LISTENER = 1 << 3, /* owner is the listener (not accepted yet) */
	CONN_ESTABLISHED = 1 << 4,    /* reached ESTABLISHED */
	CONN_FIN_SENT = 1 << 5,       /* this side sent a FIN (FIN_WAIT1 or LAST_ACK) */
	CONN_CLOSE_WAIT = 1 << 6,     /* passed through CLOSE_WAIT */
	CONN_CGROUP_MATCH = 1 << 7,   /* owner is inside the --cgroup filter */
};

/*
 * struct conn_event: one record per connection, sent when its socket enters
 * TCP_CLOSE. Addresses are in network byte order (IPv4 in the first 4 bytes),
 * ports in host byte order, times are CLOCK_BOOTTIME nanoseconds.
 */
struct conn_event {
	__u8 kind;       /* RECORD_CONN_CLOSED */
	__u8 role;       /* enum conn_role */
	__u8 end_state;  /* enum conn_end_state */
	__u8 closed_by;  /* enum conn_side */
	__u8 last_state; /* TCP state left for CLOSE */
	__u8 flags;      /* enum conn_flags */
	__u8 error;      /* sk->sk_err at close (errno), 0 if none */
	__u8 family;     /* AF_INET or AF_INET6 */
	__u64 open_ns;   /* SYN_SENT / SYN_RECV time, 0 if opened before tracing */
	__u64 close_ns;
	__u64 cookie;        /* socket cookie, if the kernel generated one (sock_diag does) */
	__u64 cgroup_id;     /* owner's cgroup v2 id */
	__u64 proc_start_ns; /* owner's task start time (start_boottime) */
	__u64 tx_bytes;      /* payload acked by the peer, SYN and FIN excluded */
	__u64 rx_bytes;      /* payload received, SYN and FIN excluded */
	__u64 established_ns; /* SYN_SENT/SYN_RECV -> ESTABLISHED time, 0 if not seen */
	__u32 netns;         /* network namespace inode */
	__u32 tgid;
	__u32 tid;
	__u16 sport;
	__u16 dport;
	__u8 saddr[16];
	__u8 daddr[16];
	__u8 comm[TASK_COMM_LEN];
};

/* enum connect_flags: facts about one connect() call. */
enum connect_flags {
	CONNECT_FD_SOCKET = 1 << 0,  /* the fd was a socket: sock_type and netns are set */
	CONNECT_NONBLOCK = 1 << 1,   /* the socket was non-blocking (O_NONBLOCK) */
	CONNECT_ADDR_FAULT = 1 << 2, /* the address could not be read from user memory */
	CONNECT_PEER = 1 << 3,       /* Unix datagram send: the address is the connected peer's */
	CONNECT_NO_LATENCY = 1 << 4, /* the call's start was not taken (no entry hook): no latency */
};

/*
 * struct connect_event: one connect() call, sent at the syscall's exit for
 * every failure and every EINPROGRESS, and for successful connects of Unix
 * sockets (successful IPv4/IPv6 connects are only counted: their
 * connection's conn_event tells the rest). Addresses are as the caller
 * passed them: for AF_INET/AF_INET6 daddr holds the address in network
 * byte order (IPv4 in the first 4 bytes) and dport the port in host order;
 * for AF_UNIX path holds the first path_len bytes of sun_path (an abstract
 * name starts with a NUL byte). Times are CLOCK_BOOTTIME nanoseconds.
 */
struct connect_event {
	__u8 kind;      /* RECORD_CONNECT */
	__u8 flags;     /* enum connect_flags */
	__u16 family;   /* sa_family the caller passed (AF_UNIX, AF_INET, AF_INET6...) */
	__s32 ret;      /* the syscall's return value: 0 or -errno */
	__u64 start_ns; /* syscall entry */
	__u64 end_ns;   /* syscall exit */
	__u64 cgroup_id;     /* caller's cgroup v2 id */
	__u64 proc_start_ns; /* caller's (group leader's) start time */
	__u32 netns;    /* the socket's network namespace inode, 0 if unknown */
	__u32 tgid;
	__u32 tid;
	__u16 sock_type; /* SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET; 0 if unknown */
	__u16 dport;
	__u16 path_len;  /* valid bytes of path */
	__u8 pad[6];
	__u8 daddr[16];
	__u8 comm[TASK_COMM_LEN]; /* the caller's group leader's comm */
	__u8 path[108];           /* sun_path */
	__u8 pad2[4];
};

/*
 * struct unix_connect_key: one (process, Unix address, result) whose
 * connect() calls the kernel counts in place of sending a record each
 * (map unix_connects in connect.bpf.c). netns is the caller's: abstract
 * names are scoped to it. errno is 0 for a successful connect.
 */
struct unix_connect_key {
	__u64 proc_start_ns; /* with tgid: the process, safe from pid reuse */
	__u32 tgid;
	__u32 netns;
	__u16 path_len;
	__u8 errno;
	__u8 pad[3];
	/* sun_family and sun_path, read from the caller in one copy */
	__u16 family;   /* AF_UNIX */
	__u8 path[108]; /* sun_path, zero beyond path_len */
	__u8 pad2[4];
};

/* struct unix_connect_stats: the counts of one unix_connect_key. */
struct unix_connect_stats {
	__u64 calls;          /* connect() calls */
	__u64 latency_sum_ns; /* their total time in connect() */
	__u64 first_ns;       /* first call's exit */
	__u64 last_ns;        /* last call's exit */
	__u64 cgroup_id;      /* of the first caller */
	__u32 tid;            /* the first caller thread */
	__u16 sock_type;      /* of the first caller's socket */
	__u8 flags;           /* enum connect_flags of the first call */
	__u8 pad;
	__u8 comm[TASK_COMM_LEN]; /* group leader's comm at the first call */
};

/* enum drop_flags: what the drops program learnt about one dropped packet. */
enum drop_flags {
	DROP_OWNER_SOCKET = 1 << 0,   /* owner from the packet's socket (tcplife's socks map) */
	DROP_OWNER_LISTENER = 1 << 1, /* owner is the listener on the packet's (netns, port) */
	DROP_NO_CT = 1 << 2,          /* NETFILTER_DROP of a packet conntrack never attached an entry to */
	DROP_HAS_PORTS = 1 << 3,      /* sport/dport parsed from a TCP or UDP header */
	DROP_HAS_ADDRS = 1 << 4,      /* saddr/daddr parsed from an IPv4 or IPv6 header */
};

/*
 * struct drop_event: one packet freed by kfree_skb with a drop reason, sent
 * up to `drop_records_per_sec` per CPU; every drop, sent or not, is counted
 * in the drop_counts map. `reason` is the running kernel's value of enum
 * skb_drop_reason (numbers differ between kernels: user space names it from
 * BTF). Addresses in network byte order, ports and protocol in host order.
 */
struct drop_event {
	__u8 kind;      /* RECORD_DROP */
	__u8 family;    /* AF_INET, AF_INET6, 0 when the packet is not IP */
	__u8 l4proto;   /* IPPROTO_* from the IP header, 0 if unknown */
	__u8 flags;     /* enum drop_flags */
	__u8 tcp_flags; /* TCP header flags (FIN 0x01, SYN 0x02, RST 0x04, ACK 0x10) */
	__u8 pad[3];
	__u32 reason;   /* enum skb_drop_reason (this kernel's numbering) */
	__u32 netns;    /* network namespace inode, 0 if the packet had no device or socket */
	__u32 ifindex;  /* skb->dev's ifindex, 0 if none */
	__u32 tgid;     /* owner, when flags say one was found */
	__u64 location; /* kernel address that freed the packet */
	__u64 time_ns;  /* CLOCK_BOOTTIME */
	__u16 sport;
	__u16 dport;
	__u16 protocol; /* skb->protocol (ethertype) */
	__u16 pad2;
	__u8 saddr[16];
	__u8 daddr[16];
	__u8 comm[TASK_COMM_LEN];
};

/*
 * struct drop_key: the drop_counts map's key. Every drop is counted exactly
 * in the kernel under (location, reason, netns, owner tgid); records are
 * only samples of those counts.
 */
struct drop_key {
	__u64 location;
	__u32 reason;
	__u32 netns;
	__u32 tgid;  /* 0 when no owner was found */
	__u32 flags; /* DROP_NO_CT only: conntrack candidates counted apart */
};

/*
 * struct ct_entry_event: one conntrack entry inserted, removed or refused
 * (conntrack.bpf.c, on the kernel's own conntrack functions). The tuples are
 * conntrack's: orig_* the original direction (the first packet's source
 * first), reply_* the reply direction (differs from orig reversed under
 * NAT). Addresses in network byte order (IPv4 in the first 4 bytes), ports
 * in host byte order (0 for protocols without ports), time CLOCK_BOOTTIME.
 */
struct ct_entry_event {
	__u8 kind;      /* RECORD_CT_NEW, RECORD_CT_DESTROY, RECORD_CT_ALLOC_FAILED */
	__u8 family;    /* AF_INET or AF_INET6 (the tuple's l3num) */
	__u8 proto;     /* IPPROTO_* */
	__u8 tcp_state; /* conntrack's TCP state (TCP_CONNTRACK_*), 0 if not TCP or refused */
	__u32 netns;    /* the entry's network namespace inode */
	__u64 time_ns;
	__u16 orig_sport;
	__u16 orig_dport;
	__u16 reply_sport;
	__u16 reply_dport;
	__u8 orig_saddr[16];
	__u8 orig_daddr[16];
	__u8 reply_saddr[16];
	__u8 reply_daddr[16];
};

#endif /* CONNTRACER_H */
