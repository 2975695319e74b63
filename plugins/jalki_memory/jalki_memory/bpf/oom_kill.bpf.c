// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * oom_kill: one event per process the kernel's OOM killer chooses
 * (mark_oom_victim(), tracepoint oom:mark_victim), with the victim, its
 * memory cgroup and its memory footprint at that moment.
 *
 * Rungs:
 *   tp_btf:     tpbtf_oom_mark_victim (tp_btf/mark_victim, whose arguments
 *               are (task, uid) since Linux 6.8; before that (pid) only, the
 *               verifier refuses the program and the ladder goes on). The
 *               victim task is at hand: pid (tgid), comm, cgroup id, memcg,
 *               oom_score_adj, and the figures read from its mm as the
 *               tracepoint computes them (get_mm_counter(): the counter's
 *               central value, in pages; total_vm in pages; pgtables_bytes
 *               in bytes). Direct BTF dereference, except the memcg path
 *               (kernfs names are strings: bpf_probe_read_kernel_str).
 *   tracepoint: tp_oom_mark_victim (tracepoint/oom/mark_victim): the
 *               kernel's record, each field at the offset the running
 *               kernel's BTF gives for struct trace_event_raw_mark_victim
 *               (CO-RE; the same layout tracefs' format file shows). Since
 *               6.8 the record has comm, total_vm, anon/file/shmem rss,
 *               uid, pgtables (all in kB) and oom_score_adj; before, only
 *               pid (JALKI_MEM_FIGURES_ABSENT). The record's pid is the
 *               victim thread's id. The victim's task is not reachable from
 *               the record: its cgroup and memcg are reported only when the
 *               victim is the task that invoked the OOM killer (a memory
 *               cgroup's allocating task usually picks itself), else
 *               JALKI_MEM_VICTIM_UNSEEN.
 *
 * Self filter and the tgid filter apply to the victim; sampling is per event
 * (OOM kills are rare: leave sampling off).
 */
#include "oom_events.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

JALKI_BTF_EXPORT(oom_kill_event);

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, JALKI_RINGBUF_DEFAULT_BYTES);
} events SEC(".maps");

/* The classic oom:mark_victim record (fields looked up in the kernel's BTF). */
struct trace_event_raw_mark_victim___jm {
	int pid;
	__u32 __data_loc_comm;
	unsigned long total_vm;
	unsigned long anon_rss;
	unsigned long file_rss;
	unsigned long shmem_rss;
	__u32 uid;
	unsigned long pgtables;
	short oom_score_adj;
} __attribute__((preserve_access_index));

/* A page count of mm->rss_stat[] (the percpu_counter's central count, as
 * get_mm_counter() reads it; negative transients read as 0). The constant
 * index is relocated with the kernel's element size. */
#define MM_COUNTER(mm, idx) ({ __s64 __c = (mm)->rss_stat[idx].count; __c > 0 ? (__u64)__c : 0; })

/* The memory cgroup of `task`: id and names (leaf first) into ev. */
static __always_inline void fill_memcg(struct oom_kill_event *ev, const struct task_struct___jm *task)
{
	__u32 idx = bpf_core_enum_value(enum cgroup_subsys_id___jm, memory_cgrp_id___jm);
	struct cgroup_subsys_state___jm *css = NULL;
	struct css_set___jm *cset = BPF_CORE_READ(task, cgroups);
	struct kernfs_node___jm *kn, *parent;
	bool renamed = bpf_core_field_exists(struct kernfs_node___jm, __parent);
	int i;

	ev->memcg_id = 0;
	ev->memcg_depth = 0;
	if (!cset || idx >= 14) {
		ev->hdr.flags |= JALKI_MEM_NO_MEMCG;
		return;
	}
	bpf_core_read(&css, sizeof(css), &cset->subsys[idx]);
	kn = css ? BPF_CORE_READ(css, cgroup, kn) : NULL;
	if (!kn) {
		ev->hdr.flags |= JALKI_MEM_NO_MEMCG;
		return;
	}
	ev->memcg_id = BPF_CORE_READ(kn, id);
	for (i = 0; i < JALKI_MEM_MEMCG_DEPTH + 1; i++) {
		if (renamed)
			parent = BPF_CORE_READ(kn, __parent);
		else
			parent = BPF_CORE_READ((struct kernfs_node___jm_old *)kn, parent);
		if (!parent) /* kn is the hierarchy's root: not part of the path */
			return;
		if (i == JALKI_MEM_MEMCG_DEPTH) {
			ev->hdr.flags |= JALKI_MEM_MEMCG_TRUNCATED;
			return;
		}
		if (bpf_probe_read_kernel_str(ev->memcg_names[i], JALKI_MEM_MEMCG_NAME,
					      BPF_CORE_READ(kn, name)) < 0)
			ev->memcg_names[i][0] = 0;
		ev->memcg_depth = i + 1;
		kn = parent;
	}
}

static __always_inline struct oom_kill_event *reserve(__u32 victim_tgid)
{
	struct oom_kill_event *ev;

	if (jalki_is_self(victim_tgid) || !jalki_pass_tgid_filter(victim_tgid))
		return NULL;
	if (jalki_sampled_out())
		return NULL;
	ev = jalki_reserve(sizeof(*ev));
	if (!ev)
		return NULL;
	ev->hdr.ts_ns = bpf_ktime_get_ns();
	ev->hdr.flags = 0;
	ev->trigger_pid = bpf_get_current_pid_tgid() >> 32;
	bpf_get_current_comm(ev->trigger_comm, sizeof(ev->trigger_comm));
	return ev;
}

/* ---- rung "tp_btf" ---- */

SEC("tp_btf/mark_victim")
int BPF_PROG(tpbtf_oom_mark_victim, struct task_struct___jm *task, __u32 uid)
{
	struct oom_kill_event *ev;
	struct mm_struct___jm *mm;

	if (!task)
		return 0;
	ev = reserve(task->tgid);
	if (!ev)
		return 0;
	ev->hdr.pid = task->tgid;
	__builtin_memcpy(ev->hdr.comm, task->comm, JALKI_MEM_COMM_LEN);
	ev->hdr.cgroup_id = task->cgroups->dfl_cgrp->kn->id;
	ev->hdr.flags |= JALKI_HDR_OWNER_KNOWN | JALKI_MEM_SCORE_ADJ_KNOWN;
	ev->uid = uid;
	ev->oom_score_adj = task->signal->oom_score_adj;
	mm = task->mm;
	if (mm) {
		ev->total_vm = mm->total_vm;
		ev->anon_rss = MM_COUNTER(mm, JALKI_MM_ANONPAGES);
		ev->file_rss = MM_COUNTER(mm, JALKI_MM_FILEPAGES);
		ev->shmem_rss = MM_COUNTER(mm, JALKI_MM_SHMEMPAGES);
		ev->pgtables = mm->pgtables_bytes.counter;
	} else {
		ev->total_vm = ev->anon_rss = ev->file_rss = ev->shmem_rss = ev->pgtables = 0;
		ev->hdr.flags |= JALKI_MEM_FIGURES_ABSENT;
	}
	fill_memcg(ev, task);
	bpf_ringbuf_submit(ev, 0);
	return 0;
}

/* ---- rung "tracepoint" ---- */

SEC("tracepoint/oom/mark_victim")
int tp_oom_mark_victim(struct trace_event_raw_mark_victim___jm *ctx)
{
	const struct task_struct___jm *current = (const void *)bpf_get_current_task();
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct oom_kill_event *ev;
	__u32 victim = ctx->pid;
	bool is_current = victim == (__u32)pid_tgid || victim == (__u32)(pid_tgid >> 32);
	__u32 loc;

	/* the victim's tgid is known only when it invoked the OOM killer itself */
	ev = reserve(is_current ? (__u32)(pid_tgid >> 32) : victim);
	if (!ev)
		return 0;
	ev->hdr.pid = is_current ? (__u32)(pid_tgid >> 32) : victim;
	__builtin_memset(ev->hdr.comm, 0, JALKI_MEM_COMM_LEN);
	if (bpf_core_field_exists(ctx->__data_loc_comm)) {
		loc = ctx->__data_loc_comm;
		bpf_probe_read_kernel_str(ev->hdr.comm, JALKI_MEM_COMM_LEN, (const char *)ctx + (loc & 0xffff));
	} else if (is_current) {
		bpf_get_current_comm(ev->hdr.comm, JALKI_MEM_COMM_LEN);
	}
	if (bpf_core_field_exists(ctx->total_vm)) {
		ev->hdr.flags |= JALKI_MEM_FIGURES_KB;
		ev->total_vm = ctx->total_vm;
		ev->anon_rss = ctx->anon_rss;
		ev->file_rss = ctx->file_rss;
		ev->shmem_rss = ctx->shmem_rss;
		ev->pgtables = bpf_core_field_exists(ctx->pgtables) ? ctx->pgtables : 0;
	} else {
		ev->total_vm = ev->anon_rss = ev->file_rss = ev->shmem_rss = ev->pgtables = 0;
		ev->hdr.flags |= JALKI_MEM_FIGURES_ABSENT;
	}
	ev->uid = 0;
	ev->oom_score_adj = 0;
	if (bpf_core_field_exists(ctx->oom_score_adj) && bpf_core_field_exists(ctx->uid)) {
		ev->uid = ctx->uid;
		ev->oom_score_adj = ctx->oom_score_adj;
		ev->hdr.flags |= JALKI_MEM_SCORE_ADJ_KNOWN;
	}
	if (is_current) {
		ev->hdr.cgroup_id = bpf_get_current_cgroup_id();
		ev->hdr.flags |= JALKI_HDR_OWNER_KNOWN;
		fill_memcg(ev, current);
	} else {
		ev->hdr.cgroup_id = 0;
		ev->memcg_id = 0;
		ev->memcg_depth = 0;
		ev->hdr.flags |= JALKI_MEM_VICTIM_UNSEEN;
	}
	bpf_ringbuf_submit(ev, 0);
	return 0;
}
