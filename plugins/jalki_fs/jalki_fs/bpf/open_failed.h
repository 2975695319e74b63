/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Record layout of the jalki-fs open_failed probe: the one definition. The
 * Python mirror in jalki_fs/layouts.py is checked against this size (and the
 * object's BTF) when the probe loads.
 */
#ifndef JALKI_FS_OPEN_FAILED_H
#define JALKI_FS_OPEN_FAILED_H

#include "jalki/common.bpf.h"

/* Bytes of path kept per event (with the NUL); longer paths are cut. */
#define JALKI_FS_PATH_MAX 256
/* Longest path-prefix filter. */
#define JALKI_FS_PREFIX_MAX 128

#ifndef JALKI_FS_INFLIGHT_ENTRIES
#define JALKI_FS_INFLIGHT_ENTRIES 10240
#endif

/* struct jalki_event_header.flags bits (bit 0 is JALKI_HDR_OWNER_KNOWN) */
#define JALKI_FS_PATH_TRUNCATED (1u << 8)  /* the path was longer than JALKI_FS_PATH_MAX - 1 */
#define JALKI_FS_PATH_UNREADABLE (1u << 9) /* the path could not be read from user memory */

/* open_failed_event.syscall */
#define JALKI_FS_SYS_OPENAT 0
#define JALKI_FS_SYS_OPENAT2 1
#define JALKI_FS_SYS_OPEN 2
#define JALKI_FS_SYS_CREAT 3

/* fs_stats indexes (per CPU): counters, not drops */
enum jalki_fs_stat {
	JALKI_FS_STAT_OPENS_SUCCEEDED = 0, /* successful opens seen (never emitted) */
	JALKI_FS_STAT__MAX = 1,
};

/* Probe-specific drop causes (Probe.extra_drop_causes, in this order),
 * counted with jalki_count_drop(JALKI_DROP_PROBE_BASE + cause). */
enum jalki_fs_drop_cause {
	JALKI_FS_DROP_ENTER_UNSEEN = 0, /* a failed open whose entry was not seen (began before
					 * attach, or its arguments could not be kept) */
};

/* One failed open, emitted at the syscall's exit in the caller's context. */
struct open_failed_event {
	struct jalki_event_header hdr;
	__s32 error;     /* positive errno (EACCES, ENOENT, ...) */
	__s32 dfd;       /* directory fd as passed (AT_FDCWD = -100; open/creat: AT_FDCWD) */
	__u32 flags;     /* open flags (O_*; openat2: how.flags) */
	__u32 mode;      /* mode argument (meaningful with O_CREAT / O_TMPFILE) */
	__u32 syscall;   /* JALKI_FS_SYS_* */
	__u32 path_len;  /* bytes of path kept, without the NUL */
	char path[JALKI_FS_PATH_MAX]; /* as the caller passed it, NUL-terminated */
};
_Static_assert(sizeof(struct open_failed_event) == 320, "open_failed_event layout");

/* Arguments kept from sys_enter_* until sys_exit_*, keyed by pid_tgid. */
struct jalki_fs_open_args {
	__u64 filename; /* user pointer */
	__s32 dfd;
	__u32 flags;
	__u32 mode;
	__u32 syscall;
};

#endif /* JALKI_FS_OPEN_FAILED_H */
