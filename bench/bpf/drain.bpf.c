// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * drain: a synthetic high-rate probe for the ring-buffer drain benchmark.
 * Every syscall number `bench_syscall_nr` made by process `bench_tgid`
 * produces one 40-byte struct drain_event through jalki_reserve(), so ring-full
 * drops are counted in jalki_drops like in any probe (sampling applies too).
 * bench_tgid 0 traces nothing.
 *
 * Rungs: tp_btf: tpbtf_drain; tracepoint: tp_drain.
 */
#include "drain_events.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

JALKI_BTF_EXPORT(drain_event);

#if defined(__TARGET_ARCH_arm64) || defined(__TARGET_ARCH_riscv) || defined(__TARGET_ARCH_loongarch)
#define DEFAULT_SYSCALL_NR 173 /* getppid, asm-generic numbering */
#else
#define DEFAULT_SYSCALL_NR 110 /* getppid on x86_64 */
#endif

const volatile __u32 bench_tgid = 0;
const volatile __s64 bench_syscall_nr = DEFAULT_SYSCALL_NR;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, JALKI_RINGBUF_DEFAULT_BYTES);
} events SEC(".maps");

static __always_inline int on_syscall(long id)
{
	struct drain_event *ev;

	if (id != bench_syscall_nr || !bench_tgid)
		return 0;
	if ((bpf_get_current_pid_tgid() >> 32) != bench_tgid)
		return 0;
	if (jalki_sampled_out())
		return 0;
	ev = jalki_reserve(sizeof(*ev));
	if (!ev)
		return 0;
	jalki_fill_header_current(&ev->hdr);
	bpf_ringbuf_submit(ev, 0);
	return 0;
}

/* sys_enter(struct pt_regs *regs, long id) */
SEC("tp_btf/sys_enter")
int tpbtf_drain(__u64 *ctx)
{
	return on_syscall((long)ctx[1]);
}

SEC("tracepoint/raw_syscalls/sys_enter")
int tp_drain(struct trace_event_raw_sys_enter *ctx)
{
	return on_syscall(ctx->id);
}
