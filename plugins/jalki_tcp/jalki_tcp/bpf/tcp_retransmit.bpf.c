// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * tcp_retransmit: one event per retransmitted TCP segment, with the socket's
 * state (SYN_SENT: handshake failing; ESTABLISHED: loss on the path) and the
 * process that owns the socket.
 *
 * Retransmits run in softirq or timer context, where the current task is
 * whatever was interrupted. The owner is therefore recorded by a state
 * program in task context (CLOSE -> SYN_SENT inside connect(); -> FIN_WAIT1
 * and -> LAST_ACK inside close()/shutdown()) into jalki_sock_owner, looked up
 * by socket pointer when the retransmit fires, and deleted on -> CLOSE.
 * Accepted sockets get their owner from the optional owner programs
 * (JALKI_TCP_OWNER_PROGRAMS_*: sendmsg/recvmsg in task context, never for a
 * socket in CLOSE or LISTEN; the entry is also deleted when the socket is
 * destroyed), where the kernel has those tracepoints. Sockets whose owner was
 * never recorded are reported with pid 0 and JALKI_HDR_OWNER_KNOWN clear.
 * Self filter and the tgid filter apply to the owner; sampling is per event.
 * Failed retransmit attempts (the tracepoint's err != 0, on kernels whose
 * tracepoint has it) are not reported.
 *
 * Rungs: tp_btf: tpbtf_retrans_state + tpbtf_retransmit_skb
 *                (optional: tpbtf_owner_send, tpbtf_owner_recv, tpbtf_owner_destroy);
 *        tracepoint: tp_retrans_state + tp_retransmit_skb
 *                (optional: tp_owner_recv, tp_owner_destroy).
 */
#include "tcp_events.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

JALKI_BTF_EXPORT(tcp_retransmit_event);


struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, JALKI_RINGBUF_DEFAULT_BYTES);
} events SEC(".maps");

/*
 * tcp:tcp_retransmit_skb records, as CO-RE flavors so that the program builds
 * against any vmlinux.h: Linux 6.x gives the event its own class (with err);
 * older kernels use the tcp_event_sk_skb class. Both start skbaddr, skaddr,
 * state.
 */
struct trace_event_raw_tcp_retransmit_skb___jalki {
	const void *skaddr;
	int state;
	int err;
} __attribute__((preserve_access_index));

struct trace_event_raw_tcp_event_sk_skb___jalki {
	const void *skaddr;
	int state;
} __attribute__((preserve_access_index));

static __always_inline int handle_state(void *ctx, const struct sock *sk, int oldstate, int newstate,
					bool btf)
{
	if (newstate == ST_CLOSE)
		jalki_owner_forget(sk);
	else if ((oldstate == ST_CLOSE && newstate == ST_SYN_SENT) || newstate == ST_FIN_WAIT1 ||
		 newstate == ST_LAST_ACK)
		jalki_owner_record(sk);
	return 0;
}

static __always_inline int handle_retransmit(const struct sock *sk, bool btf)
{
	const struct jalki_owner *owner = jalki_owner_lookup(sk);
	struct tcp_retransmit_event *ev;
	struct jalki_tcp_tuple t = {};
	__u32 tgid = owner ? owner->tgid : 0;

	if (jalki_is_self(tgid))
		return 0;
	if (btf)
		jalki_sk_addrs(sk, t.saddr, t.daddr, &t.sport, &t.dport, &t.family);
	else
		jalki_sk_addrs_probed(sk, t.saddr, t.daddr, &t.sport, &t.dport, &t.family);
	t._pad = 0;
	if (!jalki_pass_filters(tgid, t.sport, t.dport))
		return 0;
	if (jalki_sampled_out())
		return 0;

	ev = jalki_reserve(sizeof(*ev));
	if (!ev)
		return 0;
	jalki_fill_header_from_owner(&ev->hdr, owner);
	__builtin_memcpy(&ev->tuple, &t, sizeof(t));
	if (btf) {
		ev->state = sk->__sk_common.skc_state;
		ev->netns = jalki_sk_netns(sk);
	} else {
		ev->state = BPF_CORE_READ(sk, __sk_common.skc_state);
		ev->netns = jalki_sk_netns_probed(sk);
	}
	bpf_ringbuf_submit(ev, 0);
	return 0;
}

/* ---- rung "tp_btf" ---- */

JALKI_TCP_STATE_PROGRAM_BTF(tpbtf_retrans_state, handle_state)

/* Arguments (sk, skb) and, since the tracepoint gained it, (..., int err):
 * ctx[2] is read only when the kernel's record type has err. */
SEC("tp_btf/tcp_retransmit_skb")
int tpbtf_retransmit_skb(__u64 *ctx)
{
	const struct sock *sk = (const struct sock *)ctx[0];

	if (bpf_core_field_exists(struct trace_event_raw_tcp_retransmit_skb___jalki, err) &&
	    (int)ctx[2] != 0)
		return 0;
	return handle_retransmit(sk, true);
}

/* Optional owner recording for accepted sockets (task context). */
JALKI_TCP_OWNER_PROGRAMS_BTF(tpbtf_owner_send, tpbtf_owner_recv, tpbtf_owner_destroy)

/* ---- rung "tracepoint" ---- */

JALKI_TCP_STATE_PROGRAM_TP(tp_retrans_state, handle_state)

SEC("tracepoint/tcp/tcp_retransmit_skb")
int tp_retransmit_skb(void *ctx)
{
	const struct sock *sk = NULL;

	/* skaddr through bpf_core_read(): clang merges the two flavors' loads
	 * into one load from a computed ctx pointer, which the verifier refuses */
	if (bpf_core_type_exists(struct trace_event_raw_tcp_retransmit_skb___jalki)) {
		struct trace_event_raw_tcp_retransmit_skb___jalki *rec = ctx;

		if (bpf_core_field_exists(rec->err) && rec->err != 0)
			return 0;
		bpf_core_read(&sk, sizeof(sk), &rec->skaddr);
	} else {
		struct trace_event_raw_tcp_event_sk_skb___jalki *rec = ctx;

		bpf_core_read(&sk, sizeof(sk), &rec->skaddr);
	}
	if (!sk)
		return 0;
	return handle_retransmit(sk, false);
}

JALKI_TCP_OWNER_PROGRAMS_TP(tp_owner_recv, tp_owner_destroy)
