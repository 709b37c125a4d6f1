/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Kernel constants the objects share. They are macros in the kernel's
 * headers, so vmlinux.h (generated from BTF, which has no macros) lacks
 * them; their values are part of the kernel's ABI and the same on every
 * architecture the tracer builds for (x86-64, arm64). Constants that only
 * one object uses stay in that object's file.
 */
#ifndef CONNTRACER_KERNEL_DEFS_H
#define CONNTRACER_KERNEL_DEFS_H

/* Address families (linux/socket.h) */
#define AF_UNIX 1
#define AF_INET 2
#define AF_INET6 10

/* IP protocols (uapi/linux/in.h) */
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define IPPROTO_DCCP 33
#define IPPROTO_SCTP 132
#define IPPROTO_UDPLITE 136

/* Ethertypes (uapi/linux/if_ether.h) */
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD

/* errno values (uapi/asm-generic/errno-base.h, errno.h) */
#define ENOENT 2
#define EAGAIN 11
#define EPIPE 32
#define ECONNRESET 104
#define ECONNREFUSED 111
#define EINPROGRESS 115
#define MAX_ERRNO 4095 /* linux/err.h: IS_ERR_VALUE */

/* Sockets and files (linux/net.h, uapi/linux/socket.h, asm-generic/fcntl.h, stat.h) */
#define SOCK_DGRAM 2
#define MSG_DONTWAIT 0x40
#define O_NONBLOCK 04000
#define S_IFMT 00170000
#define S_IFSOCK 0140000

#endif /* CONNTRACER_KERNEL_DEFS_H */
