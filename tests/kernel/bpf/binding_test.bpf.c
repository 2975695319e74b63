// SPDX-License-Identifier: GPL-2.0
/* Test object for tests/kernel/test_libbpf_binding.py (and the unit tests'
 * handle checks). Needs only UAPI and libbpf headers, no vmlinux.h. */
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct binding_event {
	__u64 seq;
	__u32 tgid;
	__u32 marker;
};
_Static_assert(sizeof(struct binding_event) == 16, "binding_event is 16 bytes");
/* A global of the type puts it into BTF (types of locals alone are not emitted). */
struct binding_event *binding_event_btf __attribute__((unused));

const volatile __u32 target_tgid = 0;
const volatile __u32 marker = 0;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} counter SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} percpu_counter SEC(".maps");

/* hits[0]: raw_tp/sys_enter, hits[1]: tp_btf/sys_enter (for our tgid) */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} hits SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16);
	__type(key, __u32);
	__type(value, __u64);
} scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

static __always_inline int is_target(void)
{
	return (__u32)(bpf_get_current_pid_tgid() >> 32) == target_tgid;
}

SEC("tracepoint/syscalls/sys_enter_getppid")
int on_getppid(void *ctx)
{
	struct binding_event *e;
	__u32 zero = 0;
	__u64 *cnt, *pc, seq;

	if (!is_target())
		return 0;
	cnt = bpf_map_lookup_elem(&counter, &zero);
	if (!cnt)
		return 0;
	seq = *cnt;
	__sync_fetch_and_add(cnt, 1);
	pc = bpf_map_lookup_elem(&percpu_counter, &zero);
	if (pc)
		*pc += 1;
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e)
		return 0;
	e->seq = seq;
	e->tgid = target_tgid;
	e->marker = marker;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

static __always_inline void count_hit(__u32 slot)
{
	__u64 *v;

	if (!is_target())
		return;
	v = bpf_map_lookup_elem(&hits, &slot);
	if (v)
		__sync_fetch_and_add(v, 1);
}

SEC("raw_tp/sys_enter")
int raw_sys_enter(void *ctx)
{
	count_hit(0);
	return 0;
}

SEC("tp_btf/sys_enter")
int tpbtf_sys_enter(void *ctx)
{
	count_hit(1);
	return 0;
}

/* Rejected by the verifier: a hash map value pointer is used without a NULL
 * check. (Recent kernels prove constant-key ARRAY lookups non-NULL, so the
 * map must be a hash.) */
SEC("tracepoint/syscalls/sys_enter_getppid")
int bad_prog(void *ctx)
{
	__u32 key = 1;
	__u64 *v = bpf_map_lookup_elem(&scratch, &key);

	return (int)*v;
}

/* Refused with EPERM on the project's kernel; loads on most others. */
SEC("fentry/vfs_read")
int fentry_vfs_read(void *ctx)
{
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
