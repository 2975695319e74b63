// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * tcp_connect: one event per outgoing connection attempt, emitted when its
 * outcome is known, with the latency from entering SYN_SENT.
 *
 * tcp_connect() only sends the SYN and returns 0 for a connect that is later
 * refused or times out, so the outcome comes from the socket's state changes:
 *   CLOSE -> SYN_SENT         inside connect(), task context: self and
 *                             filters, then sampling (per attempt); remember
 *                             start, owner and tuple (connect_start,
 *                             jalki_sock_owner)
 *   SYN_SENT -> ESTABLISHED   error 0                     (softirq)
 *   SYN_SENT -> CLOSE         error = the socket's error  (softirq, timer or task)
 *   SYN_SENT -> SYN_RECV      a simultaneous open: tracking continues, and
 *                             the next transition out of SYN_RECV ends the
 *                             attempt: -> ESTABLISHED is success, any other
 *                             (-> CLOSE, or -> FIN_WAIT1 when the application
 *                             closes the socket then) a failure as below
 *   SYN_SENT -> anything else a failure as below (no such transition exists
 *                             today; the attempt ends so that its tracking
 *                             can never outlive the socket)
 * Exactly one event per attempt, and its tracking entry is deleted with it.
 *
 * Error of a failed attempt, first that applies:
 *   sk_err        ECONNREFUSED (RST), ETIMEDOUT (SYN retries exhausted),
 *                 EHOSTUNREACH/ENETUNREACH (ICMP); the kernel sets it before
 *                 the CLOSE transition (tcp_done_with_error)
 *   sk_shutdown set: the application closed the socket (or exited) during the
 *                 handshake, before the kernel gave up; JALKI_TCP_ABANDONED is
 *                 set in hdr.flags and the error is sk_err_soft (a soft ICMP
 *                 error seen while the handshake was retried) if any, else
 *                 ETIMEDOUT when the SYN had been retransmitted
 *                 (icsk_retransmits > 0: the application's own connect
 *                 timeout), else ECONNABORTED (it gave up before any
 *                 retransmission was due)
 *   sk_err_soft   a soft error (ICMP) seen while the handshake was retried
 *   EADDRNOTAVAIL connect() failed synchronously before a local port was
 *                 bound (inet_hash_connect: no free ephemeral port)
 *   ECONNABORTED  any other synchronous failure inside connect(); its errno
 *                 only reached the caller. The fexit rung reports those
 *                 exactly from tcp_connect()'s return value.
 *
 * Rungs (program names are the contract with jalki_tcp's ladder):
 *   fexit:      fexit_tcp_connect + fexit_connect_state
 *   tp_btf:     tpbtf_connect_state
 *   tracepoint: tp_connect_state
 */
#include "tcp_events.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

JALKI_BTF_EXPORT(tcp_connect_event);


#define CONNECT_TRACK_ENTRIES 16384

struct connect_track {
	__u64 start_ns;
	struct jalki_owner owner;
	struct jalki_tcp_tuple tuple; /* as seen at SYN_SENT (local port may be 0 then) */
	__u32 netns;
	__u32 sample_at_emit; /* port filter undecided at SYN_SENT: sample after it */
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, JALKI_RINGBUF_DEFAULT_BYTES);
} events SEC(".maps");

/* In-flight attempts by socket pointer. A plain HASH, so a full table shows
 * as JALKI_DROP_TRACKING_FULL instead of silently evicting an attempt. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CONNECT_TRACK_ENTRIES);
	__type(key, __u64);
	__type(value, struct connect_track);
} connect_start SEC(".maps");

/* ---- readers: BTF (direct dereference) or probed (classic tracepoint) ---- */

static __always_inline void tuple_from_sk(const struct sock *sk, struct jalki_tcp_tuple *t)
{
	jalki_sk_addrs(sk, t->saddr, t->daddr, &t->sport, &t->dport, &t->family);
	t->_pad = 0;
}

static __always_inline void tuple_from_record(const struct trace_event_raw_inet_sock_set_state *rec,
					      struct jalki_tcp_tuple *t)
{
	jalki_set_state_record_addrs(rec, t->saddr, t->daddr, &t->sport, &t->dport, &t->family);
	t->_pad = 0;
}

/* Local port from inet_sport: still set at CLOSE, when skc_num is already 0. */
static __always_inline __u16 inet_sport_btf(const struct sock *sk)
{
	struct tcp_sock *tp = bpf_skc_to_tcp_sock((void *)sk);

	return tp ? bpf_ntohs(tp->inet_conn.icsk_inet.inet_sport) : 0;
}

static __always_inline __u16 inet_sport_probed(const struct sock *sk)
{
	return bpf_ntohs(BPF_CORE_READ((struct tcp_sock *)sk, inet_conn.icsk_inet.inet_sport));
}

/* SYN (or SYN-ACK) retransmissions of the handshake so far. */
static __always_inline __u32 syn_retransmits(const struct sock *sk, bool btf)
{
	if (btf) {
		struct tcp_sock *tp = bpf_skc_to_tcp_sock((void *)sk);

		return tp ? tp->inet_conn.icsk_retransmits : 0;
	}
	return BPF_CORE_READ((const struct inet_connection_sock *)sk, icsk_retransmits);
}

/* errno of a failed attempt; *hdr_flags gets JALKI_TCP_ABANDONED when the
 * application closed the socket before the kernel gave up. */
static __always_inline int close_error(const struct sock *sk, bool btf, __u32 *hdr_flags)
{
	int err, soft;
	__u8 shutdown;
	__u16 sport;

	if (btf) {
		err = sk->sk_err;
		soft = sk->sk_err_soft;
		shutdown = BPF_CORE_READ_BITFIELD(sk, sk_shutdown);
	} else {
		err = BPF_CORE_READ(sk, sk_err);
		soft = BPF_CORE_READ(sk, sk_err_soft);
		shutdown = BPF_CORE_READ_BITFIELD_PROBED(sk, sk_shutdown);
	}
	if (err)
		return err;
	if (shutdown) {
		*hdr_flags |= JALKI_TCP_ABANDONED;
		if (soft)
			return soft;
		return syn_retransmits(sk, btf) ? JALKI_ETIMEDOUT : JALKI_ECONNABORTED;
	}
	if (soft)
		return soft;
	sport = btf ? inet_sport_btf(sk) : inet_sport_probed(sk);
	return sport ? JALKI_ECONNABORTED : JALKI_EADDRNOTAVAIL;
}

static __always_inline bool addr_is_zero(const __u8 *a)
{
	const __u64 *w = (const __u64 *)a;

	return w[0] == 0 && w[1] == 0;
}

/* ---- the attempt ---- */

/*
 * Filters before sampling, so that JALKI_DROP_SAMPLED counts only attempts
 * that would otherwise have been reported. The owner is fixed here. The port
 * filter is decided here when it can be (dport, or a local port bound before
 * connect()); an ephemeral local port is bound only after SYN_SENT, so when
 * only it could still match, both the port filter and sampling wait for the
 * outcome.
 */
static __always_inline int track_attempt(void *ctx, const struct sock *sk, bool btf)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	const struct jalki_config *cfg;
	__u64 key = (__u64)(unsigned long)sk;
	struct connect_track tr;
	__u16 port;

	if (jalki_is_self(tgid))
		goto untracked;
	cfg = jalki_config_get();
	if (cfg && cfg->filter_tgid && cfg->filter_tgid != tgid)
		goto untracked;

	__builtin_memset(&tr, 0, sizeof(tr));
	if (btf) {
		tuple_from_sk(sk, &tr.tuple);
		tr.netns = jalki_sk_netns(sk);
	} else {
		tuple_from_record(ctx, &tr.tuple);
		tr.netns = jalki_sk_netns_probed(sk);
	}
	port = cfg ? cfg->filter_port : 0;
	if (port && port != tr.tuple.dport && port != tr.tuple.sport) {
		if (tr.tuple.sport)
			goto untracked; /* local port already bound: the filter fails for good */
		tr.sample_at_emit = 1;
	}
	if (!tr.sample_at_emit && jalki_sampled_out())
		goto untracked;

	jalki_owner_current(&tr.owner);
	tr.start_ns = tr.owner.start_ns;
	if (bpf_map_update_elem(&connect_start, &key, &tr, BPF_ANY)) {
		jalki_count_drop(JALKI_DROP_TRACKING_FULL);
		return 0;
	}
	bpf_map_update_elem(&jalki_sock_owner, &key, &tr.owner, BPF_ANY);
	return 0;

untracked:
	/* an entry left by an earlier socket at this address must not report
	 * this attempt (normally there is none: a no-op) */
	bpf_map_delete_elem(&connect_start, &key);
	return 0;
}

/* Emit the outcome of the attempt tracked in *tr. The caller deletes it. */
static __always_inline void emit_attempt(void *ctx, const struct sock *sk,
					 const struct connect_track *tr, int error, __u32 hdr_flags,
					 bool btf)
{
	struct tcp_connect_event *ev;
	struct jalki_tcp_tuple t;

	/* the live tuple is complete now (the port is bound after SYN_SENT) */
	if (btf) {
		tuple_from_sk(sk, &t);
		if (!t.sport)
			t.sport = inet_sport_btf(sk);
	} else {
		tuple_from_record(ctx, &t);
	}
	if (!t.sport)
		t.sport = tr->tuple.sport;
	if (addr_is_zero(t.saddr))
		__builtin_memcpy(t.saddr, tr->tuple.saddr, sizeof(t.saddr));
	if (!jalki_pass_filters(tr->owner.tgid, t.sport, t.dport))
		return;
	if (tr->sample_at_emit && jalki_sampled_out())
		return;

	ev = jalki_reserve(sizeof(*ev));
	if (!ev)
		return;
	jalki_fill_header_from_owner(&ev->hdr, &tr->owner);
	ev->hdr.flags |= hdr_flags;
	__builtin_memcpy(&ev->tuple, &t, sizeof(t));
	ev->latency_ns = ev->hdr.ts_ns - tr->start_ns;
	ev->error = error;
	ev->netns = tr->netns;
	bpf_ringbuf_submit(ev, 0);
}

static __always_inline int finish_attempt(void *ctx, const struct sock *sk, int newstate, bool btf)
{
	__u64 key = (__u64)(unsigned long)sk;
	struct connect_track *tr;
	__u32 hdr_flags = 0;
	int error = 0;

	tr = bpf_map_lookup_elem(&connect_start, &key);
	if (!tr)
		return 0;
	if (newstate != ST_ESTABLISHED)
		error = close_error(sk, btf, &hdr_flags);
	emit_attempt(ctx, sk, tr, error, hdr_flags, btf);
	bpf_map_delete_elem(&connect_start, &key);
	return 0;
}

static __always_inline int handle_state(void *ctx, const struct sock *sk, int oldstate,
					int newstate, bool btf)
{
	if (oldstate == ST_CLOSE && newstate == ST_SYN_SENT)
		return track_attempt(ctx, sk, btf);
	/* every way out of the handshake ends the attempt, except the step
	 * SYN_SENT -> SYN_RECV of a simultaneous open (only sockets that
	 * entered SYN_SENT are tracked, so accepted sockets leaving SYN_RECV
	 * find no entry) */
	if ((oldstate == ST_SYN_SENT && newstate != ST_SYN_RECV) || oldstate == ST_SYN_RECV)
		finish_attempt(ctx, sk, newstate, btf);
	if (newstate == ST_CLOSE)
		jalki_owner_forget(sk);
	return 0;
}

/* ---- rung "fexit" ---- */

/* Synchronous failure of tcp_connect() (no route, no memory): report its
 * errno now; the SYN_SENT -> CLOSE that follows finds no tracking. */
SEC("fexit/tcp_connect")
int BPF_PROG(fexit_tcp_connect, struct sock *sk, int ret)
{
	__u64 key = (__u64)(unsigned long)sk;
	struct connect_track *tr;

	if (ret == 0)
		return 0;
	tr = bpf_map_lookup_elem(&connect_start, &key);
	if (!tr)
		return 0;
	emit_attempt(ctx, sk, tr, -ret, 0, true);
	bpf_map_delete_elem(&connect_start, &key);
	return 0;
}

JALKI_TCP_STATE_PROGRAM_BTF(fexit_connect_state, handle_state)

/* ---- rung "tp_btf" ---- */

JALKI_TCP_STATE_PROGRAM_BTF(tpbtf_connect_state, handle_state)

/* ---- rung "tracepoint" ---- */

JALKI_TCP_STATE_PROGRAM_TP(tp_connect_state, handle_state)
