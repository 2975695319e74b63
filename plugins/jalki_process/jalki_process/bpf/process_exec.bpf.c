// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * process_exec: one event per successful execve()/execveat(), in the new
 * program's context, right after the kernel loaded it.
 *
 * Carries the process (tgid, new comm, cgroup id), its parent (real_parent's
 * tgid and comm, read from the task at exec time), the file the kernel
 * executed (bprm->filename on tp_btf; the record's __data_loc filename on
 * the classic tracepoint: the same string) and argv: the NUL-separated
 * arguments between mm->arg_start and mm->arg_end of the new program, read
 * with bpf_probe_read_user (the pages were just written by the exec, so they
 * are resident), at most JALKI_PROC_ARGV_MAX bytes (longer: flagged
 * JALKI_PROC_ARGV_TRUNCATED; unreadable: JALKI_PROC_ARGV_UNREADABLE).
 *
 * Self filter and the tgid filter apply to the exec'ing process (the port
 * filter does not apply to processes); sampling is per event.
 *
 * Rungs: tp_btf:     tpbtf_process_exec (tp_btf/sched_process_exec: task and
 *                    bprm read by direct BTF dereference)
 *        tracepoint: tp_process_exec (tracepoint/sched/sched_process_exec:
 *                    current task via bpf_get_current_task() + BPF_CORE_READ)
 */
#include "process_events.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

JALKI_BTF_EXPORT(process_exec_event);

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, JALKI_RINGBUF_DEFAULT_BYTES);
} events SEC(".maps");

/* The classic sched:sched_process_exec record (offsets from the kernel's BTF). */
struct trace_event_raw_sched_process_exec___jp {
	__u32 __data_loc_filename;
	int pid;
	int old_pid;
} __attribute__((preserve_access_index));

static __always_inline int handle_exec(bool btf, const struct task_struct___jp *task, __u32 old_pid,
				       const char *filename)
{
	struct process_exec_event *ev;
	const struct mm_struct___jp *mm;
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	__u64 start = 0, end = 0, len;

	if (jalki_is_self(tgid) || !jalki_pass_tgid_filter(tgid))
		return 0;
	if (jalki_sampled_out())
		return 0;
	ev = jalki_reserve(sizeof(*ev));
	if (!ev)
		return 0;
	jalki_fill_header_current(&ev->hdr);
	ev->hdr.flags |= jp_parent(btf, task, &ev->ppid, ev->parent_comm);
	ev->old_pid = old_pid;
	if (bpf_probe_read_kernel_str(ev->filename, sizeof(ev->filename), filename) < 0)
		ev->filename[0] = 0;

	mm = JP_READ(btf, task, mm);
	if (mm) {
		start = JP_READ(btf, mm, arg_start);
		end = JP_READ(btf, mm, arg_end);
	}
	len = end > start ? end - start : 0;
	ev->argv_full_len = len > 0xffffffffull ? 0xffffffffu : (__u32)len;
	if (len > JALKI_PROC_ARGV_MAX) {
		len = JALKI_PROC_ARGV_MAX;
		ev->hdr.flags |= JALKI_PROC_ARGV_TRUNCATED;
	}
	barrier_var(len);
	if (len > 0 && len <= JALKI_PROC_ARGV_MAX) {
		if (bpf_probe_read_user(ev->argv, len, (const void *)start) < 0) {
			len = 0;
			ev->hdr.flags |= JALKI_PROC_ARGV_UNREADABLE;
		}
	} else {
		len = 0;
	}
	ev->argv_len = len;
	bpf_ringbuf_submit(ev, 0);
	return 0;
}

/* ---- rung "tp_btf" ---- */

SEC("tp_btf/sched_process_exec")
int BPF_PROG(tpbtf_process_exec, struct task_struct___jp *p, int old_pid, struct linux_binprm___jp *bprm)
{
	return handle_exec(true, p, old_pid, bprm->filename);
}

/* ---- rung "tracepoint" ---- */

SEC("tracepoint/sched/sched_process_exec")
int tp_process_exec(struct trace_event_raw_sched_process_exec___jp *ctx)
{
	const struct task_struct___jp *task = (const void *)bpf_get_current_task();
	__u32 loc = ctx->__data_loc_filename;

	/* __data_loc: low 16 bits = offset of the string in the record */
	return handle_exec(false, task, ctx->old_pid, (const char *)ctx + (loc & 0xffff));
}
