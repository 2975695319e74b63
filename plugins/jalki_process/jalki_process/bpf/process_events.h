/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Record layouts of the jalki-process probes (process_exec, process_exit):
 * the one definition. The Python mirrors in jalki_process/layouts.py are
 * checked against these sizes, and against the object's BTF when a probe
 * loads.
 *
 * The kernel types read here are declared as CO-RE "flavors" (the ___jp
 * suffix): libbpf matches them by name and field against the running
 * kernel's BTF, so the objects build against the minimal vmlinux.h (which
 * does not define struct task_struct) and load on any BTF-enabled kernel.
 */
#ifndef JALKI_PROCESS_EVENTS_H
#define JALKI_PROCESS_EVENTS_H

#include "jalki/common.bpf.h"

#define JALKI_PROC_COMM_LEN 16
/* Bytes of the executed file name kept (with the NUL). */
#define JALKI_PROC_FILENAME_MAX 256
/* Bytes of argv kept: the NUL-separated arguments as they lie in the new
 * program's memory (mm->arg_start .. mm->arg_end). */
#define JALKI_PROC_ARGV_MAX 256

/* struct jalki_event_header.flags bits (bit 0 is JALKI_HDR_OWNER_KNOWN) */
#define JALKI_PROC_ARGV_TRUNCATED (1u << 8)  /* exec: argv longer than JALKI_PROC_ARGV_MAX */
#define JALKI_PROC_ARGV_UNREADABLE (1u << 9) /* exec: argv could not be read from user memory */
#define JALKI_PROC_OOM_VICTIM (1u << 10)     /* exit: signal->oom_mm set, the OOM killer chose it */
#define JALKI_PROC_GROUP_EXIT (1u << 11)     /* exit: status from signal->group_exit_code */
#define JALKI_PROC_NO_PARENT (1u << 12)      /* parent unknown (real_parent unreadable) */

/* One execve() that succeeded, seen in the new program's context. */
struct process_exec_event {
	struct jalki_event_header hdr; /* pid = tgid, comm = the new comm */
	__u32 ppid;                    /* real_parent's tgid */
	__u32 old_pid;                 /* thread id that called execve (a non-leader thread's exec) */
	__u32 argv_len;                /* bytes of argv kept */
	__u32 argv_full_len;           /* mm->arg_end - mm->arg_start */
	char parent_comm[JALKI_PROC_COMM_LEN];
	char filename[JALKI_PROC_FILENAME_MAX]; /* as the kernel opened it (bprm->filename) */
	char argv[JALKI_PROC_ARGV_MAX];         /* NUL-separated, not NUL-terminated when cut */
};
_Static_assert(sizeof(struct process_exec_event) == 584, "process_exec_event layout");

/* One process (thread group) that ended: emitted by its last thread. */
struct process_exit_event {
	struct jalki_event_header hdr; /* pid = tgid, comm = the group leader's comm */
	__u32 ppid;                    /* real_parent's tgid (after any reparenting) */
	__u32 status;                  /* wait status as wait(2) reports it: code << 8 | core 0x80 | signal */
	__u64 runtime_ns;              /* now - group leader's start_time (CLOCK_MONOTONIC) */
	__u32 tid;                     /* the thread whose exit ended the group */
	__u32 nr_threads_seen;         /* reserved, 0 */
	char parent_comm[JALKI_PROC_COMM_LEN];
};
_Static_assert(sizeof(struct process_exit_event) == 80, "process_exit_event layout");

/* ---------------------------------------------------------------------- */
/* CO-RE flavors of the kernel types read                                   */
/* ---------------------------------------------------------------------- */

struct mm_struct___jp {
	unsigned long arg_start;
	unsigned long arg_end;
} __attribute__((preserve_access_index));

struct signal_struct___jp {
	struct {
		int counter;
	} live;
	int group_exit_code;
	unsigned int flags;
	void *oom_mm;
} __attribute__((preserve_access_index));

struct task_struct___jp {
	int pid;
	int tgid;
	int exit_code;
	__u64 start_time;
	char comm[JALKI_PROC_COMM_LEN];
	struct task_struct___jp *real_parent;
	struct task_struct___jp *group_leader;
	struct signal_struct___jp *signal;
	struct mm_struct___jp *mm;
} __attribute__((preserve_access_index));

struct linux_binprm___jp {
	const char *filename;
} __attribute__((preserve_access_index));

/* SIGNAL_GROUP_EXIT (include/linux/sched/signal.h): the group is exiting
 * with signal->group_exit_code (exit_group(), a fatal signal). A flag value,
 * not a layout: stable since Linux 2.6. */
#define JALKI_SIGNAL_GROUP_EXIT 0x00000004u

/*
 * Read a field of a kernel pointer: by direct BTF dereference when `btf` is
 * true (tp_btf arguments and pointers walked from them: no
 * bpf_probe_read_kernel, so it works under lockdown=confidentiality), else
 * with BPF_CORE_READ (pointers from bpf_get_current_task() on the classic
 * tracepoint rung). `btf` is a constant in every caller, so one branch is
 * compiled away.
 */
#define JP_READ(btf, ptr, field) ((btf) ? (ptr)->field : BPF_CORE_READ((ptr), field))

/* Copy a task's comm (16 bytes) either way. */
static __always_inline void jp_task_comm(bool btf, const struct task_struct___jp *task, char *dst)
{
	if (btf)
		__builtin_memcpy(dst, task->comm, JALKI_PROC_COMM_LEN);
	else
		bpf_core_read(dst, JALKI_PROC_COMM_LEN, &task->comm);
}

/* Parent's tgid and comm; returns JALKI_PROC_NO_PARENT when unknown. */
static __always_inline __u32 jp_parent(bool btf, const struct task_struct___jp *task, __u32 *ppid,
				       char *parent_comm)
{
	const struct task_struct___jp *parent = JP_READ(btf, task, real_parent);

	if (!parent) {
		*ppid = 0;
		__builtin_memset(parent_comm, 0, JALKI_PROC_COMM_LEN);
		return JALKI_PROC_NO_PARENT;
	}
	*ppid = JP_READ(btf, parent, tgid);
	jp_task_comm(btf, parent, parent_comm);
	return 0;
}

#endif /* JALKI_PROCESS_EVENTS_H */
