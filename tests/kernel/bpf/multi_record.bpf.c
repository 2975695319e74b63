// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Test object for probes with several record kinds and a periodic tick
 * (tests/kernel/test_multi_record.py): two record structs of different sizes
 * on one ring, told apart by a __u32 kind right after the shared header, a
 * third kind the Python side does not declare, and a per-CPU counter map the
 * probe's tick reads. Triggers: getppid (small record, counted), getpgid
 * (large record carrying the syscall's argument), getsid (undeclared kind). */
#include "jalki/common.bpf.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

enum multi_kind {
	MULTI_KIND_SMALL = 1,
	MULTI_KIND_LARGE = 7,
	MULTI_KIND_UNDECLARED = 99,
};

struct multi_small {
	struct jalki_event_header hdr;
	__u32 kind;      /* MULTI_KIND_SMALL */
	__u32 tid;
};
_Static_assert(sizeof(struct multi_small) == 48, "multi_small layout");

struct multi_large {
	struct jalki_event_header hdr;
	__u32 kind;      /* MULTI_KIND_LARGE */
	__u32 tid;
	__u64 values[4]; /* the getpgid argument times 1, 2, 3, 4 */
};
_Static_assert(sizeof(struct multi_large) == 80, "multi_large layout");

JALKI_BTF_EXPORT(multi_small);
JALKI_BTF_EXPORT(multi_large);

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, JALKI_RINGBUF_DEFAULT_BYTES);
} events SEC(".maps");

/* getppid calls of the filtered process, per CPU; read by the probe's tick */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} calls SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_getppid")
int multi_getppid(void *ctx)
{
	struct multi_small *rec;
	__u64 id = bpf_get_current_pid_tgid();
	__u32 zero = 0;
	__u64 *count;

	if (!jalki_pass_tgid_filter(id >> 32))
		return 0;
	count = bpf_map_lookup_elem(&calls, &zero);
	if (count)
		*count += 1; /* per-CPU slot: no other writer while this program runs */
	rec = jalki_reserve(sizeof(*rec));
	if (!rec)
		return 0;
	jalki_fill_header_current(&rec->hdr);
	rec->kind = MULTI_KIND_SMALL;
	rec->tid = (__u32)id;
	bpf_ringbuf_submit(rec, 0);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_getpgid")
int multi_getpgid(struct trace_event_raw_sys_enter *ctx)
{
	struct multi_large *rec;
	__u64 id = bpf_get_current_pid_tgid();
	__u64 arg = ctx->args[0];
	int i;

	if (!jalki_pass_tgid_filter(id >> 32))
		return 0;
	rec = jalki_reserve(sizeof(*rec));
	if (!rec)
		return 0;
	jalki_fill_header_current(&rec->hdr);
	rec->kind = MULTI_KIND_LARGE;
	rec->tid = (__u32)id;
	for (i = 0; i < 4; i++)
		rec->values[i] = arg * (i + 1);
	bpf_ringbuf_submit(rec, 0);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_getsid")
int multi_getsid(void *ctx)
{
	struct multi_small *rec;
	__u64 id = bpf_get_current_pid_tgid();

	if (!jalki_pass_tgid_filter(id >> 32))
		return 0;
	rec = jalki_reserve(sizeof(*rec));
	if (!rec)
		return 0;
	jalki_fill_header_current(&rec->hdr);
	rec->kind = MULTI_KIND_UNDECLARED;
	rec->tid = (__u32)id;
	bpf_ringbuf_submit(rec, 0);
	return 0;
}
