/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Record layouts of the jalki-tcp probes: the one definition. The Python
 * mirrors in jalki_tcp/layouts.py are checked against these sizes (and the
 * object's BTF) when a probe loads.
 */
#ifndef JALKI_TCP_EVENTS_H
#define JALKI_TCP_EVENTS_H

#include "jalki/common.bpf.h"

/* Addresses are kept in network byte order, IPv4 in the first 4 bytes;
 * ports in host byte order. family is AF_INET (2) or AF_INET6 (10). */
struct jalki_tcp_tuple {
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport;
	__u16 dport;
	__u16 family;
	__u16 _pad;
};
_Static_assert(sizeof(struct jalki_tcp_tuple) == 40, "jalki_tcp_tuple layout");

/* One connection attempt, emitted when its outcome is known:
 * SYN_SENT -> ESTABLISHED (error 0) or SYN_SENT -> CLOSE (error = sk_err). */
struct tcp_connect_event {
	struct jalki_event_header hdr;
	struct jalki_tcp_tuple tuple;
	__u64 latency_ns;  /* from entering SYN_SENT to the outcome */
	__s32 error;       /* 0 on success, else positive errno (ECONNREFUSED, ETIMEDOUT, ...) */
	__u32 netns;       /* network namespace inode */
};
_Static_assert(sizeof(struct tcp_connect_event) == 96, "tcp_connect_event layout");

/* One established connection that ended (transition to CLOSE). */
struct tcp_close_event {
	struct jalki_event_header hdr;
	struct jalki_tcp_tuple tuple;
	__u64 duration_ns;     /* from the first state change seen to CLOSE */
	__u64 bytes_sent;      /* payload acked by the peer: bytes_acked less our SYN and FIN */
	__u64 bytes_received;  /* payload received in order: bytes_received less the peer FIN */
	__u32 oldstate;        /* state the socket left for CLOSE (tcp_states.h numbering) */
	__u32 netns;
};
_Static_assert(sizeof(struct tcp_close_event) == 112, "tcp_close_event layout");

/* One retransmitted segment; the owner comes from the socket-owner map. */
struct tcp_retransmit_event {
	struct jalki_event_header hdr;
	struct jalki_tcp_tuple tuple;
	__u32 state;  /* TCP state when the segment was retransmitted */
	__u32 netns;
};
_Static_assert(sizeof(struct tcp_retransmit_event) == 88, "tcp_retransmit_event layout");

/*
 * Programs on sock:inet_sock_set_state that pass TCP sockets to
 * `handler(void *ctx, const struct sock *sk, int oldstate, int newstate, bool btf)`:
 * the tp_btf flavour (direct BTF reads, btf = true) and the classic
 * tracepoint flavour (the tracepoint record, btf = false).
 */
#define JALKI_TCP_STATE_PROGRAM_BTF(name, handler)                                              \
	SEC("tp_btf/inet_sock_set_state")                                                        \
	int BPF_PROG(name, const struct sock *sk, const int oldstate, const int newstate)       \
	{                                                                                        \
		if (jalki_sk_protocol(sk) != JALKI_IPPROTO_TCP)                                  \
			return 0;                                                                \
		return handler(ctx, sk, oldstate, newstate, true);                               \
	}

#define JALKI_TCP_STATE_PROGRAM_TP(name, handler)                                               \
	SEC("tracepoint/sock/inet_sock_set_state")                                               \
	int name(struct trace_event_raw_inet_sock_set_state *ctx)                                \
	{                                                                                        \
		if (ctx->protocol != JALKI_IPPROTO_TCP)                                          \
			return 0;                                                                \
		return handler(ctx, (const struct sock *)ctx->skaddr, ctx->oldstate,             \
			       ctx->newstate, false);                                            \
	}

#endif /* JALKI_TCP_EVENTS_H */
