// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * tcp_reset: one event per TCP reset (RST) this host sends or receives.
 *
 * Sent (tcp:tcp_send_reset, arguments sk, skb[, reason]):
 *   - sk a full socket (an abort: close() with unread data, SO_LINGER 0,
 *     a keepalive timeout, tcp_abort): tuple, state and netns from sk (the
 *     local port from inet_sport when skc_num is already 0 in CLOSE), the
 *     owner from jalki_sock_owner;
 *   - sk a time-wait or request socket (not full): state from sk (TIME_WAIT,
 *     NEW_SYN_RECV), tuple from the segment being answered;
 *   - sk NULL (no socket matched the segment: nothing listens on the port,
 *     or the connection is unknown): state 0 ("no socket"), tuple from the
 *     segment, netns from the receiving device; no owner.
 *   The segment's addresses are reversed, so that saddr/sport is always this
 *   host's end (the port the peer tried) and daddr/dport the peer: the same
 *   rule as the kernel's own tracepoint record. Its headers are read with
 *   bpf_probe_read_kernel (packet bytes cannot be dereferenced directly).
 * Received (tcp:tcp_receive_reset, argument sk, always a full socket, in
 * softirq): tuple, state (before the kernel closes it: SYN_SENT for a
 * refused connect) and owner from sk.
 *
 * Owners are recorded in task context as for tcp_retransmit (CLOSE ->
 * SYN_SENT inside connect(), -> FIN_WAIT1 / -> LAST_ACK inside close(), and
 * the optional send/receive owner programs for accepted sockets) and
 * forgotten when the kernel destroys the socket (tcp:tcp_destroy_sock, a
 * required program here), not at -> CLOSE: close() with unread data moves
 * the socket to CLOSE *before* it sends the reset, which must still name the
 * process. Never the interrupted task: a reset with no recorded owner is
 * reported with pid 0 and JALKI_HDR_OWNER_KNOWN clear.
 *
 * Self filter and the tgid filter apply to the owner, the port filter to
 * either port; sampling is per event.
 *
 * Rungs: tp_btf: tpbtf_reset_state + tpbtf_send_reset + tpbtf_receive_reset
 *                + tpbtf_reset_destroy (optional: tpbtf_reset_owner_send,
 *                tpbtf_reset_owner_recv);
 *        tracepoint: tp_reset_state + tp_send_reset + tp_receive_reset
 *                + tp_reset_destroy (optional: tp_reset_owner_recv).
 */
#include "tcp_events.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

JALKI_BTF_EXPORT(tcp_reset_event);


#define JALKI_ETH_P_IPV6 0x86DD

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, JALKI_RINGBUF_DEFAULT_BYTES);
} events SEC(".maps");

/* CO-RE flavors: the fields read here, whatever vmlinux.h the build used. */
struct net_device___jalki {
	possible_net_t nd_net;
} __attribute__((preserve_access_index));

struct sk_buff___jalki {
	struct net_device___jalki *dev;
	unsigned char *head;
	unsigned char *data;
	__u16 network_header;
	__be16 protocol;
} __attribute__((preserve_access_index));

/* tcp:tcp_send_reset and tcp:tcp_receive_reset records start with these. */
struct trace_event_raw_tcp_send_reset___jalki {
	const void *skbaddr;
	const void *skaddr;
	int state;
} __attribute__((preserve_access_index));

/* ---- owners ---- */

static __always_inline int handle_state(void *ctx, const struct sock *sk, int oldstate, int newstate,
					bool btf)
{
	if ((oldstate == ST_CLOSE && newstate == ST_SYN_SENT) || newstate == ST_FIN_WAIT1 ||
	    newstate == ST_LAST_ACK)
		jalki_owner_record(sk);
	return 0;
}

/* ---- the reset ---- */

/* Local port from inet_sport: still set once the socket is in CLOSE (close()
 * with unread data sends its reset then), when skc_num is already 0. */
static __always_inline __u16 bound_sport(const struct sock *sk, __u16 sport, bool btf)
{
	if (sport)
		return sport;
	if (btf) {
		struct tcp_sock *tp = bpf_skc_to_tcp_sock((void *)sk);

		return tp ? bpf_ntohs(tp->inet_conn.icsk_inet.inet_sport) : 0;
	}
	return bpf_ntohs(BPF_CORE_READ((struct inet_sock *)sk, inet_sport));
}

/* Tuple (reversed) and netns from the segment a reset answers. */
static __always_inline void tuple_from_segment(const void *skb_ptr, struct jalki_tcp_tuple *t,
					       __u32 *netns)
{
	const struct sk_buff___jalki *skb = skb_ptr;
	unsigned char *head = BPF_CORE_READ(skb, head);
	unsigned char *data = BPF_CORE_READ(skb, data);
	__u16 nh = BPF_CORE_READ(skb, network_header);
	__be16 proto = BPF_CORE_READ(skb, protocol);
	__be16 ports[2] = {};

	__builtin_memset(t, 0, sizeof(*t));
	*netns = BPF_CORE_READ(skb, dev, nd_net.net, ns.inum);
	bpf_probe_read_kernel(ports, sizeof(ports), data); /* th->source, th->dest */
	t->sport = bpf_ntohs(ports[1]);
	t->dport = bpf_ntohs(ports[0]);
	if (proto == bpf_htons(JALKI_ETH_P_IPV6)) {
		t->family = JALKI_AF_INET6;
		/* struct ipv6hdr: saddr at 8, daddr at 24 */
		bpf_probe_read_kernel(t->daddr, 16, head + nh + 8);
		bpf_probe_read_kernel(t->saddr, 16, head + nh + 24);
	} else {
		t->family = JALKI_AF_INET;
		/* struct iphdr: saddr at 12, daddr at 16 */
		bpf_probe_read_kernel(t->daddr, 4, head + nh + 12);
		bpf_probe_read_kernel(t->saddr, 4, head + nh + 16);
	}
}

static __always_inline void emit(const struct jalki_owner *owner, const struct jalki_tcp_tuple *t,
				 __u32 state, __u32 netns, __u32 direction)
{
	struct tcp_reset_event *ev;
	__u32 tgid = owner ? owner->tgid : 0;

	if (jalki_is_self(tgid))
		return;
	if (!jalki_pass_filters(tgid, t->sport, t->dport))
		return;
	if (jalki_sampled_out())
		return;
	ev = jalki_reserve(sizeof(*ev));
	if (!ev)
		return;
	jalki_fill_header_from_owner(&ev->hdr, owner);
	__builtin_memcpy(&ev->tuple, t, sizeof(*t));
	ev->state = state;
	ev->netns = netns;
	ev->direction = direction;
	ev->_pad = 0;
	bpf_ringbuf_submit(ev, 0);
}

/* A reset sent. sk may be NULL; `state` is the socket's state, 0 without one. */
static __always_inline int handle_send(const struct sock *sk, const void *skb, int state, bool btf)
{
	const struct jalki_owner *owner = NULL;
	struct jalki_tcp_tuple t = {};
	__u32 netns = 0;

	if (sk && state != ST_TIME_WAIT && state != ST_NEW_SYN_RECV) {
		/* a full socket (sk_fullsock) */
		if (btf) {
			jalki_sk_addrs(sk, t.saddr, t.daddr, &t.sport, &t.dport, &t.family);
			netns = jalki_sk_netns(sk);
		} else {
			jalki_sk_addrs_probed(sk, t.saddr, t.daddr, &t.sport, &t.dport, &t.family);
			netns = jalki_sk_netns_probed(sk);
		}
		t.sport = bound_sport(sk, t.sport, btf);
		t._pad = 0;
		owner = jalki_owner_lookup(sk);
	} else if (skb) {
		tuple_from_segment(skb, &t, &netns);
		if (sk)
			netns = btf ? jalki_sk_netns(sk) : jalki_sk_netns_probed(sk);
	} else {
		return 0;
	}
	emit(owner, &t, sk ? state : 0, netns, JALKI_TCP_RESET_SENT);
	return 0;
}

/* A reset received on a full socket, before the kernel closes it. */
static __always_inline int handle_receive(const struct sock *sk, bool btf)
{
	struct jalki_tcp_tuple t = {};
	__u32 state, netns;

	if (!sk)
		return 0;
	if (btf) {
		jalki_sk_addrs(sk, t.saddr, t.daddr, &t.sport, &t.dport, &t.family);
		state = jalki_sk_state(sk);
		netns = jalki_sk_netns(sk);
	} else {
		jalki_sk_addrs_probed(sk, t.saddr, t.daddr, &t.sport, &t.dport, &t.family);
		state = jalki_sk_state_probed(sk);
		netns = jalki_sk_netns_probed(sk);
	}
	t.sport = bound_sport(sk, t.sport, btf);
	t._pad = 0;
	emit(jalki_owner_lookup(sk), &t, state, netns, JALKI_TCP_RESET_RECEIVED);
	return 0;
}

/* ---- rung "tp_btf" ---- */

JALKI_TCP_STATE_PROGRAM_BTF(tpbtf_reset_state, handle_state)

/* Arguments (sk, skb) and, since Linux 6.10, (..., enum sk_rst_reason). */
SEC("tp_btf/tcp_send_reset")
int tpbtf_send_reset(__u64 *ctx)
{
	const struct sock *sk = (const struct sock *)ctx[0];

	return handle_send(sk, (const void *)ctx[1], sk ? jalki_sk_state(sk) : 0, true);
}

SEC("tp_btf/tcp_receive_reset")
int BPF_PROG(tpbtf_receive_reset, const struct sock *sk)
{
	return handle_receive(sk, true);
}

SEC("tp_btf/tcp_destroy_sock")
int BPF_PROG(tpbtf_reset_destroy, const struct sock *sk)
{
	jalki_owner_forget(sk);
	return 0;
}

SEC("tp_btf/tcp_sendmsg_locked")
int BPF_PROG(tpbtf_reset_owner_send, const struct sock *sk)
{
	jalki_owner_record_if_absent(sk, jalki_sk_state(sk));
	return 0;
}

SEC("tp_btf/tcp_rcv_space_adjust")
int BPF_PROG(tpbtf_reset_owner_recv, const struct sock *sk)
{
	jalki_owner_record_if_absent(sk, jalki_sk_state(sk));
	return 0;
}

/* ---- rung "tracepoint" ---- */

JALKI_TCP_STATE_PROGRAM_TP(tp_reset_state, handle_state)

SEC("tracepoint/tcp/tcp_send_reset")
int tp_send_reset(struct trace_event_raw_tcp_send_reset___jalki *ctx)
{
	const struct sock *sk = NULL;
	const void *skb = NULL;
	int state = 0;

	bpf_core_read(&sk, sizeof(sk), &ctx->skaddr);
	bpf_core_read(&skb, sizeof(skb), &ctx->skbaddr);
	bpf_core_read(&state, sizeof(state), &ctx->state);
	return handle_send(sk, skb, state, false);
}

SEC("tracepoint/tcp/tcp_receive_reset")
int tp_receive_reset(struct trace_event_raw_tcp_event_sk *ctx)
{
	return handle_receive(ctx->skaddr, false);
}

SEC("tracepoint/tcp/tcp_destroy_sock")
int tp_reset_destroy(struct trace_event_raw_tcp_event_sk *ctx)
{
	jalki_owner_forget(ctx->skaddr);
	return 0;
}

SEC("tracepoint/tcp/tcp_rcv_space_adjust")
int tp_reset_owner_recv(struct trace_event_raw_tcp_event_sk *ctx)
{
	const struct sock *sk = ctx->skaddr;

	jalki_owner_record_if_absent(sk, jalki_sk_state_probed(sk));
	return 0;
}
