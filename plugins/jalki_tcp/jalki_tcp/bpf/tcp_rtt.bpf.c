// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * tcp_rtt: smoothed round-trip time per remote service, aggregated in the
 * kernel, at most one event per key per interval.
 *
 * tcp:tcp_probe fires for every segment an established socket receives
 * (tcp_rcv_established) and carries the socket's smoothed RTT (srtt_us >> 3,
 * microseconds) before the segment is processed. Streaming it would be one
 * event per packet; instead every sample is folded into rtt_agg, a HASH
 * keyed by struct tcp_rtt_key:
 *   - active sockets (this host connected; CLOSE -> SYN_SENT seen):
 *     (remote address, remote port);
 *   - passive sockets (accepted; SYN_RECV -> ESTABLISHED seen): (remote
 *     address, LOCAL port): every client connection from one address to one
 *     local service is one key, whatever its ephemeral port;
 *   - sockets born before the session (direction unknown): like active ones.
 * The direction of each socket is kept in rtt_sock (LRU, by socket pointer),
 * written at the socket's birth and removed at CLOSE.
 *
 *   window = bpf_ktime_get_ns() / rtt_interval_ns   (tumbling windows aligned
 *            to multiples of the interval on CLOCK_MONOTONIC; 1 s by default)
 *   - no entry: insert a fresh window with BPF_NOEXIST (if another CPU
 *     inserted first, add to its entry);
 *   - entry of this window: samples, sum, zero-window and owner counts added
 *     atomically (XADD); min, max and last updated with plain stores;
 *   - entry of an earlier window: that window is over. The entry is copied,
 *     and whichever program manages to delete it (bpf_map_delete_elem
 *     succeeds for exactly one caller) emits the copy as one tcp_rtt_event.
 * Sweep: the first sample of each new window (on any CPU) walks rtt_agg with
 * bpf_for_each_map_elem and emits and deletes every entry of an earlier
 * window, at most RTT_SWEEP_MAX per walk, stopping early when the ring
 * buffer is full (the entries stay, for the next sample, sweep or the stop);
 * so a key that goes quiet is emitted within about one interval of its
 * window's end and does not hold its map slot until the session stops. A
 * failed insert into a full map sweeps once more (at most once per window)
 * before it counts JALKI_DROP_TRACKING_FULL. What is left at stop is read by
 * user space (TcpRttProbe.final_events).
 *
 * Owners: a sample's process is its socket's recorded owner
 * (jalki_sock_owner): recorded at connect() (CLOSE -> SYN_SENT), by the
 * optional send/receive programs, and, for an accepted socket, inherited
 * from the process that called listen() on its local port (recorded at
 * CLOSE -> LISTEN, in rtt_listener, kept in rtt_sock) until the socket has
 * an owner of its own, because an accepted socket's first segments arrive
 * before the server touches it (a pre-forked worker that accepts from its
 * parent's listener: the parent's samples, then the worker's). The
 * aggregate keeps the first sample's owner and counts samples of other
 * owners (foreign) and of no owner (unowned), so "one process owned every
 * sample" is exact; the list of distinct owners (owners[]) is best effort.
 *
 * Races (the build targets BPF ISA v1, which has no compare-and-swap):
 * samples arriving on another CPU in the instant between the copy and the
 * delete are lost from the aggregate; plain min/max/owner-slot stores can
 * lose an extreme or an owner when two CPUs update one key at the same
 * instant.
 *
 * Filters: the port filter applies to either port; the tgid filter and the
 * self filter do not apply (an aggregate spans sockets, and the receive
 * path runs in softirq, where the current task is unrelated). Sampling
 * (when set) thins the samples, not the aggregates.
 *
 * Rungs: tp_btf: tpbtf_tcp_probe (srtt from struct tcp_sock) + state/owner
 *        programs; tracepoint: tp_tcp_probe (srtt, daddr and family from
 *        the record) + state/owner programs.
 */
#include "tcp_events.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

JALKI_BTF_EXPORT(tcp_rtt_event);
JALKI_BTF_EXPORT(tcp_rtt_key);
JALKI_BTF_EXPORT(tcp_rtt_agg);

#ifndef RTT_AGG_ENTRIES
#define RTT_AGG_ENTRIES 8192
#endif

/* Aggregation interval; TcpRttProbe.interval_ns documents the compiled value. */
#ifndef JALKI_TCP_RTT_INTERVAL_NS
#define JALKI_TCP_RTT_INTERVAL_NS 1000000000ULL
#endif
const volatile __u64 rtt_interval_ns = JALKI_TCP_RTT_INTERVAL_NS;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, JALKI_RINGBUF_DEFAULT_BYTES);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, RTT_AGG_ENTRIES);
	__type(key, struct tcp_rtt_key);
	__type(value, struct tcp_rtt_agg);
} rtt_agg SEC(".maps");

/* Each live socket seen at birth: its direction and, for an accepted one,
 * the owner of its listener (used until the socket has an owner of its own
 * in jalki_sock_owner, recorded in task context by send/receive). */
struct rtt_sock_info {
	__u32 direction; /* JALKI_TCP_RTT_ACTIVE / _PASSIVE */
	__u32 has_listener;
	struct jalki_owner listener;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, JALKI_SOCK_OWNER_ENTRIES);
	__type(key, __u64);
	__type(value, struct rtt_sock_info);
} rtt_sock SEC(".maps");

/* The process that listens on a local port, by (netns, port): the owner an
 * accepted socket inherits. */
struct rtt_listener_key {
	__u32 netns;
	__u32 port;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct rtt_listener_key);
	__type(value, struct jalki_owner);
} rtt_listener SEC(".maps");

#ifndef RTT_SWEEP_MAX
#define RTT_SWEEP_MAX 1024 /* events one sweep may emit: a fraction of the ring */
#endif

/* Window last swept, and last swept because the map was full (plain
 * stores: two CPUs may both sweep at a window change, which only costs a
 * walk; exactly one of them emits each entry). */
__u64 rtt_swept_window = 0;
__u64 rtt_full_swept_window = 0;

/* CO-RE flavors, whatever vmlinux.h the build used. */
struct tcp_sock___jalki {
	__u32 srtt_us; /* smoothed RTT << 3, microseconds */
	__u32 snd_wnd; /* window the peer advertises */
	__u32 rcv_wnd; /* window this host advertises */
} __attribute__((preserve_access_index));

struct trace_event_raw_tcp_probe___jalki {
	__u8 saddr[28]; /* struct sockaddr_in / sockaddr_in6 */
	__u8 daddr[28];
	__u16 sport;
	__u16 dport;
	__u16 family;
	__u32 snd_wnd;
	__u32 srtt;     /* srtt_us >> 3 */
	__u32 rcv_wnd;
	const void *skaddr;
} __attribute__((preserve_access_index));

static __always_inline void fill_event(struct tcp_rtt_event *ev, const struct tcp_rtt_key *key,
				       const struct tcp_rtt_agg *agg, __u64 interval)
{
	jalki_fill_header_from_owner(&ev->hdr, NULL);
	__builtin_memcpy(&ev->key, key, sizeof(*key));
	__builtin_memcpy(&ev->agg, agg, sizeof(*agg));
	ev->interval_ns = interval;
}

static __always_inline void emit(const struct tcp_rtt_key *key, const struct tcp_rtt_agg *agg,
				 __u64 interval)
{
	struct tcp_rtt_event *ev = jalki_reserve(sizeof(*ev));

	if (!ev)
		return;
	fill_event(ev, key, agg, interval);
	bpf_ringbuf_submit(ev, 0);
}

struct sweep_ctx {
	__u64 window;
	__u64 interval;
};

/* Events the current sweep emitted. A global, not a field of sweep_ctx: the
 * verifier then sees an unknown scalar and the callback's states converge
 * (a counter on the stack makes it walk every possible count). Sweeps on
 * two CPUs at once share it, which only shortens them. */
__u32 rtt_sweep_emitted = 0;

/* bpf_for_each_map_elem callback: emit and delete an entry of an ended window. */
static long sweep_one(struct bpf_map *map, struct tcp_rtt_key *key, struct tcp_rtt_agg *agg,
		      struct sweep_ctx *sc)
{
	struct tcp_rtt_event *ev;

	if (agg->window >= sc->window)
		return 0;
	/* not jalki_reserve(): a full ring is no drop here, the entry stays */
	ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (!ev)
		return 1;
	fill_event(ev, key, agg, sc->interval);
	if (bpf_map_delete_elem(&rtt_agg, key) != 0) { /* another CPU emitted it */
		bpf_ringbuf_discard(ev, 0);
		return 0;
	}
	bpf_ringbuf_submit(ev, 0);
	__sync_fetch_and_add(&rtt_sweep_emitted, 1); /* ISA v1: no fetching add */
	return rtt_sweep_emitted >= RTT_SWEEP_MAX ? 1 : 0;
}

static __always_inline void sweep(__u64 window, __u64 interval)
{
	struct sweep_ctx sc = { .window = window, .interval = interval };

	rtt_sweep_emitted = 0;
	bpf_for_each_map_elem(&rtt_agg, sweep_one, &sc, 0);
}

/* Count one sample's owner into agg (which already holds owner_tgid). */
static __always_inline void add_owner(struct tcp_rtt_agg *agg, const struct jalki_owner *owner)
{
	__u32 tgid = owner ? owner->tgid : 0;
	int i;

	if (!tgid) {
		__sync_fetch_and_add(&agg->unowned, 1);
		return;
	}
	if (tgid == agg->owner_tgid)
		return;
	__sync_fetch_and_add(&agg->foreign, 1);
#pragma unroll
	for (i = 1; i < JALKI_TCP_RTT_OWNER_SLOTS; i++) {
		if (agg->owners[i] == tgid)
			return;
		if (agg->owners[i] == 0) {
			agg->owners[i] = tgid;
			return;
		}
	}
	agg->owners_overflow = 1;
}

static __always_inline int add_sample(const struct tcp_rtt_key *key, __u16 sport, __u16 dport,
				      const struct jalki_owner *owner, __u32 srtt_us, __u32 snd_wnd,
				      __u32 rcv_wnd)
{
	__u64 now, interval = rtt_interval_ns ? rtt_interval_ns : JALKI_TCP_RTT_INTERVAL_NS;
	const struct jalki_config *cfg;
	struct tcp_rtt_agg *agg, fresh;
	__u64 window;

	if (!srtt_us) /* no RTT measured yet on this socket */
		return 0;
	cfg = jalki_config_get();
	if (cfg && cfg->filter_port && cfg->filter_port != sport && cfg->filter_port != dport)
		return 0;
	if (jalki_sampled_out())
		return 0;
	now = bpf_ktime_get_ns();
	window = now / interval;
	if (rtt_swept_window != window) {
		rtt_swept_window = window;
		sweep(window, interval);
	}

	agg = bpf_map_lookup_elem(&rtt_agg, key);
	if (agg && agg->window != window) {
		struct tcp_rtt_agg closed;

		__builtin_memcpy(&closed, agg, sizeof(closed));
		if (bpf_map_delete_elem(&rtt_agg, key) == 0)
			emit(key, &closed, interval);
		agg = NULL;
	}
	if (!agg) {
		long err;

		__builtin_memset(&fresh, 0, sizeof(fresh));
		fresh.window = window;
		fresh.first_ns = now;
		fresh.last_ns = now;
		fresh.sum_us = srtt_us;
		fresh.samples = 1;
		fresh.min_us = srtt_us;
		fresh.max_us = srtt_us;
		fresh.peer_zero_wnd = snd_wnd == 0;
		fresh.local_zero_wnd = rcv_wnd == 0;
		if (owner && owner->tgid) {
			fresh.owner_tgid = owner->tgid;
			fresh.owners[0] = owner->tgid;
			fresh.owner_cgroup_id = owner->cgroup_id;
			__builtin_memcpy(fresh.owner_comm, owner->comm, sizeof(fresh.owner_comm));
		} else {
			fresh.unowned = 1;
		}
		err = bpf_map_update_elem(&rtt_agg, key, &fresh, BPF_NOEXIST);
		if (err != 0 && rtt_full_swept_window != window) {
			/* full (or raced): emit what has ended, once per window, and retry */
			rtt_full_swept_window = window;
			sweep(window, interval);
			err = bpf_map_update_elem(&rtt_agg, key, &fresh, BPF_NOEXIST);
		}
		if (err == 0)
			return 0;
		agg = bpf_map_lookup_elem(&rtt_agg, key); /* another CPU inserted it */
		if (!agg) {
			jalki_count_drop(JALKI_DROP_TRACKING_FULL);
			return 0;
		}
	}
	__sync_fetch_and_add(&agg->samples, 1);
	__sync_fetch_and_add(&agg->sum_us, srtt_us);
	if (snd_wnd == 0)
		__sync_fetch_and_add(&agg->peer_zero_wnd, 1);
	if (rcv_wnd == 0)
		__sync_fetch_and_add(&agg->local_zero_wnd, 1);
	add_owner(agg, owner);
	if (srtt_us < agg->min_us)
		agg->min_us = srtt_us;
	if (srtt_us > agg->max_us)
		agg->max_us = srtt_us;
	if (now > agg->last_ns)
		agg->last_ns = now;
	return 0;
}

/* The key of a socket's sample (direction from rtt_sock, then the service
 * port) and its owner: the socket's own, else its listener's. */
static __always_inline const struct jalki_owner *
rtt_key(struct tcp_rtt_key *key, const void *sk, const __u8 *daddr, __u16 sport, __u16 dport,
	__u16 family, __u32 netns)
{
	__u64 skey = (__u64)(unsigned long)sk;
	const struct rtt_sock_info *info = sk ? bpf_map_lookup_elem(&rtt_sock, &skey) : NULL;
	const struct jalki_owner *owner = sk ? jalki_owner_lookup(sk) : NULL;

	__builtin_memcpy(key->raddr, daddr, sizeof(key->raddr));
	key->family = (__u8)family;
	key->netns = netns;
	key->direction = info ? (__u8)info->direction : JALKI_TCP_RTT_UNKNOWN;
	key->port = key->direction == JALKI_TCP_RTT_PASSIVE ? sport : dport;
	if (!owner && info && info->has_listener)
		owner = &info->listener;
	return owner;
}

/* Socket births, deaths and listeners (inet_sock_set_state). */
static __always_inline int handle_state(void *ctx, const struct sock *sk, int oldstate, int newstate,
					bool btf)
{
	__u64 skey = (__u64)(unsigned long)sk;
	struct rtt_listener_key lkey;
	struct rtt_sock_info info;

	if (newstate == ST_CLOSE) {
		bpf_map_delete_elem(&rtt_sock, &skey);
		jalki_owner_forget(sk);
		if (oldstate == ST_LISTEN) { /* close() of a listener: task context */
			lkey.netns = btf ? jalki_sk_netns(sk) : jalki_sk_netns_probed(sk);
			lkey.port = btf ? sk->__sk_common.skc_num : BPF_CORE_READ(sk, __sk_common.skc_num);
			bpf_map_delete_elem(&rtt_listener, &lkey);
		}
		return 0;
	}
	if (oldstate == ST_CLOSE && newstate == ST_SYN_SENT) { /* inside connect() */
		__builtin_memset(&info, 0, sizeof(info));
		info.direction = JALKI_TCP_RTT_ACTIVE;
		bpf_map_update_elem(&rtt_sock, &skey, &info, BPF_ANY);
		jalki_owner_record(sk);
	} else if (newstate == ST_LISTEN) { /* inside listen() */
		struct jalki_owner owner;

		lkey.netns = btf ? jalki_sk_netns(sk) : jalki_sk_netns_probed(sk);
		lkey.port = btf ? sk->__sk_common.skc_num : BPF_CORE_READ(sk, __sk_common.skc_num);
		jalki_owner_current(&owner);
		bpf_map_update_elem(&rtt_listener, &lkey, &owner, BPF_ANY);
	} else if (oldstate == ST_SYN_RECV && newstate == ST_ESTABLISHED) {
		const struct jalki_owner *listener;

		/* an accepted socket (a simultaneous open already holds ACTIVE) */
		__builtin_memset(&info, 0, sizeof(info));
		info.direction = JALKI_TCP_RTT_PASSIVE;
		lkey.netns = btf ? jalki_sk_netns(sk) : jalki_sk_netns_probed(sk);
		lkey.port = btf ? sk->__sk_common.skc_num : BPF_CORE_READ(sk, __sk_common.skc_num);
		listener = bpf_map_lookup_elem(&rtt_listener, &lkey);
		if (listener) {
			info.has_listener = 1;
			__builtin_memcpy(&info.listener, listener, sizeof(info.listener));
		}
		bpf_map_update_elem(&rtt_sock, &skey, &info, BPF_NOEXIST);
	}
	return 0;
}

/* ---- rung "tp_btf" ---- */

JALKI_TCP_STATE_PROGRAM_BTF(tpbtf_rtt_state, handle_state)

SEC("tp_btf/tcp_probe")
int BPF_PROG(tpbtf_tcp_probe, const struct sock *sk)
{
	const struct tcp_sock___jalki *t =
		(const struct tcp_sock___jalki *)bpf_skc_to_tcp_sock((void *)sk);
	const struct jalki_owner *owner;
	struct tcp_rtt_key key;
	__u8 saddr[16], daddr[16];
	__u16 sport, dport, family;

	if (!t)
		return 0;
	jalki_sk_addrs(sk, saddr, daddr, &sport, &dport, &family);
	owner = rtt_key(&key, sk, daddr, sport, dport, family, jalki_sk_netns(sk));
	return add_sample(&key, sport, dport, owner, t->srtt_us >> 3, t->snd_wnd, t->rcv_wnd);
}

/* Optional owner recording for sockets not seen at birth (task context). */
JALKI_TCP_OWNER_PROGRAMS_BTF(tpbtf_owner_send, tpbtf_owner_recv, tpbtf_owner_destroy)

/* ---- rung "tracepoint" ---- */

JALKI_TCP_STATE_PROGRAM_TP(tp_rtt_state, handle_state)

SEC("tracepoint/tcp/tcp_probe")
int tp_tcp_probe(struct trace_event_raw_tcp_probe___jalki *ctx)
{
	const struct jalki_owner *owner;
	struct tcp_rtt_key key;
	const struct sock *sk = NULL;
	__u16 family = ctx->family;
	__u8 daddr[16] = {};
	__u32 netns = 0;

	if (family == JALKI_AF_INET6) /* sockaddr_in6.sin6_addr at 8 */
		bpf_probe_read_kernel(daddr, 16, &ctx->daddr[8]);
	else /* sockaddr_in.sin_addr at 4 */
		bpf_probe_read_kernel(daddr, 4, &ctx->daddr[4]);
	if (bpf_core_field_exists(ctx->skaddr)) {
		bpf_core_read(&sk, sizeof(sk), &ctx->skaddr);
		if (sk)
			netns = jalki_sk_netns_probed(sk);
	}
	owner = rtt_key(&key, sk, daddr, ctx->sport, ctx->dport, family, netns);
	return add_sample(&key, ctx->sport, ctx->dport, owner, ctx->srtt, ctx->snd_wnd, ctx->rcv_wnd);
}

JALKI_TCP_OWNER_PROGRAMS_TP(tp_owner_recv, tp_owner_destroy)
