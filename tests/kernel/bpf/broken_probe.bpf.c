// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* A probe whose every rung fails, on any kernel: the first rung is rejected by
 * the verifier (unchecked ring buffer reservation), the second loads but its
 * tracepoint does not exist, so attaching fails. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

struct broken_event {
	__u64 value;
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 16);
} events SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_getppid")
int bad_verifier(void *ctx)
{
	struct broken_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);

	e->value = 1; /* no NULL check: the verifier must refuse this */
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tracepoint/jalki_nonexistent/nothing_here")
int missing_tracepoint(void *ctx)
{
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
