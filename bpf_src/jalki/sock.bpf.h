/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * jalki/sock.bpf.h: socket services for probes of sockets (jalki_tcp).
 *
 * Include it instead of jalki/common.bpf.h (it includes that file) in a probe
 * object that looks at sockets. It defines, in that object, on top of what
 * common.bpf.h defines:
 *
 *   jalki_sock_owner  LRU_HASH, key = socket pointer (__u64), value =
 *                     struct jalki_owner: who owns a socket, recorded in
 *                     task context, read later in softirq/timer context
 *
 * Objects that never see a socket include common.bpf.h alone, so they
 * declare no socket map (nothing to create at load, nothing to pin).
 *
 * Socket helpers (jalki_sk_*): the plain versions dereference a BTF-typed
 * `struct sock *` directly (tp_btf, fentry/fexit arguments): no
 * bpf_probe_read, so they keep working under lockdown=confidentiality. The
 * *_probed versions use BPF_CORE_READ (bpf_probe_read_kernel) for untyped
 * pointers such as a classic tracepoint's `skaddr`.
 */
#ifndef JALKI_SOCK_BPF_H
#define JALKI_SOCK_BPF_H

#include "jalki/common.bpf.h"

#define JALKI_AF_INET 2
#define JALKI_AF_INET6 10
#define JALKI_IPPROTO_TCP 6

/* errno values used by socket probes (include/uapi/asm-generic/errno.h) */
#define JALKI_EADDRNOTAVAIL 99
#define JALKI_ECONNABORTED 103
#define JALKI_ETIMEDOUT 110
#define JALKI_ECONNREFUSED 111

/* socket states (include/net/tcp_states.h) the shared helpers test */
#define JALKI_TCP_CLOSE 7
#define JALKI_TCP_LISTEN 10

#ifndef JALKI_SOCK_OWNER_ENTRIES
#define JALKI_SOCK_OWNER_ENTRIES 16384
#endif

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, JALKI_SOCK_OWNER_ENTRIES);
	__type(key, __u64);
	__type(value, struct jalki_owner);
} jalki_sock_owner SEC(".maps");

/* ------------------------------------------------------------------ */
/* Socket owners                                                       */
/* ------------------------------------------------------------------ */

/* Record the current task as the owner of sk. Call only in task context. */
static __always_inline void jalki_owner_record(const void *sk)
{
	__u64 key = (__u64)(unsigned long)sk;
	struct jalki_owner owner = {};

	jalki_owner_current(&owner);
	bpf_map_update_elem(&jalki_sock_owner, &key, &owner, BPF_ANY);
}

/*
 * Record the current task as sk's owner unless one is already known: for hot
 * task-context paths (send/receive) where a lookup is much cheaper than an
 * update, and the first owner seen stays until connect/close re-record it.
 *
 * `state` is sk's skc_state (jalki_sk_state() or jalki_sk_state_probed()).
 * Nothing is recorded for a socket in CLOSE or LISTEN: the owner entry is
 * deleted when a socket moves to CLOSE, and an entry added after that (a
 * process reading what was left after the connection ended) would outlive
 * the socket and be inherited by the next socket allocated at the same
 * address, which this function never overwrites.
 */
static __always_inline void jalki_owner_record_if_absent(const void *sk, int state)
{
	__u64 key = (__u64)(unsigned long)sk;
	struct jalki_owner owner = {};

	if (state == JALKI_TCP_CLOSE || state == JALKI_TCP_LISTEN)
		return;
	if (bpf_map_lookup_elem(&jalki_sock_owner, &key))
		return;
	jalki_owner_current(&owner);
	bpf_map_update_elem(&jalki_sock_owner, &key, &owner, BPF_NOEXIST);
}

static __always_inline struct jalki_owner *jalki_owner_lookup(const void *sk)
{
	__u64 key = (__u64)(unsigned long)sk;

	return bpf_map_lookup_elem(&jalki_sock_owner, &key);
}

static __always_inline void jalki_owner_forget(const void *sk)
{
	__u64 key = (__u64)(unsigned long)sk;

	bpf_map_delete_elem(&jalki_sock_owner, &key);
}

/* ------------------------------------------------------------------ */
/* Inet socket readers                                                 */
/* ------------------------------------------------------------------ */
/*
 * Addresses are written in network byte order into 16-byte arrays, all 16
 * bytes on every path (IPv4 in the first 4 bytes, the rest zeroed); ports in
 * host byte order: sport is skc_num (0 once the local port has been
 * released, e.g. at CLOSE), dport is ntohs(skc_dport).
 */

static __always_inline void jalki_put_addr4(__u8 *dst, __be32 addr)
{
	__builtin_memset(dst, 0, 16);
	__builtin_memcpy(dst, &addr, 4);
}

/* Direct BTF dereference: sk must be a BTF-typed pointer (tp_btf, fentry). */
static __always_inline void jalki_sk_addrs(const struct sock *sk, __u8 *saddr, __u8 *daddr,
					   __u16 *sport, __u16 *dport, __u16 *family)
{
	__u16 fam = sk->__sk_common.skc_family;

	*family = fam;
	*sport = sk->__sk_common.skc_num;
	*dport = bpf_ntohs(sk->__sk_common.skc_dport);
	if (fam == JALKI_AF_INET6) {
		__be32 *s = (__be32 *)saddr, *d = (__be32 *)daddr;

		s[0] = sk->__sk_common.skc_v6_rcv_saddr.in6_u.u6_addr32[0];
		s[1] = sk->__sk_common.skc_v6_rcv_saddr.in6_u.u6_addr32[1];
		s[2] = sk->__sk_common.skc_v6_rcv_saddr.in6_u.u6_addr32[2];
		s[3] = sk->__sk_common.skc_v6_rcv_saddr.in6_u.u6_addr32[3];
		d[0] = sk->__sk_common.skc_v6_daddr.in6_u.u6_addr32[0];
		d[1] = sk->__sk_common.skc_v6_daddr.in6_u.u6_addr32[1];
		d[2] = sk->__sk_common.skc_v6_daddr.in6_u.u6_addr32[2];
		d[3] = sk->__sk_common.skc_v6_daddr.in6_u.u6_addr32[3];
	} else {
		jalki_put_addr4(saddr, sk->__sk_common.skc_rcv_saddr);
		jalki_put_addr4(daddr, sk->__sk_common.skc_daddr);
	}
}

/* Same through BPF_CORE_READ, for untyped pointers (classic tracepoints). */
static __always_inline void jalki_sk_addrs_probed(const struct sock *sk, __u8 *saddr,
						  __u8 *daddr, __u16 *sport, __u16 *dport,
						  __u16 *family)
{
	__u16 fam = BPF_CORE_READ(sk, __sk_common.skc_family);

	*family = fam;
	*sport = BPF_CORE_READ(sk, __sk_common.skc_num);
	*dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (fam == JALKI_AF_INET6) {
		/* all 16 bytes: BPF_CORE_READ_INTO(dst, ...) copies sizeof(*dst),
		 * one byte through a __u8 *. bpf_probe_read_kernel zeroes dst when
		 * the read fails. */
		bpf_core_read(saddr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
		bpf_core_read(daddr, 16, &sk->__sk_common.skc_v6_daddr);
	} else {
		jalki_put_addr4(saddr, BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr));
		jalki_put_addr4(daddr, BPF_CORE_READ(sk, __sk_common.skc_daddr));
	}
}

/* skc_state (TCP: include/net/tcp_states.h numbering). */
static __always_inline int jalki_sk_state(const struct sock *sk)
{
	return sk->__sk_common.skc_state;
}

static __always_inline int jalki_sk_state_probed(const struct sock *sk)
{
	return BPF_CORE_READ(sk, __sk_common.skc_state);
}

/* Network namespace inode of sk. */
static __always_inline __u32 jalki_sk_netns(const struct sock *sk)
{
	return sk->__sk_common.skc_net.net->ns.inum;
}

static __always_inline __u32 jalki_sk_netns_probed(const struct sock *sk)
{
	return BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
}

/* sk_protocol: a bitfield before Linux 5.6, a __u16 since; read either way. */
static __always_inline __u16 jalki_sk_protocol(const struct sock *sk)
{
	return BPF_CORE_READ_BITFIELD(sk, sk_protocol);
}

/*
 * Addresses and ports from a sock:inet_sock_set_state record (the record's
 * sport is ntohs(inet_sport), still set at CLOSE when skc_num is already 0).
 */
static __always_inline void
jalki_set_state_record_addrs(const struct trace_event_raw_inet_sock_set_state *rec, __u8 *saddr,
			     __u8 *daddr, __u16 *sport, __u16 *dport, __u16 *family)
{
	__u16 fam = rec->family;

	*family = fam;
	*sport = rec->sport;
	*dport = rec->dport;
	if (fam == JALKI_AF_INET6) {
		bpf_probe_read_kernel(saddr, 16, rec->saddr_v6);
		bpf_probe_read_kernel(daddr, 16, rec->daddr_v6);
	} else {
		__builtin_memset(saddr, 0, 16);
		__builtin_memset(daddr, 0, 16);
		bpf_probe_read_kernel(saddr, 4, rec->saddr);
		bpf_probe_read_kernel(daddr, 4, rec->daddr);
	}
}

#endif /* JALKI_SOCK_BPF_H */
