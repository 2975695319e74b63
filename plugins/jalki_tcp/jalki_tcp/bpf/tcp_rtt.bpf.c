// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * tcp_rtt: smoothed round-trip time per destination, aggregated in the
 * kernel, at most one event per destination per interval.
 *
 * tcp:tcp_probe fires for every segment an established socket receives
 * (tcp_rcv_established) and carries the socket's smoothed RTT (srtt_us >> 3,
 * microseconds) before the segment is processed. Streaming it would be one
 * event per packet; instead every sample is folded into rtt_agg, a HASH
 * keyed by destination (daddr, dport, family, netns):
 *
 *   window = bpf_ktime_get_ns() / rtt_interval_ns   (tumbling windows aligned
 *            to multiples of the interval on CLOCK_MONOTONIC; 1 s by default)
 *   - no entry: insert {window, samples 1, sum, min = max = srtt, first = last
 *     = now} with BPF_NOEXIST (if another CPU inserted first, add to its entry);
 *   - entry of this window: samples, sum and the zero-window counts (samples
 *     where snd_wnd or rcv_wnd was 0) added atomically (XADD); min, max and
 *     last updated with plain stores;
 *   - entry of an earlier window: that window is over. The entry is copied,
 *     and whichever program manages to delete it (bpf_map_delete_elem
 *     succeeds for exactly one caller) emits the copy as one tcp_rtt_event;
 *     the sample then starts the new window as above.
 * So a destination's window is emitted by its first sample after the window
 * ends, exactly once; a destination that goes quiet keeps its last window in
 * the map until it is heard from again or the session stops, when user space
 * reads and emits what is left (TcpRttProbe.final_events). Samples arriving
 * on another CPU in the instant between the copy and the delete are lost
 * from the aggregate, and the plain min/max stores can lose an extreme when
 * two CPUs update one destination at the same instant: both only under
 * concurrent traffic to one destination, at a window boundary or within
 * nanoseconds (the build targets BPF ISA v1, which has no compare-and-swap).
 *
 * A full rtt_agg (RTT_AGG_ENTRIES destinations) counts
 * JALKI_DROP_TRACKING_FULL per sample that could not be aggregated.
 * Filters: the port filter applies to either port; the tgid filter and the
 * self filter do not apply (an aggregate spans every socket, and the
 * receive path runs in softirq, where the current task is unrelated).
 * Sampling (when set) thins the samples, not the aggregates.
 *
 * Rungs: tp_btf: tpbtf_tcp_probe (srtt from struct tcp_sock);
 *        tracepoint: tp_tcp_probe (srtt, daddr and family from the record).
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

static __always_inline void emit(const struct tcp_rtt_key *key, const struct tcp_rtt_agg *agg,
				 __u64 interval)
{
	struct tcp_rtt_event *ev = jalki_reserve(sizeof(*ev));

	if (!ev)
		return;
	jalki_fill_header_from_owner(&ev->hdr, NULL);
	__builtin_memset(&ev->tuple, 0, sizeof(ev->tuple));
	__builtin_memcpy(ev->tuple.daddr, key->daddr, sizeof(key->daddr));
	ev->tuple.dport = key->dport;
	ev->tuple.family = key->family;
	__builtin_memcpy(&ev->agg, agg, sizeof(*agg));
	ev->interval_ns = interval;
	ev->netns = key->netns;
	ev->_pad = 0;
	bpf_ringbuf_submit(ev, 0);
}

static __always_inline int add_sample(const struct tcp_rtt_key *key, __u16 sport, __u32 srtt_us,
				      __u32 snd_wnd, __u32 rcv_wnd)
{
	__u64 now, interval = rtt_interval_ns ? rtt_interval_ns : JALKI_TCP_RTT_INTERVAL_NS;
	const struct jalki_config *cfg;
	struct tcp_rtt_agg *agg, fresh;
	__u64 window;

	if (!srtt_us) /* no RTT measured yet on this socket */
		return 0;
	cfg = jalki_config_get();
	if (cfg && cfg->filter_port && cfg->filter_port != sport && cfg->filter_port != key->dport)
		return 0;
	if (jalki_sampled_out())
		return 0;
	now = bpf_ktime_get_ns();
	window = now / interval;

	agg = bpf_map_lookup_elem(&rtt_agg, key);
	if (agg && agg->window != window) {
		struct tcp_rtt_agg closed;

		__builtin_memcpy(&closed, agg, sizeof(closed));
		if (bpf_map_delete_elem(&rtt_agg, key) == 0)
			emit(key, &closed, interval);
		agg = NULL;
	}
	if (!agg) {
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
		if (bpf_map_update_elem(&rtt_agg, key, &fresh, BPF_NOEXIST) == 0)
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
	if (srtt_us < agg->min_us)
		agg->min_us = srtt_us;
	if (srtt_us > agg->max_us)
		agg->max_us = srtt_us;
	if (now > agg->last_ns)
		agg->last_ns = now;
	return 0;
}

/* ---- rung "tp_btf" ---- */

SEC("tp_btf/tcp_probe")
int BPF_PROG(tpbtf_tcp_probe, const struct sock *sk)
{
	const struct tcp_sock___jalki *t =
		(const struct tcp_sock___jalki *)bpf_skc_to_tcp_sock((void *)sk);
	struct tcp_rtt_key key = {};
	__u8 saddr[16];
	__u16 sport;
	__u32 srtt;

	if (!t)
		return 0;
	srtt = t->srtt_us >> 3;
	jalki_sk_addrs(sk, saddr, key.daddr, &sport, &key.dport, &key.family);
	key.netns = jalki_sk_netns(sk);
	return add_sample(&key, sport, srtt, t->snd_wnd, t->rcv_wnd);
}

/* ---- rung "tracepoint" ---- */

SEC("tracepoint/tcp/tcp_probe")
int tp_tcp_probe(struct trace_event_raw_tcp_probe___jalki *ctx)
{
	struct tcp_rtt_key key = {};
	const struct sock *sk = NULL;
	__u16 family = ctx->family;

	key.family = family;
	key.dport = ctx->dport;
	if (family == JALKI_AF_INET6) /* sockaddr_in6.sin6_addr at 8 */
		bpf_probe_read_kernel(key.daddr, 16, &ctx->daddr[8]);
	else /* sockaddr_in.sin_addr at 4 */
		bpf_probe_read_kernel(key.daddr, 4, &ctx->daddr[4]);
	if (bpf_core_field_exists(ctx->skaddr)) {
		bpf_core_read(&sk, sizeof(sk), &ctx->skaddr);
		if (sk)
			key.netns = jalki_sk_netns_probed(sk);
	}
	return add_sample(&key, ctx->sport, ctx->srtt, ctx->snd_wnd, ctx->rcv_wnd);
}
