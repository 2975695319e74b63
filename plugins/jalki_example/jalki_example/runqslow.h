/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Record layout and maps of the jalki-example runqslow probe: the one
 * definition. The Python mirror (RUNQSLOW in jalki_example/__init__.py) is
 * checked against this struct, member by member, in the object's BTF when
 * the probe loads.
 *
 * Kernel types are CO-RE "flavors" (___jx suffix): libbpf matches them
 * against the running kernel's BTF, so the object builds against the
 * minimal vmlinux.h and loads on any BTF-enabled kernel.
 */
#ifndef JALKI_EXAMPLE_RUNQSLOW_H
#define JALKI_EXAMPLE_RUNQSLOW_H

#include "jalki/common.bpf.h"

/* struct jalki_event_header.flags bits (bit 0 is JALKI_HDR_OWNER_KNOWN) */
#define JALKI_RUNQ_PREEMPTED (1u << 8) /* the wait began when the task was preempted
					* (still runnable), not at a wakeup */

#ifndef JALKI_RUNQ_TASKS
#define JALKI_RUNQ_TASKS 10240 /* threads waiting for a CPU tracked at once */
#endif

/* One thread that waited at least runqslow_min_ns for a CPU. */
struct runqslow_event {
	struct jalki_event_header hdr; /* ts_ns: when it got the CPU; pid (tgid), comm, cgroup */
	__u64 latency_ns;              /* runnable (woken or preempted) -> running */
	__u32 tid;                     /* the thread */
	__u32 cpu;                     /* the CPU it got */
	__u32 prev_tid;                /* the thread it took the CPU from (0: idle) */
	__u32 _pad;
	char prev_comm[16];
};
_Static_assert(sizeof(struct runqslow_event) == 80, "runqslow_event layout");

/* When a thread became runnable (map runqslow_start, key: thread id). */
struct runqslow_start {
	__u64 ts_ns;
	__u32 flags; /* JALKI_RUNQ_PREEMPTED or 0 */
	__u32 _pad;
};

/* ---- CO-RE flavors ---- */

struct kernfs_node___jx {
	__u64 id;
} __attribute__((preserve_access_index));

struct cgroup___jx {
	struct kernfs_node___jx *kn;
} __attribute__((preserve_access_index));

struct css_set___jx {
	struct cgroup___jx *dfl_cgrp;
} __attribute__((preserve_access_index));

struct task_struct___jx {
	int pid; /* thread id */
	int tgid;
	char comm[16];
	struct css_set___jx *cgroups;
} __attribute__((preserve_access_index));

/* the classic records (tracefs events/sched/<name>/format) */
struct trace_event_raw_sched_wakeup_template___jx {
	char comm[16];
	int pid;
} __attribute__((preserve_access_index));

struct trace_event_raw_sched_switch___jx {
	char prev_comm[16];
	int prev_pid;
	long prev_state; /* 0 or TASK_REPORT_MAX (0x100, preempted) when still runnable */
	char next_comm[16];
	int next_pid;
} __attribute__((preserve_access_index));

#endif /* JALKI_EXAMPLE_RUNQSLOW_H */
