// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Test object for the field-by-field layout check (tests/kernel/test_layout_btf.py,
 * tests/unit/test_layout_btf.py): a record with two same-size fields after the
 * shared header, so that a Python layout naming them in the other order has the
 * right total size and must still be refused. One rung: a getppid tracepoint. */
#include "jalki/common.bpf.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct layout_check_event {
	struct jalki_event_header hdr;
	__u32 tid;
	__u32 cpu;
	__u64 value;
	__u16 port;
	__u16 _pad;
	__u32 reserved;
};
_Static_assert(sizeof(struct layout_check_event) == 64, "layout_check_event layout");

JALKI_BTF_EXPORT(layout_check_event);

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, JALKI_RINGBUF_DEFAULT_BYTES);
} events SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_getppid")
int layout_check_getppid(void *ctx)
{
	struct layout_check_event *ev;
	__u64 id = bpf_get_current_pid_tgid();

	if (!jalki_pass_tgid_filter(id >> 32))
		return 0;
	ev = jalki_reserve(sizeof(*ev));
	if (!ev)
		return 0;
	__builtin_memset(ev, 0, sizeof(*ev));
	jalki_fill_header_current(&ev->hdr);
	ev->tid = (__u32)id;
	ev->cpu = bpf_get_smp_processor_id();
	ev->value = 42;
	ev->port = 8080;
	bpf_ringbuf_submit(ev, 0);
	return 0;
}
