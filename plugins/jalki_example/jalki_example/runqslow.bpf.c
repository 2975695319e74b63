// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * runqslow: one event per thread that waited longer than runqslow_min_ns
 * between becoming runnable and running on a CPU (run-queue latency, the
 * libbpf-tools runqslower measurement).
 *
 * A thread becomes runnable when it is woken (sched_wakeup, or
 * sched_wakeup_new for a new task) or when it leaves a CPU still runnable
 * (sched_switch with prev preempted or TASK_RUNNING); its wait ends at the
 * sched_switch that puts it on a CPU.
 *
 * Rungs:
 *   tp_btf:     tpbtf_sched_wakeup, tpbtf_sched_wakeup_new, tpbtf_sched_switch
 *               (BTF-typed arguments: the next task's tgid, comm and cgroup
 *               are read from its task_struct; event sent at the switch).
 *               Needs sched_switch's prev_state argument (Linux 5.18+).
 *   tracepoint: tp_sched_wakeup, tp_sched_wakeup_new, tp_sched_switch
 *               (classic records carry thread ids only: the event is kept
 *               in a per-CPU slot and sent at the next switch on that CPU,
 *               whose prev is that very thread, so its tgid, comm and cgroup
 *               are read in its own context. A slot still held when the
 *               probe detaches is not sent.)
 *
 * Self filter, the tgid filter and sampling apply to the waiting thread's
 * process. A full tracking map is counted as tracking_full.
 */
#include "runqslow.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

JALKI_BTF_EXPORT(runqslow_event);

/* Report waits of at least this long (set by the Python probe before load). */
const volatile __u64 runqslow_min_ns = 10000000;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, JALKI_RINGBUF_DEFAULT_BYTES);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, JALKI_RUNQ_TASKS);
	__type(key, __u32);
	__type(value, struct runqslow_start);
} runqslow_start SEC(".maps");

/* tracepoint rung: the event of the thread now on this CPU, sent when it leaves. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct runqslow_event);
} runqslow_pending SEC(".maps");

static __always_inline void enqueue(__u32 tid, __u32 flags)
{
	struct runqslow_start start = {.ts_ns = bpf_ktime_get_ns(), .flags = flags};

	if (tid && bpf_map_update_elem(&runqslow_start, &tid, &start, BPF_ANY))
		jalki_count_drop(JALKI_DROP_TRACKING_FULL);
}

/* How long `tid` waited if that is at least the threshold, else 0; forgets the thread. */
static __always_inline __u64 waited(__u32 tid, __u64 now, __u32 *flags)
{
	struct runqslow_start *start;
	__u64 delta;

	if (!tid)
		return 0;
	start = bpf_map_lookup_elem(&runqslow_start, &tid);
	if (!start)
		return 0;
	delta = now - start->ts_ns;
	*flags = start->flags;
	bpf_map_delete_elem(&runqslow_start, &tid);
	return delta >= runqslow_min_ns ? delta : 0;
}

static __always_inline bool wanted(__u32 tgid)
{
	return !jalki_is_self(tgid) && jalki_pass_tgid_filter(tgid) && !jalki_sampled_out();
}

/* ---- rung "tp_btf" ---- */

SEC("tp_btf/sched_wakeup")
int BPF_PROG(tpbtf_sched_wakeup, struct task_struct___jx *p)
{
	enqueue(p->pid, 0);
	return 0;
}

SEC("tp_btf/sched_wakeup_new")
int BPF_PROG(tpbtf_sched_wakeup_new, struct task_struct___jx *p)
{
	enqueue(p->pid, 0);
	return 0;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(tpbtf_sched_switch, bool preempt, struct task_struct___jx *prev, struct task_struct___jx *next,
	     unsigned int prev_state)
{
	__u64 now = bpf_ktime_get_ns(), latency;
	struct runqslow_event *ev;
	__u32 flags = 0, tgid;

	if (preempt || prev_state == 0) /* TASK_RUNNING: still on the run queue */
		enqueue(prev->pid, JALKI_RUNQ_PREEMPTED);
	latency = waited(next->pid, now, &flags);
	if (!latency)
		return 0;
	tgid = next->tgid;
	if (!wanted(tgid))
		return 0;
	ev = jalki_reserve(sizeof(*ev)); /* zeroed */
	if (!ev)
		return 0;
	ev->hdr.ts_ns = now;
	ev->hdr.cgroup_id = next->cgroups->dfl_cgrp->kn->id;
	ev->hdr.pid = tgid;
	ev->hdr.flags = JALKI_HDR_OWNER_KNOWN | flags;
	__builtin_memcpy(ev->hdr.comm, next->comm, sizeof(ev->hdr.comm));
	ev->latency_ns = latency;
	ev->tid = next->pid;
	ev->cpu = bpf_get_smp_processor_id();
	ev->prev_tid = prev->pid;
	__builtin_memcpy(ev->prev_comm, prev->comm, sizeof(ev->prev_comm));
	bpf_ringbuf_submit(ev, 0);
	return 0;
}

/* ---- rung "tracepoint" ---- */

SEC("tracepoint/sched/sched_wakeup")
int tp_sched_wakeup(struct trace_event_raw_sched_wakeup_template___jx *ctx)
{
	enqueue(ctx->pid, 0);
	return 0;
}

SEC("tracepoint/sched/sched_wakeup_new")
int tp_sched_wakeup_new(struct trace_event_raw_sched_wakeup_template___jx *ctx)
{
	enqueue(ctx->pid, 0);
	return 0;
}

/* Send the pending event of the current thread (prev of this switch), with its owner. */
static __always_inline void send_pending(struct runqslow_event *pending)
{
	struct runqslow_event *ev;

	if (!wanted(bpf_get_current_pid_tgid() >> 32))
		return;
	ev = jalki_reserve(sizeof(*ev));
	if (!ev)
		return;
	__builtin_memcpy(ev, pending, sizeof(*ev));
	jalki_fill_header_current(&ev->hdr);
	ev->hdr.ts_ns = pending->hdr.ts_ns;
	ev->hdr.flags |= pending->hdr.flags;
	bpf_ringbuf_submit(ev, 0);
}

SEC("tracepoint/sched/sched_switch")
int tp_sched_switch(struct trace_event_raw_sched_switch___jx *ctx)
{
	__u32 key = 0, flags = 0, prev = ctx->prev_pid, next = ctx->next_pid;
	__u64 now = bpf_ktime_get_ns(), latency;
	struct runqslow_event *pending = bpf_map_lookup_elem(&runqslow_pending, &key);

	if (!pending)
		return 0;
	if (pending->tid && pending->tid == prev)
		send_pending(pending);
	pending->tid = 0;
	if ((ctx->prev_state & 0xff) == 0) /* "R" or "R+": still on the run queue */
		enqueue(prev, JALKI_RUNQ_PREEMPTED);
	latency = waited(next, now, &flags);
	if (!latency)
		return 0;
	pending->hdr.ts_ns = now;
	pending->hdr.flags = flags;
	pending->latency_ns = latency;
	pending->tid = next;
	pending->cpu = bpf_get_smp_processor_id();
	pending->prev_tid = prev;
	/* a helper copy (zeroes on failure): the verifier refuses loads through a moved ctx pointer */
	bpf_probe_read_kernel(pending->prev_comm, sizeof(pending->prev_comm), ctx->prev_comm);
	return 0;
}
