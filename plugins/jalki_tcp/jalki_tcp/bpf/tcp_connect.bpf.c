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
 * A connect() that fails before the socket reaches SYN_SENT (tcp_v4_connect /
 * tcp_v6_connect: the route lookup gives ENETUNREACH without a route,
 * EHOSTUNREACH for an unreachable route, EACCES for a prohibit route, EINVAL
 * for a blackhole one; a cgroup connect hook's EPERM; EAFNOSUPPORT, EINVAL for
 * a bad address) makes no state change. The syscall programs report those
 * (one event per call, hdr.flags JALKI_TCP_SYNC_FAILURE):
 *   sys_enter_connect  task context: self and tgid filters; fd -> struct file
 *                      -> struct socket (bpf_get_current_task_btf(), Linux
 *                      5.11+, then CO-RE reads); only a fresh attempt
 *                      is remembered per thread (connect_calls): an AF_INET /
 *                      AF_INET6 SOCK_STREAM IPPROTO_TCP socket, SS_UNCONNECTED
 *                      and in CLOSE (so a second connect() on a socket whose
 *                      attempt already failed asynchronously, which returns
 *                      that error again, is not reported twice)
 *   CLOSE -> SYN_SENT  (the state programs, same thread) forgets the call:
 *                      the state path owns that attempt (refused, timed out,
 *                      EADDRNOTAVAIL from inet_hash_connect, ...)
 *   sys_exit_connect   a call still remembered that returned an error other
 *                      than EINPROGRESS, EALREADY, EISCONN, EINTR or a restart
 *                      code: port filter, sampling, then the event. The
 *                      destination is read from the caller's sockaddr
 *                      (bpf_probe_read_user; zero when it is unreadable, too
 *                      short or of another family); the source is what the
 *                      socket is bound to (0.0.0.0 / :: and port 0 unless
 *                      bind() was called); latency_ns is the call's duration.
 * Netfilter OUTPUT rules never fail connect() synchronously (a dropped SYN is
 * retried until ETIMEDOUT; a reject answers with an RST or ICMP error that
 * arrives as sk_err): those stay with the state path. connect()s that do not
 * go through the syscall (io_uring, in-kernel users) are not seen.
 *
 * Rungs (program names are the contract with jalki_tcp's ladder):
 *   fexit:      fexit_tcp_connect + fexit_connect_state + tp_connect_enter +
 *               tp_connect_exit
 *   tp_btf:     tpbtf_connect_state
 *   tracepoint: tp_connect_state
 *   optional on tp_btf and tracepoint: tp_connect_enter + tp_connect_exit
 *               (tracepoint/syscalls/sys_{enter,exit}_connect); required on
 *               fexit, so that a kernel refusing fexit fails that rung once,
 *               and one without syscall tracepoints falls back to tp_btf
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

/* One slot per thread that called connect() on a TCP socket, by pid_tgid,
 * rewritten in place by every call (an insert only on a thread's first
 * call, which is the expensive part): sk != 0 while a fresh attempt is in
 * the call and has not reached SYN_SENT. An LRU_HASH, so that the slots of
 * threads that have exited are reused; the slot of a call in flight (a few
 * microseconds when it fails before SYN_SENT) is the most recently used. */
#define CONNECT_CALL_ENTRIES 16384

struct connect_call {
	__u64 sk;       /* struct sock * of the socket connect() was called on; 0 = none */
	__u64 uaddr;    /* the caller's struct sockaddr * */
	__u64 start_ns; /* entry into connect() */
	__u32 addrlen;
	__u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, CONNECT_CALL_ENTRIES);
	__type(key, __u64);
	__type(value, struct connect_call);
} connect_calls SEC(".maps");

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
	struct jalki_tcp_tuple t = {};

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

/* sk entered SYN_SENT inside this thread's connect(): the state path reports
 * the attempt, so the syscall path forgets the call (before any filter, so
 * that an attempt filtered or sampled out there is not reported here). */
static __always_inline void connect_call_reached_syn_sent(const struct sock *sk)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct connect_call *call = bpf_map_lookup_elem(&connect_calls, &pid_tgid);

	if (call && call->sk == (__u64)(unsigned long)sk)
		call->sk = 0;
}

static __always_inline int handle_state(void *ctx, const struct sock *sk, int oldstate,
					int newstate, bool btf)
{
	if (oldstate == ST_CLOSE && newstate == ST_SYN_SENT) {
		connect_call_reached_syn_sent(sk);
		return track_attempt(ctx, sk, btf);
	}
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

/* ---- every rung (optional on tp_btf, tracepoint): connect() failing before SYN_SENT ---- */

#define JALKI_SOCK_STREAM 1
#define JALKI_SS_UNCONNECTED 1

/* errno values a connect() returns without having failed for good */
#define JALKI_EINTR 4
#define JALKI_EISCONN 106
#define JALKI_EALREADY 114
#define JALKI_EINPROGRESS 115
#define JALKI_ERESTARTSYS 512
#define JALKI_ERESTARTNOINTR 513
#define JALKI_ERESTARTNOHAND 514
#define JALKI_ERESTART_RESTARTBLOCK 516

/* syscalls:sys_enter_connect / sys_exit_connect records (struct
 * syscall_trace_enter/exit, described in each event's format file) */
struct connect_enter_record {
	__u64 common;
	__s32 nr;
	__u32 _pad;
	__u64 fd;
	__u64 uservaddr;
	__u64 addrlen;
};

struct connect_exit_record {
	__u64 common;
	__s32 nr;
	__u32 _pad;
	__s64 ret;
};

/* The kernel types of the fd -> socket walk, as CO-RE flavours (libbpf ignores
 * the ___jalki suffix when it matches them against the kernel's BTF), so the
 * object also builds against the minimal vmlinux.h. */
struct file___jalki {
	void *private_data;
} __attribute__((preserve_access_index));

struct fdtable___jalki {
	unsigned int max_fds;
	struct file___jalki **fd;
} __attribute__((preserve_access_index));

struct files_struct___jalki {
	struct fdtable___jalki *fdt;
} __attribute__((preserve_access_index));

struct task_struct___jalki {
	struct files_struct___jalki *files;
} __attribute__((preserve_access_index));

typedef enum {
	SS_UNCONNECTED___jalki = JALKI_SS_UNCONNECTED,
} socket_state___jalki;

struct socket___jalki {
	socket_state___jalki state;
	short type;
	struct file___jalki *file;
	struct sock *sk;
} __attribute__((preserve_access_index));

/* struct socket's first bytes, read at once: state, type, file, sk lie there */
#define SOCKET_HEAD_BYTES 64

/*
 * The TCP socket behind the current task's fd when a connect() on it is a
 * fresh attempt (SS_UNCONNECTED, in CLOSE), else NULL. connect() runs on
 * every kind of socket, so the cheapest tests come first: the task's fd
 * table by direct BTF reads, then one read of the struct socket's head (a
 * file is a socket when the socket points back to it; SOCK_DGRAM stops
 * there), then the struct sock (AF_UNIX stops there). Every probe read costs
 * tens of ns, a read of the caller's sockaddr first (to stop AF_UNIX early)
 * more than the reads it would save.
 */
static __always_inline const struct sock *fresh_tcp_socket(int fd)
{
	struct task_struct___jalki *task = (void *)bpf_get_current_task_btf();
	__u32 o_state = bpf_core_field_offset(struct socket___jalki, state);
	__u32 o_type = bpf_core_field_offset(struct socket___jalki, type);
	__u32 o_file = bpf_core_field_offset(struct socket___jalki, file);
	__u32 o_sk = bpf_core_field_offset(struct socket___jalki, sk);
	struct file___jalki **fds, *file = NULL;
	struct fdtable___jalki *fdt;
	__u8 head[SOCKET_HEAD_BYTES];
	const struct sock *sk;
	__u16 family;
	void *sock;

	fdt = task->files->fdt;
	if (!fdt || fd < 0 || (unsigned int)fd >= fdt->max_fds)
		return NULL;
	fds = fdt->fd;
	if (bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]) || !file)
		return NULL;
	sock = BPF_CORE_READ(file, private_data);
	if (!sock || o_state > SOCKET_HEAD_BYTES - 4 || o_type > SOCKET_HEAD_BYTES - 2 ||
	    o_file > SOCKET_HEAD_BYTES - 8 || o_sk > SOCKET_HEAD_BYTES - 8 ||
	    bpf_probe_read_kernel(head, sizeof(head), sock))
		return NULL;
	if (*(__u64 *)(head + o_file) != (__u64)(unsigned long)file ||
	    *(__u32 *)(head + o_state) != SS_UNCONNECTED___jalki ||
	    *(__u16 *)(head + o_type) != JALKI_SOCK_STREAM)
		return NULL;
	sk = (const struct sock *)*(__u64 *)(head + o_sk);
	if (!sk)
		return NULL;
	family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if ((family != JALKI_AF_INET && family != JALKI_AF_INET6) ||
	    BPF_CORE_READ_BITFIELD_PROBED(sk, sk_protocol) != JALKI_IPPROTO_TCP ||
	    jalki_sk_state_probed(sk) != JALKI_TCP_CLOSE)
		return NULL;
	return sk;
}

/* Destination from the caller's sockaddr (sockaddr_in or sockaddr_in6 by the
 * socket's family); left zero when unreadable, too short or of another family. */
static __always_inline void dest_from_user(struct jalki_tcp_tuple *t, __u64 uaddr, __u32 addrlen)
{
	struct {
		__u16 family;
		__be16 port;
		__be32 addr4;    /* sockaddr_in: sin_addr; sockaddr_in6: sin6_flowinfo */
		__u8 addr6[16];  /* sockaddr_in6: sin6_addr */
	} sa;

	__builtin_memset(t->daddr, 0, sizeof(t->daddr));
	t->dport = 0;
	if (t->family == JALKI_AF_INET6) {
		if (addrlen < sizeof(sa) || bpf_probe_read_user(&sa, sizeof(sa), (const void *)uaddr) ||
		    sa.family != JALKI_AF_INET6)
			return;
		__builtin_memcpy(t->daddr, sa.addr6, sizeof(t->daddr));
	} else {
		if (addrlen < 8 || bpf_probe_read_user(&sa, 8, (const void *)uaddr) ||
		    sa.family != JALKI_AF_INET)
			return;
		__builtin_memcpy(t->daddr, &sa.addr4, sizeof(sa.addr4));
	}
	t->dport = bpf_ntohs(sa.port);
}

static __always_inline bool failed_for_good(long ret)
{
	if (ret >= 0)
		return false;
	switch (-ret) {
	case JALKI_EINPROGRESS:
	case JALKI_EALREADY:
	case JALKI_EISCONN:
	case JALKI_EINTR:
	case JALKI_ERESTARTSYS:
	case JALKI_ERESTARTNOINTR:
	case JALKI_ERESTARTNOHAND:
	case JALKI_ERESTART_RESTARTBLOCK:
		return false;
	}
	return true;
}

SEC("tracepoint/syscalls/sys_enter_connect")
int tp_connect_enter(struct connect_enter_record *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tgid = pid_tgid >> 32;
	struct connect_call *call, fresh = {};
	const struct sock *sk;

	if (jalki_is_self(tgid) || !jalki_pass_tgid_filter(tgid))
		return 0;
	sk = fresh_tcp_socket((int)ctx->fd);
	if (!sk)
		return 0;
	fresh.sk = (__u64)(unsigned long)sk;
	fresh.uaddr = ctx->uservaddr;
	fresh.addrlen = (__u32)ctx->addrlen;
	fresh.start_ns = bpf_ktime_get_ns();
	call = bpf_map_lookup_elem(&connect_calls, &pid_tgid);
	if (call) {
		/* only this thread writes its slot (here, at exit, at SYN_SENT) */
		__builtin_memcpy(call, &fresh, sizeof(fresh));
		return 0;
	}
	if (bpf_map_update_elem(&connect_calls, &pid_tgid, &fresh, BPF_ANY))
		jalki_count_drop(JALKI_DROP_TRACKING_FULL);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_connect")
int tp_connect_exit(struct connect_exit_record *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct connect_call *found = bpf_map_lookup_elem(&connect_calls, &pid_tgid);
	struct tcp_connect_event *ev;
	struct jalki_tcp_tuple t = {};
	struct connect_call call;
	const struct sock *sk;
	long ret = ctx->ret;

	if (!found || !found->sk)
		return 0; /* not a fresh TCP attempt, it reached SYN_SENT, or filtered */
	__builtin_memcpy(&call, found, sizeof(call));
	found->sk = 0;
	if (!failed_for_good(ret))
		return 0;

	sk = (const struct sock *)call.sk;
	jalki_sk_addrs_probed(sk, t.saddr, t.daddr, &t.sport, &t.dport, &t.family);
	t._pad = 0;
	dest_from_user(&t, call.uaddr, call.addrlen);
	if (!jalki_pass_filters(pid_tgid >> 32, t.sport, t.dport))
		return 0;
	if (jalki_sampled_out())
		return 0;

	ev = jalki_reserve(sizeof(*ev));
	if (!ev)
		return 0;
	jalki_fill_header_current(&ev->hdr);
	ev->hdr.flags |= JALKI_TCP_SYNC_FAILURE;
	__builtin_memcpy(&ev->tuple, &t, sizeof(t));
	ev->latency_ns = ev->hdr.ts_ns - call.start_ns;
	ev->error = (__s32)-ret;
	ev->netns = jalki_sk_netns_probed(sk);
	bpf_ringbuf_submit(ev, 0);
	return 0;
}
