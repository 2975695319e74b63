// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * process_exit: one event per process (thread group) that ends, emitted by
 * the thread whose exit ends the group (group_dead: the last live thread),
 * so a multi-threaded process gives one event, not one per thread.
 *
 * The status is what wait(2) reports to the parent (wait_task_zombie()):
 * signal->group_exit_code when the group exits as a whole
 * (SIGNAL_GROUP_EXIT: exit_group(), a fatal signal; flagged
 * JALKI_PROC_GROUP_EXIT), else the group leader's task->exit_code. Encoding:
 * exit status << 8, or the signal number (| 0x80 with a core dump).
 * runtime_ns = now - the group leader's start_time (both CLOCK_MONOTONIC).
 * JALKI_PROC_OOM_VICTIM is set when signal->oom_mm is set: mark_oom_victim()
 * did that, i.e. the OOM killer chose this process.
 *
 * Self filter and the tgid filter apply to the exiting process; sampling is
 * per event.
 *
 * Rungs: tp_btf:     tpbtf_process_exit (tp_btf/sched_process_exit with the
 *                    group_dead argument, Linux 6.16+; task fields by direct
 *                    BTF dereference). On older kernels the program reads an
 *                    argument the tracepoint does not have, the verifier
 *                    refuses it, and the ladder goes on.
 *        tracepoint: tp_process_exit (tracepoint/sched/sched_process_exit;
 *                    the record's group_dead where the kernel has it, else
 *                    signal->live == 0; the exiting task is current, read via
 *                    bpf_get_current_task() + BPF_CORE_READ).
 */
#include "process_events.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

JALKI_BTF_EXPORT(process_exit_event);

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, JALKI_RINGBUF_DEFAULT_BYTES);
} events SEC(".maps");

/* The classic sched:sched_process_exit record: group_dead since Linux 6.16. */
struct trace_event_raw_sched_process_exit___jp {
	bool group_dead;
} __attribute__((preserve_access_index));

static __always_inline int handle_exit(bool btf, const struct task_struct___jp *task)
{
	const struct task_struct___jp *leader;
	const struct signal_struct___jp *sig;
	struct process_exit_event *ev;
	__u32 tgid = JP_READ(btf, task, tgid);
	__u32 sflags;

	if (jalki_is_self(tgid) || !jalki_pass_tgid_filter(tgid))
		return 0;
	if (jalki_sampled_out())
		return 0;
	ev = jalki_reserve(sizeof(*ev));
	if (!ev)
		return 0;
	jalki_fill_header_current(&ev->hdr);
	ev->hdr.pid = tgid;
	ev->tid = JP_READ(btf, task, pid);
	ev->nr_threads_seen = 0;
	leader = JP_READ(btf, task, group_leader);
	sig = JP_READ(btf, task, signal);
	if (!leader)
		leader = task;
	jp_task_comm(btf, leader, ev->hdr.comm);
	ev->hdr.flags |= jp_parent(btf, leader, &ev->ppid, ev->parent_comm);
	ev->runtime_ns = bpf_ktime_get_ns() - JP_READ(btf, leader, start_time);
	ev->status = JP_READ(btf, leader, exit_code);
	if (sig) {
		sflags = JP_READ(btf, sig, flags);
		if (sflags & JALKI_SIGNAL_GROUP_EXIT) {
			ev->status = JP_READ(btf, sig, group_exit_code);
			ev->hdr.flags |= JALKI_PROC_GROUP_EXIT;
		}
		if (JP_READ(btf, sig, oom_mm))
			ev->hdr.flags |= JALKI_PROC_OOM_VICTIM;
	}
	bpf_ringbuf_submit(ev, 0);
	return 0;
}

/* ---- rung "tp_btf" ---- */

SEC("tp_btf/sched_process_exit")
int BPF_PROG(tpbtf_process_exit, struct task_struct___jp *p, bool group_dead)
{
	if (!group_dead)
		return 0;
	return handle_exit(true, p);
}

/* ---- rung "tracepoint" ---- */

SEC("tracepoint/sched/sched_process_exit")
int tp_process_exit(struct trace_event_raw_sched_process_exit___jp *ctx)
{
	const struct task_struct___jp *task = (const void *)bpf_get_current_task();
	bool group_dead;

	if (bpf_core_field_exists(ctx->group_dead)) {
		group_dead = ctx->group_dead;
	} else {
		/* before 6.16: do_exit() decremented signal->live before the tracepoint */
		group_dead = BPF_CORE_READ(task, signal, live.counter) == 0;
	}
	if (!group_dead)
		return 0;
	return handle_exit(false, task);
}
