// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Test object for recursion misses (tests/kernel/test_recursion_miss.py): a
 * tp_btf program on the bpf_trace_printk tracepoint that itself prints, so
 * each of its runs fires its own tracepoint again on the same CPU, a run the
 * kernel skips (the program is already active there) and counts in
 * bpf_prog_info.recursion_misses. Trigger: getppid of the filtered process,
 * whose tracepoint program prints once. Each getppid: one run of
 * recursion_printk, one skipped. */
#include "jalki/common.bpf.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct recursion_record {
	struct jalki_event_header hdr;
};

JALKI_BTF_EXPORT(recursion_record);

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, JALKI_RINGBUF_DEFAULT_BYTES);
} events SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_getppid")
int recursion_getppid(void *ctx)
{
	if (!jalki_pass_tgid_filter(bpf_get_current_pid_tgid() >> 32))
		return 0;
	bpf_printk("jalki recursion test");
	return 0;
}

SEC("tp_btf/bpf_trace_printk")
int recursion_printk(__u64 *ctx)
{
	if (!jalki_pass_tgid_filter(bpf_get_current_pid_tgid() >> 32))
		return 0;
	bpf_printk("jalki recursion test, nested");
	return 0;
}
