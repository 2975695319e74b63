// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * tcp_close: one event per TCP connection that was established and ended
 * (its transition to CLOSE), with duration, bytes and the owning process.
 *
 * Every state change of a TCP socket is seen (sock:inet_sock_set_state):
 *   - the first change seen for a socket starts close_track (start time and
 *     tuple; sockets that only LISTEN are not tracked). Its birth restarts
 *     the entry and is remembered: CLOSE -> SYN_SENT (active open),
 *     LISTEN -> SYN_RECV (an accepted child is cloned) or, when that was
 *     missed, SYN_RECV -> ESTABLISHED. A socket first seen later (open
 *     before jalki started, or the table was full at its birth) is reported
 *     with JALKI_TCP_BIRTH_UNSEEN: its duration is unknown;
 *   - a socket is "established" once ESTABLISHED or a later state
 *     (FIN_WAIT1/2, TIME_WAIT, CLOSE_WAIT, LAST_ACK, CLOSING) is seen as its
 *     old or new state; on -> ESTABLISHED the tracked tuple is refreshed
 *     (complete only then: the connecting side binds its port after
 *     SYN_SENT, an accepted child gets its addresses after it is cloned);
 *   - an active open that leaves SYN_RECV for FIN_WAIT1 (the application
 *     closed a simultaneous open before it completed) is never reported: it
 *     is a failed connect (tcp_connect), not a connection;
 *   - the owner (pid, comm, cgroup) is recorded on CLOSE -> SYN_SENT,
 *     -> FIN_WAIT1 and -> LAST_ACK, which run in the connecting or closing
 *     task; never from softirq, where the current task is unrelated. The
 *     optional owner programs (JALKI_TCP_OWNER_PROGRAMS_*) also record the
 *     process sending on or reading from a socket, which names the owner of
 *     an accepted socket closed straight from ESTABLISHED (a close() with
 *     unread data sends a RST), and forget it when the socket is destroyed;
 *   - on -> CLOSE an established socket is reported, and its tracking and
 *     owner entries are deleted. LISTEN -> CLOSE and failed connects are
 *     not reported.
 * The tuple comes from the tracked copy (at CLOSE the live local port is
 * already 0). Owner: jalki_sock_owner, else the tracked snapshot, else
 * unknown (pid 0, JALKI_HDR_OWNER_KNOWN clear). Bytes are counted by the
 * kernel since the socket was created, whether or not its birth was seen.
 *
 * Rungs: tp_btf: tpbtf_close_state
 *                (optional: tpbtf_owner_send, tpbtf_owner_recv, tpbtf_owner_destroy);
 *        tracepoint: tp_close_state (optional: tp_owner_recv, tp_owner_destroy).
 */
#include "tcp_events.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

JALKI_BTF_EXPORT(tcp_close_event);


#define CLOSE_TRACK_ENTRIES 32768

struct close_track {
	__u64 start_ns;
	struct jalki_owner owner; /* snapshot; tgid 0 = none recorded */
	struct jalki_tcp_tuple tuple;
	__u32 established; /* reached ESTABLISHED (or a later state) */
	__u16 birth;       /* BIRTH_*: how the socket was born, if that was seen */
	__u16 abandoned;   /* a simultaneous open closed in SYN_RECV: never reported */
};

enum {
	BIRTH_UNSEEN = 0,
	BIRTH_ACTIVE = 1,  /* CLOSE -> SYN_SENT */
	BIRTH_PASSIVE = 2, /* LISTEN -> SYN_RECV, or SYN_RECV -> ESTABLISHED */
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, JALKI_RINGBUF_DEFAULT_BYTES);
} events SEC(".maps");

/* Live TCP sockets by socket pointer (HASH: a full table is counted as
 * JALKI_DROP_TRACKING_FULL rather than evicting a live connection). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CLOSE_TRACK_ENTRIES);
	__type(key, __u64);
	__type(value, struct close_track);
} close_track SEC(".maps");

/* ESTABLISHED or a state only a synchronized connection reaches. */
static __always_inline bool synchronized(int state)
{
	return state == ST_ESTABLISHED || (state >= ST_FIN_WAIT1 && state <= ST_TIME_WAIT) ||
	       state == ST_CLOSE_WAIT || state == ST_LAST_ACK || state == ST_CLOSING;
}

static __always_inline void read_tuple(void *ctx, const struct sock *sk, struct jalki_tcp_tuple *t,
				       bool btf)
{
	if (btf)
		jalki_sk_addrs(sk, t->saddr, t->daddr, &t->sport, &t->dport, &t->family);
	else
		jalki_set_state_record_addrs(ctx, t->saddr, t->daddr, &t->sport, &t->dport,
					     &t->family);
	t->_pad = 0;
}

/*
 * Payload octets since the socket was created (the kernel's counters, so they
 * do not depend on jalki having seen the birth). tcp_sock.bytes_sent counts
 * the payload of every transmission, retransmissions included, and
 * bytes_retrans the payload retransmitted: their difference counts each byte
 * once (SYN and FIN carry no payload). bytes_received sums rcv_nxt advances,
 * so it counts the peer's FIN (SOCK_DONE is set when that FIN is processed)
 * but never the peer's SYN.
 */
static __always_inline void read_bytes(const struct sock *sk, struct tcp_close_event *ev,
				       bool btf)
{
	__u64 sent, retrans, received, flags;

	if (btf) {
		struct tcp_sock *tp = bpf_skc_to_tcp_sock((void *)sk);

		if (!tp) {
			ev->bytes_sent = 0;
			ev->bytes_received = 0;
			return;
		}
		sent = tp->bytes_sent;
		retrans = tp->bytes_retrans;
		received = tp->bytes_received;
		flags = sk->__sk_common.skc_flags;
	} else {
		const struct tcp_sock *tp = (const struct tcp_sock *)sk;

		sent = BPF_CORE_READ(tp, bytes_sent);
		retrans = BPF_CORE_READ(tp, bytes_retrans);
		received = BPF_CORE_READ(tp, bytes_received);
		flags = BPF_CORE_READ(sk, __sk_common.skc_flags);
	}
	if ((flags & (1ULL << bpf_core_enum_value(enum sock_flags, SOCK_DONE))) && received)
		received--;
	/* a retransmission whose transmit failed before it was counted in
	 * bytes_sent (no memory) must not make the difference wrap */
	ev->bytes_sent = sent > retrans ? sent - retrans : 0;
	ev->bytes_received = received;
}

static __always_inline void emit_close(const struct sock *sk, const struct close_track *tr,
				       int oldstate, bool btf)
{
	const struct jalki_owner *owner = jalki_owner_lookup(sk);
	struct tcp_close_event *ev;
	__u32 tgid;

	if (!owner && tr->owner.tgid)
		owner = &tr->owner;
	tgid = owner ? owner->tgid : 0;
	if (jalki_is_self(tgid))
		return;
	if (!jalki_pass_filters(tgid, tr->tuple.sport, tr->tuple.dport))
		return;
	if (jalki_sampled_out())
		return;

	ev = jalki_reserve(sizeof(*ev));
	if (!ev)
		return;
	jalki_fill_header_from_owner(&ev->hdr, owner);
	if (tr->birth == BIRTH_UNSEEN)
		ev->hdr.flags |= JALKI_TCP_BIRTH_UNSEEN;
	__builtin_memcpy(&ev->tuple, &tr->tuple, sizeof(ev->tuple));
	ev->duration_ns = ev->hdr.ts_ns - tr->start_ns;
	ev->oldstate = oldstate;
	read_bytes(sk, ev, btf);
	ev->netns = btf ? jalki_sk_netns(sk) : jalki_sk_netns_probed(sk);
	bpf_ringbuf_submit(ev, 0);
}

/* How this transition gives birth to a socket, if it does. */
static __always_inline __u16 birth_of(int oldstate, int newstate)
{
	if (oldstate == ST_CLOSE && newstate == ST_SYN_SENT)
		return BIRTH_ACTIVE;
	if ((oldstate == ST_LISTEN && newstate == ST_SYN_RECV) ||
	    (oldstate == ST_SYN_RECV && newstate == ST_ESTABLISHED))
		return BIRTH_PASSIVE;
	return BIRTH_UNSEEN;
}

static __always_inline int handle_state(void *ctx, const struct sock *sk, int oldstate,
					int newstate, bool btf)
{
	__u64 key = (__u64)(unsigned long)sk;
	struct close_track *tr;
	__u16 birth;

	if (newstate == ST_LISTEN)
		return 0;
	tr = bpf_map_lookup_elem(&close_track, &key);
	if (newstate == ST_CLOSE) {
		if (tr) {
			if (!tr->abandoned && (tr->established || synchronized(oldstate)))
				emit_close(sk, tr, oldstate, btf);
			bpf_map_delete_elem(&close_track, &key);
		}
		jalki_owner_forget(sk);
		return 0;
	}
	birth = birth_of(oldstate, newstate);
	/* A new entry for a socket first seen now, and a fresh one at an active
	 * open or a clone (an entry found then can only be a stale one). */
	if (!tr || (birth && oldstate != ST_SYN_RECV)) {
		struct close_track fresh;

		__builtin_memset(&fresh, 0, sizeof(fresh));
		fresh.start_ns = bpf_ktime_get_ns();
		fresh.birth = birth;
		read_tuple(ctx, sk, &fresh.tuple, btf);
		if (bpf_map_update_elem(&close_track, &key, &fresh, tr ? BPF_ANY : BPF_NOEXIST) &&
		    !bpf_map_lookup_elem(&close_track, &key)) {
			jalki_count_drop(JALKI_DROP_TRACKING_FULL);
			return 0;
		}
		tr = bpf_map_lookup_elem(&close_track, &key);
		if (!tr)
			return 0;
	} else if (birth && !tr->birth) {
		tr->birth = birth; /* SYN_RECV -> ESTABLISHED after a missed clone */
	}
	if (oldstate == ST_SYN_RECV && newstate == ST_FIN_WAIT1 && tr->birth == BIRTH_ACTIVE)
		tr->abandoned = 1; /* tcp_connect reports it as a failed attempt */
	if (synchronized(newstate) || synchronized(oldstate))
		tr->established = 1;
	if (newstate == ST_ESTABLISHED)
		read_tuple(ctx, sk, &tr->tuple, btf);
	if ((oldstate == ST_CLOSE && newstate == ST_SYN_SENT) || newstate == ST_FIN_WAIT1 ||
	    newstate == ST_LAST_ACK) {
		jalki_owner_current(&tr->owner);
		bpf_map_update_elem(&jalki_sock_owner, &key, &tr->owner, BPF_ANY);
	}
	return 0;
}

/* ---- rung "tp_btf" ---- */

JALKI_TCP_STATE_PROGRAM_BTF(tpbtf_close_state, handle_state)

JALKI_TCP_OWNER_PROGRAMS_BTF(tpbtf_owner_send, tpbtf_owner_recv, tpbtf_owner_destroy)

/* ---- rung "tracepoint" ---- */

JALKI_TCP_STATE_PROGRAM_TP(tp_close_state, handle_state)

JALKI_TCP_OWNER_PROGRAMS_TP(tp_owner_recv, tp_owner_destroy)
