// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * open_failed: one event per failed file open (openat, openat2, open, creat)
 * with the errno, the path as the caller passed it (cut at
 * JALKI_FS_PATH_MAX - 1 bytes, flagged), flags, mode and the calling process.
 *
 * sys_enter_* keeps the arguments by pid_tgid (kprobes are not needed and not
 * assumed); sys_exit_* reads the return value: successes are only counted
 * (fs_stats[JALKI_FS_STAT_OPENS_SUCCEEDED]); failures are emitted, the path
 * being read from user memory only then. The path-prefix filter
 * (fs_path_prefix, set before load) compares the path as passed: a relative
 * path never matches an absolute prefix. The self filter and the tgid filter
 * apply at entry; sampling applies to failures (counted as sampled drops). A
 * failure whose entry was not seen is counted as the drop cause enter_unseen.
 *
 * Rung: tracepoint: tp_enter_openat + tp_exit_openat
 *       (optional: openat2, open and creat pairs; open/creat exist only on
 *       architectures that have those system calls).
 */
#include "open_failed.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

JALKI_BTF_EXPORT(open_failed_event);

/* Only paths that start with these bytes are reported (length 0: all). */
const volatile char fs_path_prefix[JALKI_FS_PREFIX_MAX] = {};
const volatile __u32 fs_path_prefix_len = 0;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, JALKI_RINGBUF_DEFAULT_BYTES);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, JALKI_FS_INFLIGHT_ENTRIES);
	__type(key, __u64);
	__type(value, struct jalki_fs_open_args);
} fs_open_args SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, JALKI_FS_STAT__MAX);
	__type(key, __u32);
	__type(value, __u64);
} fs_stats SEC(".maps");

/* syscalls:sys_enter_* / sys_exit_* records (struct syscall_trace_enter/exit:
 * stable, described in each event's format file). */
struct jalki_syscall_enter {
	__u64 common;
	__s32 nr;
	__u32 _pad;
	__u64 args[6];
};

struct jalki_syscall_exit {
	__u64 common;
	__s32 nr;
	__u32 _pad;
	__s64 ret;
};

struct jalki_open_how {
	__u64 flags;
	__u64 mode;
	__u64 resolve;
};

#define JALKI_AT_FDCWD (-100)
#define JALKI_CREAT_FLAGS 01101 /* O_CREAT | O_WRONLY | O_TRUNC */

static __always_inline void count_stat(__u32 index)
{
	__u64 *count = bpf_map_lookup_elem(&fs_stats, &index);

	if (count)
		__sync_fetch_and_add(count, 1);
}

static __always_inline int remember(__u64 filename, __s32 dfd, __u32 flags, __u32 mode, __u32 syscall)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tgid = pid_tgid >> 32;
	struct jalki_fs_open_args args = {
		.filename = filename, .dfd = dfd, .flags = flags, .mode = mode, .syscall = syscall,
	};

	if (jalki_is_self(tgid) || !jalki_pass_tgid_filter(tgid))
		return 0;
	if (bpf_map_update_elem(&fs_open_args, &pid_tgid, &args, BPF_ANY))
		jalki_count_drop(JALKI_DROP_TRACKING_FULL);
	return 0;
}

static __always_inline bool path_matches_prefix(const char *path)
{
	__u32 len = fs_path_prefix_len;

	for (int i = 0; i < JALKI_FS_PREFIX_MAX; i++) {
		if (i >= len)
			break;
		if (path[i] != fs_path_prefix[i])
			return false;
	}
	return true;
}

static __always_inline int handle_exit(__s64 ret)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct jalki_fs_open_args *found = bpf_map_lookup_elem(&fs_open_args, &pid_tgid);
	struct jalki_fs_open_args args;
	struct open_failed_event *ev;
	long copied;
	char next = 0;

	if (!found) {
		/* self, filtered, or begun before attach: only a failure is a lost event,
		 * and only when it is not ours to filter out */
		if (ret < 0 && !jalki_is_self(pid_tgid >> 32) && jalki_pass_tgid_filter(pid_tgid >> 32))
			jalki_count_drop(JALKI_DROP_PROBE_BASE + JALKI_FS_DROP_ENTER_UNSEEN);
		return 0;
	}
	__builtin_memcpy(&args, found, sizeof(args));
	bpf_map_delete_elem(&fs_open_args, &pid_tgid);
	if (ret >= 0) {
		count_stat(JALKI_FS_STAT_OPENS_SUCCEEDED);
		return 0;
	}
	if (jalki_sampled_out())
		return 0;
	ev = jalki_reserve(sizeof(*ev));
	if (!ev)
		return 0;
	jalki_fill_header_current(&ev->hdr);
	ev->error = (__s32)-ret;
	ev->dfd = args.dfd;
	ev->flags = args.flags;
	ev->mode = args.mode;
	ev->syscall = args.syscall;
	copied = bpf_probe_read_user_str(ev->path, sizeof(ev->path), (const void *)args.filename);
	if (copied <= 0) {
		ev->path[0] = 0;
		ev->path_len = 0;
		ev->hdr.flags |= JALKI_FS_PATH_UNREADABLE;
	} else {
		ev->path_len = copied - 1;
		/* a full buffer holds the whole path only if the next byte is its NUL */
		if (copied == JALKI_FS_PATH_MAX &&
		    (bpf_probe_read_user(&next, 1, (const char *)args.filename + JALKI_FS_PATH_MAX - 1) ||
		     next != 0))
			ev->hdr.flags |= JALKI_FS_PATH_TRUNCATED;
	}
	if (fs_path_prefix_len && ((ev->hdr.flags & JALKI_FS_PATH_UNREADABLE) ||
				   !path_matches_prefix(ev->path))) {
		bpf_ringbuf_discard(ev, 0);
		return 0;
	}
	bpf_ringbuf_submit(ev, 0);
	return 0;
}

/* ---- rung "tracepoint" ---- */

SEC("tracepoint/syscalls/sys_enter_openat")
int tp_enter_openat(struct jalki_syscall_enter *ctx)
{
	return remember(ctx->args[1], (__s32)ctx->args[0], ctx->args[2], ctx->args[3], JALKI_FS_SYS_OPENAT);
}

SEC("tracepoint/syscalls/sys_exit_openat")
int tp_exit_openat(struct jalki_syscall_exit *ctx)
{
	return handle_exit(ctx->ret);
}

SEC("tracepoint/syscalls/sys_enter_openat2")
int tp_enter_openat2(struct jalki_syscall_enter *ctx)
{
	struct jalki_open_how how = {};

	bpf_probe_read_user(&how, sizeof(how), (const void *)ctx->args[2]);
	return remember(ctx->args[1], (__s32)ctx->args[0], how.flags, how.mode, JALKI_FS_SYS_OPENAT2);
}

SEC("tracepoint/syscalls/sys_exit_openat2")
int tp_exit_openat2(struct jalki_syscall_exit *ctx)
{
	return handle_exit(ctx->ret);
}

SEC("tracepoint/syscalls/sys_enter_open")
int tp_enter_open(struct jalki_syscall_enter *ctx)
{
	return remember(ctx->args[0], JALKI_AT_FDCWD, ctx->args[1], ctx->args[2], JALKI_FS_SYS_OPEN);
}

SEC("tracepoint/syscalls/sys_exit_open")
int tp_exit_open(struct jalki_syscall_exit *ctx)
{
	return handle_exit(ctx->ret);
}

SEC("tracepoint/syscalls/sys_enter_creat")
int tp_enter_creat(struct jalki_syscall_enter *ctx)
{
	return remember(ctx->args[0], JALKI_AT_FDCWD, JALKI_CREAT_FLAGS, ctx->args[1], JALKI_FS_SYS_CREAT);
}

SEC("tracepoint/syscalls/sys_exit_creat")
int tp_exit_creat(struct jalki_syscall_exit *ctx)
{
	return handle_exit(ctx->ret);
}
