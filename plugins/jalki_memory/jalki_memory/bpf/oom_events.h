/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Record layout of the jalki-memory oom_kill probe: the one definition. The
 * Python mirror in jalki_memory/layouts.py is checked against this size, and
 * against the object's BTF when the probe loads.
 *
 * Kernel types are declared as CO-RE "flavors" (___jm suffix), matched by
 * libbpf against the running kernel's BTF: the object builds against the
 * minimal vmlinux.h and loads on any BTF-enabled kernel.
 */
#ifndef JALKI_MEMORY_OOM_EVENTS_H
#define JALKI_MEMORY_OOM_EVENTS_H

#include "jalki/common.bpf.h"

#define JALKI_MEM_COMM_LEN 16
/* Memory-cgroup path kept: this many levels, leaf first, each name whole
 * (a kernfs name is at most NAME_MAX = 255 bytes, plus its NUL): a container
 * id in a runtime's scope name (cri-containerd-<64 hex>.scope) is never cut. */
#define JALKI_MEM_MEMCG_DEPTH 8
#define JALKI_MEM_MEMCG_NAME 256

/* struct jalki_event_header.flags bits (bit 0 is JALKI_HDR_OWNER_KNOWN:
 * the header's cgroup id is the victim's) */
#define JALKI_MEM_FIGURES_KB (1u << 8)      /* figures are kB (the classic record); else pages,
					     * pgtables in bytes (read from the victim's mm) */
#define JALKI_MEM_FIGURES_ABSENT (1u << 9)  /* the kernel's record has no figures (before 6.8) */
#define JALKI_MEM_VICTIM_UNSEEN (1u << 10)  /* classic rung, the victim is not the task that
					     * invoked the OOM killer: cgroup and memcg unknown */
#define JALKI_MEM_MEMCG_TRUNCATED (1u << 11) /* memcg deeper than JALKI_MEM_MEMCG_DEPTH levels */
#define JALKI_MEM_NO_MEMCG (1u << 12)       /* no memory cgroup (controller not enabled) */
#define JALKI_MEM_SCORE_ADJ_KNOWN (1u << 13) /* oom_score_adj and uid are set */

/* One process chosen by the OOM killer (oom:mark_victim). */
struct oom_kill_event {
	struct jalki_event_header hdr; /* victim: pid (tgid), comm, cgroup id */
	__u64 total_vm;                /* units: see JALKI_MEM_FIGURES_KB */
	__u64 anon_rss;
	__u64 file_rss;
	__u64 shmem_rss;
	__u64 pgtables;
	__u64 memcg_id;                /* the victim's memory cgroup (kernfs id = directory inode) */
	__u32 uid;
	__s32 oom_score_adj;
	__u32 trigger_pid;             /* tgid of the task that invoked the OOM killer */
	__u32 memcg_depth;             /* names kept in memcg_names, leaf first */
	char trigger_comm[JALKI_MEM_COMM_LEN];
	char memcg_names[JALKI_MEM_MEMCG_DEPTH][JALKI_MEM_MEMCG_NAME];
};
_Static_assert(sizeof(struct oom_kill_event) == 2168, "oom_kill_event layout");

/* ---------------------------------------------------------------------- */
/* CO-RE flavors                                                           */
/* ---------------------------------------------------------------------- */

struct percpu_counter___jm {
	__s64 count;
} __attribute__((preserve_access_index));

struct mm_struct___jm {
	unsigned long total_vm;
	struct {
		long counter;
	} pgtables_bytes;
	struct percpu_counter___jm rss_stat[4];
} __attribute__((preserve_access_index));

/* mm->rss_stat indexes. The kernel's enum is anonymous (no BTF name to
 * relocate against); the values have been these since Linux 4.5. */
#define JALKI_MM_FILEPAGES 0
#define JALKI_MM_ANONPAGES 1
#define JALKI_MM_SHMEMPAGES 3

enum cgroup_subsys_id___jm {
	memory_cgrp_id___jm = 4,
};

/* kernfs_node.parent was renamed __parent in Linux 6.15 */
struct kernfs_node___jm {
	struct kernfs_node___jm *__parent;
	const char *name;
	__u64 id;
} __attribute__((preserve_access_index));

struct kernfs_node___jm_old {
	struct kernfs_node___jm *parent;
} __attribute__((preserve_access_index));

struct cgroup___jm {
	struct kernfs_node___jm *kn;
} __attribute__((preserve_access_index));

struct cgroup_subsys_state___jm {
	struct cgroup___jm *cgroup;
} __attribute__((preserve_access_index));

struct css_set___jm {
	struct cgroup_subsys_state___jm *subsys[14];
	struct cgroup___jm *dfl_cgrp;
} __attribute__((preserve_access_index));

struct signal_struct___jm {
	short oom_score_adj;
} __attribute__((preserve_access_index));

struct task_struct___jm {
	int pid;
	int tgid;
	char comm[JALKI_MEM_COMM_LEN];
	struct mm_struct___jm *mm;
	struct signal_struct___jm *signal;
	struct css_set___jm *cgroups;
} __attribute__((preserve_access_index));

#endif /* JALKI_MEMORY_OOM_EVENTS_H */
