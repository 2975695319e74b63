/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Record layout and maps of the jalki-cpu cpu_ipc probe: the one definition.
 * The Python mirrors in jalki_cpu/layouts.py are checked against these sizes
 * (and the object's BTF) when the probe loads.
 */
#ifndef JALKI_CPU_IPC_H
#define JALKI_CPU_IPC_H

#include "jalki/common.bpf.h"

/* The counters, in this order everywhere (maps, arrays, Python). */
#define JALKI_CPU_CYCLES 0
#define JALKI_CPU_INSTRUCTIONS 1
#define JALKI_CPU_STALLED_FRONTEND 2
#define JALKI_CPU_STALLED_BACKEND 3
#define JALKI_CPU_COUNTERS 4

/* bpf_perf_event_read_value() index: the running CPU's slot (BPF_F_CURRENT_CPU). */
#define JALKI_CPU_CURRENT_CPU 0xffffffffULL

/* Why a record was emitted (cpu_ipc_event.reason). */
#define JALKI_CPU_REASON_INTERVAL 0 /* the process's interval elapsed */
#define JALKI_CPU_REASON_EXIT 1     /* its last thread left the CPU for good */

#ifndef JALKI_CPU_PROCESS_ENTRIES
#define JALKI_CPU_PROCESS_ENTRIES 16384
#endif

/* Fixed point of the multiplexing scale factor (time_enabled / time_running). */
#define JALKI_CPU_SCALE_SHIFT 16

/* Probe-specific drop causes (Probe.extra_drop_causes, in this order). */
enum jalki_cpu_drop_cause {
	JALKI_CPU_DROP_SWITCH_UNSEEN = 0, /* a task left a CPU we had not seen it enter */
};

/* What bpf_perf_event_read_value() fills (struct bpf_perf_event_value, UAPI),
 * under a name of our own so that minimal and generated vmlinux.h both work. */
struct jalki_perf_value {
	__u64 counter;
	__u64 enabled;
	__u64 running;
};

/* cpu_ipc_start.valid: bits 0..3 are the counters read at switch-in; this one
 * says run_ns and switches are set (tp_btf: the thread switched in is at hand). */
#define JALKI_CPU_START_SCHED (1u << 31)

/* Per CPU: the counters when the task now on the CPU was switched in. */
struct cpu_ipc_start {
	__u64 ts_ns;
	__u64 counter[JALKI_CPU_COUNTERS];
	__u64 enabled[JALKI_CPU_COUNTERS];
	__u64 running[JALKI_CPU_COUNTERS];
	__u64 run_ns;   /* the thread's se.sum_exec_runtime at switch-in */
	__u64 switches; /* its nvcsw + nivcsw at switch-in */
	__u32 tid;      /* the thread switched in */
	__u32 valid;    /* bit i: counter i was read at switch-in; JALKI_CPU_START_SCHED */
};

/* Per thread (task storage): how far its run time is accounted. */
struct cpu_ipc_thread {
	__u64 run_ns;   /* its se.sum_exec_runtime then */
	__u64 switches; /* its nvcsw + nivcsw then */
	__u32 known;    /* 0: nothing accounted yet */
	__u32 _pad;
};

/* Per process (tgid): what its threads accumulated in the current interval. */
struct cpu_ipc_acc {
	__u64 window_start_ns;
	__u64 last_ns;                         /* when a thread of it last left a CPU */
	__u64 run_ns;                          /* on-CPU time of all its threads */
	__u64 count[JALKI_CPU_COUNTERS];       /* counter deltas while it ran (scaled) */
	__u64 counted_ns[JALKI_CPU_COUNTERS];  /* of run_ns, the time counter i measured */
	__u32 switches;                        /* times a thread of it left a CPU */
	__u32 scaled;                          /* of those, how many deltas were scaled */
	__u64 cgroup_id;                       /* of the thread that opened the interval */
	char comm[16];                         /* its command name */
};
_Static_assert(sizeof(struct cpu_ipc_acc) == 120, "cpu_ipc_acc layout");

/* One process over one interval. hdr.ts_ns is the interval's end. */
struct cpu_ipc_event {
	struct jalki_event_header hdr;
	__u64 window_start_ns;
	__u64 run_ns;
	__u64 count[JALKI_CPU_COUNTERS];
	__u64 counted_ns[JALKI_CPU_COUNTERS];
	__u32 switches;
	__u32 scaled;
	__u32 reason; /* JALKI_CPU_REASON_* */
	__u32 _pad;
};
_Static_assert(sizeof(struct cpu_ipc_event) == 136, "cpu_ipc_event layout");

#endif /* JALKI_CPU_IPC_H */
