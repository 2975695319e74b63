/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * jalki/common.bpf.h: the kernel-side services every jalki probe shares.
 *
 * Include it once per probe object (after nothing, or after vmlinux.h). It
 * defines, in that object:
 *
 *   jalki_self_tgid   const volatile __u32 in .rodata: jalki's own tgid,
 *                     set by the loader before load; 0 = no self filter
 *   jalki_config      ARRAY[1] of struct jalki_config: filters and sampling,
 *                     written by the loader after load
 *   jalki_drops       PERCPU_ARRAY[JALKI_DROP__MAX] of __u64: drops by cause
 *
 * Probes of sockets include jalki/sock.bpf.h instead (it includes this
 * file): the socket-owner map and the inet socket readers live there, so
 * that objects which never see a socket declare no socket map.
 *
 * Each probe .bpf.c declares its own ring buffer, named `events`, before it
 * calls jalki_reserve() (a macro, so that it binds to that object's map; it
 * returns the record zeroed, see jalki_ringbuf_reserve()):
 *
 *   struct {
 *           __uint(type, BPF_MAP_TYPE_RINGBUF);
 *           __uint(max_entries, JALKI_RINGBUF_DEFAULT_BYTES);
 *   } events SEC(".maps");
 *
 * Configuration semantics (struct jalki_config). An all-zero entry (the state
 * right after load, before the loader writes it) means "keep everything, no
 * filters":
 *   - filter_tgid: 0 = any process; else only events owned by that tgid
 *     (events whose owner is unknown do not match a tgid filter).
 *   - filter_port: 0 = any; else the source or the destination port must match.
 *   - sampling applies only when flags has JALKI_CFG_SAMPLING set: then an
 *     event (or, for per-connection probes, a connection) is kept when
 *     bpf_get_prandom_u32() <= sample_threshold, so a threshold of
 *     0xffffffff keeps all and 0 keeps about 1 in 2^32. With the flag clear,
 *     sample_threshold is ignored and everything is kept.
 *   Every event given up because of sampling is counted in
 *   jalki_drops[JALKI_DROP_SAMPLED]; ring-buffer reservation failures in
 *   jalki_drops[JALKI_DROP_RINGBUF_FULL]; failed inserts into a probe's
 *   tracking map in jalki_drops[JALKI_DROP_TRACKING_FULL]. Filtered events
 *   and self events are not drops and are not counted.
 */
#ifndef JALKI_COMMON_BPF_H
#define JALKI_COMMON_BPF_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>

/* ------------------------------------------------------------------ */
/* Constants (vmlinux.h carries types, not macros)                     */
/* ------------------------------------------------------------------ */

/* struct jalki_config.flags */
#define JALKI_CFG_SAMPLING 1u

/* struct jalki_event_header.flags */
#define JALKI_HDR_OWNER_KNOWN 1u

/* Default size of a probe's `events` ring buffer; the loader resizes it. */
#define JALKI_RINGBUF_DEFAULT_BYTES (1 << 20)

/* ------------------------------------------------------------------ */
/* Shared structs (mirrored by jalki_core in Python)                   */
/* ------------------------------------------------------------------ */

struct jalki_config {
	__u32 filter_tgid;      /* 0 = any */
	__u16 filter_port;      /* 0 = any; matches source or destination port */
	__u16 _pad;
	__u32 sample_threshold; /* used only with JALKI_CFG_SAMPLING: keep if prandom <= threshold */
	__u32 flags;            /* JALKI_CFG_* */
};
_Static_assert(sizeof(struct jalki_config) == 16, "jalki_config layout");

enum jalki_drop_cause {
	JALKI_DROP_RINGBUF_FULL = 0,
	JALKI_DROP_SAMPLED = 1,
	JALKI_DROP_TRACKING_FULL = 2,
	/* Causes a probe names itself (Probe.extra_drop_causes, in order):
	 * jalki_count_drop(JALKI_DROP_PROBE_BASE + i). */
	JALKI_DROP_PROBE_BASE = 3,
	JALKI_DROP__MAX = 8,
};

struct jalki_owner {
	__u64 cgroup_id;
	__u32 tgid;
	__u32 _pad;
	char comm[16];
	__u64 start_ns; /* when ownership was recorded */
};
_Static_assert(sizeof(struct jalki_owner) == 40, "jalki_owner layout");

struct jalki_event_header {
	__u64 ts_ns;     /* bpf_ktime_get_ns() (CLOCK_MONOTONIC) */
	__u64 cgroup_id;
	__u32 pid;       /* tgid of the owning process; 0 if unknown */
	__u32 flags;     /* JALKI_HDR_OWNER_KNOWN */
	char comm[16];
};
_Static_assert(sizeof(struct jalki_event_header) == 40, "jalki_event_header layout");

/* ------------------------------------------------------------------ */
/* Globals and maps                                                    */
/* ------------------------------------------------------------------ */

/*
 * Put `struct name` (a record layout) into the object's BTF, so that the
 * loader can check the Python layout against it: clang emits BTF only for
 * types reachable from globals, maps and function signatures, not for types
 * used only by local variables. Costs one pointer in .rodata.
 *   JALKI_BTF_EXPORT(tcp_connect_event);
 */
#define JALKI_BTF_EXPORT(name) \
	struct name *const volatile jalki_btf_##name __attribute__((unused)) = 0

const volatile __u32 jalki_self_tgid = 0;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct jalki_config);
} jalki_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, JALKI_DROP__MAX);
	__type(key, __u32);
	__type(value, __u64);
} jalki_drops SEC(".maps");

/* ------------------------------------------------------------------ */
/* Drops, config, filters, sampling                                    */
/* ------------------------------------------------------------------ */

static __always_inline void jalki_count_drop(enum jalki_drop_cause cause)
{
	__u32 key = cause;
	__u64 *count = bpf_map_lookup_elem(&jalki_drops, &key);

	/* atomic: a softirq program may interrupt a task-context one on this CPU */
	if (count)
		__sync_fetch_and_add(count, 1);
}

/* The config entry; never NULL in practice (a 1-entry ARRAY always has it). */
static __always_inline const struct jalki_config *jalki_config_get(void)
{
	__u32 key = 0;

	return bpf_map_lookup_elem(&jalki_config, &key);
}

static __always_inline bool jalki_is_self(__u32 tgid)
{
	return jalki_self_tgid != 0 && tgid == jalki_self_tgid;
}

/* tgid 0 means "owner unknown": it passes unless a tgid filter is set. */
/* The process filter alone, for probes whose events have no ports (block
 * I/O, file opens, process exits): the port filter does not apply to them. */
static __always_inline bool jalki_pass_tgid_filter(__u32 tgid)
{
	const struct jalki_config *cfg = jalki_config_get();

	return !cfg || !cfg->filter_tgid || cfg->filter_tgid == tgid;
}

static __always_inline bool jalki_pass_filters(__u32 tgid, __u16 sport, __u16 dport)
{
	const struct jalki_config *cfg = jalki_config_get();

	if (!cfg)
		return true;
	if (cfg->filter_tgid && cfg->filter_tgid != tgid)
		return false;
	if (cfg->filter_port && cfg->filter_port != sport && cfg->filter_port != dport)
		return false;
	return true;
}

/* True when sampling gives this event (or connection) up; counts the drop. */
static __always_inline bool jalki_sampled_out(void)
{
	const struct jalki_config *cfg = jalki_config_get();

	if (!cfg || !(cfg->flags & JALKI_CFG_SAMPLING))
		return false;
	if (bpf_get_prandom_u32() <= cfg->sample_threshold)
		return false;
	jalki_count_drop(JALKI_DROP_SAMPLED);
	return true;
}

/*
 * Reserve `size` bytes in a ring buffer and return them zeroed; counts
 * JALKI_DROP_RINGBUF_FULL on failure.
 *
 * The zeroed-record rule: every byte of a record that reaches user space is
 * written on every path. Ring buffer memory is not cleared between records
 * (it holds whatever the last record at that place held), and a field left
 * out on some path, a string's tail after its NUL, or padding would carry
 * it. Zeroing here, in the one place every record is reserved, makes the
 * rule hold for every probe; programs then write only what they know.
 * `size` is a compile-time constant at every call (sizeof the record), so
 * the memset becomes plain 8-byte stores (records are 8-byte aligned in the
 * ring). Values built on the stack and copied into a record (tuples, owner
 * snapshots) must be zero-initialised as well (`= {}`).
 */
#define JALKI_ZERO_CHUNK 1024 /* the largest memset clang's BPF backend writes out as stores */

static __always_inline void *jalki_ringbuf_reserve(void *ringbuf, __u64 size)
{
	void *rec = bpf_ringbuf_reserve(ringbuf, size, 0);
	__u64 off;

	if (!rec) {
		jalki_count_drop(JALKI_DROP_RINGBUF_FULL);
		return NULL;
	}
	/* The __u64 cast tells clang the alignment, so it stores 8 bytes at a
	 * time. A record over JALKI_ZERO_CHUNK bytes is zeroed a chunk at a
	 * time (the barrier keeps clang from merging the chunks back into one
	 * memset it cannot write out); smaller ones in one go, as before. */
#pragma clang loop unroll(full)
	for (off = 0; off + JALKI_ZERO_CHUNK <= size; off += JALKI_ZERO_CHUNK) {
		__builtin_memset((__u64 *)((char *)rec + off), 0, JALKI_ZERO_CHUNK);
		asm volatile("" ::: "memory");
	}
	__builtin_memset((__u64 *)((char *)rec + (size & ~(__u64)(JALKI_ZERO_CHUNK - 1))), 0,
			 size & (JALKI_ZERO_CHUNK - 1));
	return rec;
}

/* Reserve `size` bytes in this object's `events` ring buffer. */
#define jalki_reserve(size) jalki_ringbuf_reserve(&events, (size))

/* ------------------------------------------------------------------ */
/* Owners and event headers                                            */
/* ------------------------------------------------------------------ */

/* Fill *owner from the current task. Call only in task context. */
static __always_inline void jalki_owner_current(struct jalki_owner *owner)
{
	owner->cgroup_id = bpf_get_current_cgroup_id();
	owner->tgid = bpf_get_current_pid_tgid() >> 32;
	owner->_pad = 0;
	bpf_get_current_comm(owner->comm, sizeof(owner->comm));
	owner->start_ns = bpf_ktime_get_ns();
}

/* Header owned by `owner`, or by nobody (pid 0, flag clear) when NULL. */
static __always_inline void jalki_fill_header_from_owner(struct jalki_event_header *hdr,
							 const struct jalki_owner *owner)
{
	hdr->ts_ns = bpf_ktime_get_ns();
	if (owner) {
		hdr->cgroup_id = owner->cgroup_id;
		hdr->pid = owner->tgid;
		hdr->flags = JALKI_HDR_OWNER_KNOWN;
		__builtin_memcpy(hdr->comm, owner->comm, sizeof(hdr->comm));
	} else {
		hdr->cgroup_id = 0;
		hdr->pid = 0;
		hdr->flags = 0;
		__builtin_memset(hdr->comm, 0, sizeof(hdr->comm));
	}
}

/* Header owned by the current task. Call only in task context. */
static __always_inline void jalki_fill_header_current(struct jalki_event_header *hdr)
{
	hdr->ts_ns = bpf_ktime_get_ns();
	hdr->cgroup_id = bpf_get_current_cgroup_id();
	hdr->pid = bpf_get_current_pid_tgid() >> 32;
	hdr->flags = JALKI_HDR_OWNER_KNOWN;
	bpf_get_current_comm(hdr->comm, sizeof(hdr->comm));
}

#endif /* JALKI_COMMON_BPF_H */
