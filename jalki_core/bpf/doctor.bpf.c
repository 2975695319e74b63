// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Trial programs for `jalki doctor`: one trivial program per attach type, so
 * that the doctor can load and attach each one for real and report what this
 * kernel accepts (e.g. fentry/fexit refused with EPERM, kprobes absent).
 * Load them one at a time (autoload on for one program): a refused type must
 * not hide the others. vfs_read and getppid exist on every kernel jalki
 * supports.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

SEC("fentry/vfs_read")
int doctor_fentry(void *ctx)
{
	return 0;
}

SEC("fexit/vfs_read")
int doctor_fexit(void *ctx)
{
	return 0;
}

SEC("tp_btf/sys_enter")
int doctor_tp_btf(void *ctx)
{
	return 0;
}

SEC("raw_tp/sys_enter")
int doctor_raw_tp(void *ctx)
{
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_getppid")
int doctor_tracepoint(void *ctx)
{
	return 0;
}

SEC("kprobe/vfs_read")
int doctor_kprobe(void *ctx)
{
	return 0;
}
