/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Record layouts of the jalki-tcp probes: the one definition. The Python
 * mirrors in jalki_tcp/layouts.py are checked against these sizes (and the
 * object's BTF) when a probe loads.
 */
#ifndef JALKI_TCP_EVENTS_H
#define JALKI_TCP_EVENTS_H

#include "jalki/sock.bpf.h" /* includes jalki/common.bpf.h */

/*
 * struct jalki_event_header.flags bits of the TCP records (bit 0 is
 * JALKI_HDR_OWNER_KNOWN):
 *   JALKI_TCP_BIRTH_UNSEEN  tcp_close_event: the socket's birth (CLOSE ->
 *                           SYN_SENT of an active open, LISTEN -> SYN_RECV or
 *                           SYN_RECV -> ESTABLISHED of an accepted socket) was
 *                           not seen (open before jalki started, or the
 *                           tracking map was full then): duration_ns covers
 *                           only part of the connection's life and is reported
 *                           as unknown.
 *   JALKI_TCP_ABANDONED     tcp_connect_event: the application closed the
 *                           socket (or exited) while the handshake was still
 *                           running; the kernel had not given up (no sk_err).
 *   JALKI_TCP_SYNC_FAILURE  tcp_connect_event: decided by the connect()
 *                           system call itself, which failed before the socket
 *                           ever reached SYN_SENT (no route, a prohibiting
 *                           route, a cgroup connect hook, a bad address): the
 *                           destination comes from the caller's sockaddr, the
 *                           source is what the socket was bound to (usually
 *                           unspecified, port 0), latency_ns is the time the
 *                           call took.
 */
#define JALKI_TCP_BIRTH_UNSEEN (1u << 8)
#define JALKI_TCP_ABANDONED (1u << 9)
#define JALKI_TCP_SYNC_FAILURE (1u << 10)

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
 * SYN_SENT -> ESTABLISHED (error 0) or SYN_SENT -> CLOSE (error = sk_err),
 * or the same from SYN_RECV after a simultaneous open; or, with
 * JALKI_TCP_SYNC_FAILURE, a connect() that failed before SYN_SENT (error =
 * its errno). hdr.flags may carry JALKI_TCP_ABANDONED. */
struct tcp_connect_event {
	struct jalki_event_header hdr;
	struct jalki_tcp_tuple tuple;
	__u64 latency_ns;  /* from entering SYN_SENT to the outcome (JALKI_TCP_SYNC_FAILURE:
			    * from entering connect() to its return) */
	__s32 error;       /* 0 on success, else positive errno (ECONNREFUSED, ETIMEDOUT, ...) */
	__u32 netns;       /* network namespace inode */
};
_Static_assert(sizeof(struct tcp_connect_event) == 96, "tcp_connect_event layout");

/* One established connection that ended (transition to CLOSE). hdr.flags may
 * carry JALKI_TCP_BIRTH_UNSEEN. */
struct tcp_close_event {
	struct jalki_event_header hdr;
	struct jalki_tcp_tuple tuple;
	__u64 duration_ns;     /* from the birth to CLOSE; only from the first state change
				* seen when hdr.flags has JALKI_TCP_BIRTH_UNSEEN */
	__u64 bytes_sent;      /* payload transmitted, each byte once, since the socket was
				* created: tcp_sock.bytes_sent - bytes_retrans (SYN and FIN
				* carry no payload; retransmissions are not counted again) */
	__u64 bytes_received;  /* payload received in order since the socket was created:
				* tcp_sock.bytes_received less the peer's FIN */
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

/* Direction of a tcp_reset_event. */
#define JALKI_TCP_RESET_SENT 0
#define JALKI_TCP_RESET_RECEIVED 1

/* One TCP reset (RST) sent or received (tcp:tcp_send_reset, tcp:tcp_receive_reset).
 * The tuple is always from this host's point of view: saddr/sport local,
 * daddr/dport the peer (for a reset sent with no full socket the kernel
 * answers an incoming segment, whose addresses are reversed here). */
struct tcp_reset_event {
	struct jalki_event_header hdr;
	struct jalki_tcp_tuple tuple;
	__u32 state;     /* TCP state of the socket; 0 when the reset was sent with no socket
			  * (nothing listens on the port, or the connection is unknown) */
	__u32 netns;     /* network namespace inode (of the socket, else of the receiving device) */
	__u32 direction; /* JALKI_TCP_RESET_SENT or JALKI_TCP_RESET_RECEIVED */
	__u32 _pad;
};
_Static_assert(sizeof(struct tcp_reset_event) == 96, "tcp_reset_event layout");

/* tcp_rtt_key.direction: which end of the connection the key names. */
#define JALKI_TCP_RTT_UNKNOWN 0 /* socket born before jalki saw it: keyed like an active one */
#define JALKI_TCP_RTT_ACTIVE 1  /* this host connected: port is the remote (service) port */
#define JALKI_TCP_RTT_PASSIVE 2 /* this host accepted: port is the LOCAL (service) port, so all
				 * clients from one address to one local service are one key */

/* Key of the RTT aggregate (tcp_rtt): the remote address, the service port
 * (remote for active/unknown sockets, local for passive ones), the direction
 * that says which, and the network namespace. family is AF_INET or AF_INET6. */
struct tcp_rtt_key {
	__u8 raddr[16];
	__u16 port;
	__u8 family;
	__u8 direction; /* JALKI_TCP_RTT_* */
	__u32 netns;
};
_Static_assert(sizeof(struct tcp_rtt_key) == 24, "tcp_rtt_key layout");

#define JALKI_TCP_RTT_OWNER_SLOTS 4

/* The aggregate of one key over one interval window. */
struct tcp_rtt_agg {
	__u64 window;    /* window number: bpf_ktime_get_ns() / interval */
	__u64 first_ns;  /* first and last sample of the window */
	__u64 last_ns;
	__u64 sum_us;    /* sum of the sampled smoothed RTTs (microseconds) */
	__u32 samples;
	__u32 min_us;
	__u32 max_us;
	__u32 peer_zero_wnd;  /* samples where the peer advertised a zero window (snd_wnd 0) */
	__u32 local_zero_wnd; /* samples where this host advertised a zero window (rcv_wnd 0) */
	__u32 unowned;        /* samples of sockets with no recorded owner */
	__u32 foreign;        /* samples of sockets owned by another process than owner_tgid */
	__u32 owner_tgid;     /* owner of the window's first sample (0: none recorded) */
	__u64 owner_cgroup_id;
	char owner_comm[16];
	/* distinct owners seen (slot 0 = owner_tgid), best effort under concurrent
	 * updates; owners_overflow: more owners than slots */
	__u32 owners[JALKI_TCP_RTT_OWNER_SLOTS];
	__u32 owners_overflow;
	__u32 _pad;
};
_Static_assert(sizeof(struct tcp_rtt_agg) == 112, "tcp_rtt_agg layout");

/* One emitted RTT aggregate: a key over one closed window. The header
 * carries no owner (user space names one from agg when one process owned
 * every sample); hdr.ts_ns is the emission time. */
struct tcp_rtt_event {
	struct jalki_event_header hdr;
	struct tcp_rtt_key key;
	struct tcp_rtt_agg agg;
	__u64 interval_ns;
};
_Static_assert(sizeof(struct tcp_rtt_event) == 184, "tcp_rtt_event layout");

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

/*
 * Optional owner programs (task context): record the process that sends on
 * or reads from a socket as its owner when none is known yet, which is what
 * names the owner of an accepted (server-side) socket; and forget the owner
 * when the kernel destroys the socket, so that an entry can never pass to
 * the next socket allocated at the same address. No owner is recorded for a
 * socket in CLOSE or LISTEN (see jalki_owner_record_if_absent()).
 *   tp_btf:     tcp_sendmsg_locked, tcp_rcv_space_adjust, tcp_destroy_sock
 *   tracepoint: tcp/tcp_rcv_space_adjust, tcp/tcp_destroy_sock (the classic
 *               tcp_sendmsg_locked record carries no socket pointer)
 */
#define JALKI_TCP_OWNER_PROGRAMS_BTF(send_name, recv_name, destroy_name)                        \
	SEC("tp_btf/tcp_sendmsg_locked")                                                         \
	int BPF_PROG(send_name, const struct sock *sk)                                           \
	{                                                                                        \
		jalki_owner_record_if_absent(sk, jalki_sk_state(sk));                            \
		return 0;                                                                        \
	}                                                                                        \
	SEC("tp_btf/tcp_rcv_space_adjust")                                                       \
	int BPF_PROG(recv_name, const struct sock *sk)                                           \
	{                                                                                        \
		jalki_owner_record_if_absent(sk, jalki_sk_state(sk));                            \
		return 0;                                                                        \
	}                                                                                        \
	SEC("tp_btf/tcp_destroy_sock")                                                           \
	int BPF_PROG(destroy_name, const struct sock *sk)                                        \
	{                                                                                        \
		jalki_owner_forget(sk);                                                          \
		return 0;                                                                        \
	}

#define JALKI_TCP_OWNER_PROGRAMS_TP(recv_name, destroy_name)                                    \
	SEC("tracepoint/tcp/tcp_rcv_space_adjust")                                               \
	int recv_name(struct trace_event_raw_tcp_event_sk *ctx)                                  \
	{                                                                                        \
		const struct sock *sk = ctx->skaddr;                                             \
                                                                                                 \
		jalki_owner_record_if_absent(sk, jalki_sk_state_probed(sk));                     \
		return 0;                                                                        \
	}                                                                                        \
	SEC("tracepoint/tcp/tcp_destroy_sock")                                                   \
	int destroy_name(struct trace_event_raw_tcp_event_sk *ctx)                               \
	{                                                                                        \
		jalki_owner_forget(ctx->skaddr);                                                 \
		return 0;                                                                        \
	}

/* TCP states by kernel number (include/net/tcp_states.h). vmlinux.h already
 * defines TCP_ESTABLISHED and friends, hence the ST_ prefix. */
enum {
	ST_ESTABLISHED = 1,
	ST_SYN_SENT = 2,
	ST_SYN_RECV = 3,
	ST_FIN_WAIT1 = 4,
	ST_FIN_WAIT2 = 5,
	ST_TIME_WAIT = 6,
	ST_CLOSE = 7,
	ST_CLOSE_WAIT = 8,
	ST_LAST_ACK = 9,
	ST_LISTEN = 10,
	ST_CLOSING = 11,
	ST_NEW_SYN_RECV = 12,
};

#endif /* JALKI_TCP_EVENTS_H */
