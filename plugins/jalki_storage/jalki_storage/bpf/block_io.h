/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Record layouts and maps of the jalki-storage block_io probe: the one
 * definition. The Python mirrors in jalki_storage/layouts.py are checked
 * against these sizes (and the object's BTF) when the probe loads.
 */
#ifndef JALKI_STORAGE_BLOCK_IO_H
#define JALKI_STORAGE_BLOCK_IO_H

#include "jalki/common.bpf.h"

/* Operation numbers: the kernel's enum req_op (include/linux/blk_types.h);
 * JALKI_STORAGE_OP_OTHER where the classic tracepoint's rwbs cannot tell. */
#define JALKI_STORAGE_OP_READ 0
#define JALKI_STORAGE_OP_WRITE 1
#define JALKI_STORAGE_OP_FLUSH 2
#define JALKI_STORAGE_OP_DISCARD 3
#define JALKI_STORAGE_OP_SECURE_ERASE 5
#define JALKI_STORAGE_OP_ZONE_APPEND 7
#define JALKI_STORAGE_OP_OTHER 255
#define JALKI_STORAGE_REQ_OP_MASK 0xffu

/* Histogram: slot i counts latencies in [2^i, 2^(i+1)) microseconds (slot 0
 * also 0 us); the last slot collects everything longer. */
#define JALKI_STORAGE_HIST_SLOTS 32

#ifndef JALKI_STORAGE_INFLIGHT_ENTRIES
#define JALKI_STORAGE_INFLIGHT_ENTRIES 16384
#endif
#define JALKI_STORAGE_HIST_ENTRIES 1024

/* Probe-specific drop causes (Probe.extra_drop_causes, in this order),
 * counted with jalki_count_drop(JALKI_DROP_PROBE_BASE + cause). */
enum jalki_storage_drop_cause {
	JALKI_STORAGE_DROP_ISSUE_UNSEEN = 0, /* completion whose issue jalki did not see */
};

/* One completed request: emitted only when latency_ns >= the warning
 * threshold or error != 0. hdr names the task that issued the request to the
 * driver (JALKI_HDR_OWNER_KNOWN clear when that was interrupt context). */
struct block_io_event {
	struct jalki_event_header hdr;
	__u64 latency_ns; /* block_rq_issue -> block_rq_complete */
	__u64 sector;     /* first sector (512-byte units) at issue */
	__u32 dev;        /* the disk's dev_t, kernel encoding: major << 20 | minor */
	__u32 bytes;      /* request size at issue */
	__u32 op;         /* JALKI_STORAGE_OP_* / enum req_op */
	__s32 error;      /* 0, or a positive errno (EIO, ENOSPC, ...) */
};
_Static_assert(sizeof(struct block_io_event) == 72, "block_io_event layout");

/* Histogram map key and value (device + operation). */
struct block_io_hist_key {
	__u32 dev;
	__u32 op;
};
_Static_assert(sizeof(struct block_io_hist_key) == 8, "block_io_hist_key layout");

struct block_io_hist {
	__u64 slots[JALKI_STORAGE_HIST_SLOTS];
	__u64 count;
	__u64 total_ns;
};
_Static_assert(sizeof(struct block_io_hist) == 272, "block_io_hist layout");

/* In-flight request: tp_btf keys by the request pointer (dev 0, op 0); the
 * classic tracepoint by dev + sector + op. */
struct block_io_key {
	__u64 id;
	__u32 dev;
	__u32 op;
};

struct block_io_start {
	__u64 ts_ns;
	__u64 sector;
	__u64 cgroup_id;
	__u32 tgid; /* 0: issued from interrupt context */
	__u32 bytes;
	__u32 dev;
	__u32 op;
	char comm[16];
};

/* blk_status_t (include/linux/blk_types.h) -> errno, as blk_status_to_errno()
 * does: the classic tracepoint records the errno, tp_btf sees the status. */
static __always_inline int jalki_blk_status_errno(__u8 status)
{
	switch (status) {
	case 0: return 0;
	case 1: return 95;   /* BLK_STS_NOTSUPP -> EOPNOTSUPP */
	case 2: return 110;  /* BLK_STS_TIMEOUT -> ETIMEDOUT */
	case 3: return 28;   /* BLK_STS_NOSPC -> ENOSPC */
	case 4: return 67;   /* BLK_STS_TRANSPORT -> ENOLINK */
	case 5: return 121;  /* BLK_STS_TARGET -> EREMOTEIO */
	case 6: return 52;   /* BLK_STS_RESV_CONFLICT -> EBADE */
	case 7: return 61;   /* BLK_STS_MEDIUM -> ENODATA */
	case 8: return 84;   /* BLK_STS_PROTECTION -> EILSEQ */
	case 9: return 12;   /* BLK_STS_RESOURCE -> ENOMEM */
	case 10: return 5;   /* BLK_STS_IOERR -> EIO */
	case 11: return 78;  /* BLK_STS_DM_REQUEUE -> EREMCHG */
	case 12: return 11;  /* BLK_STS_AGAIN -> EAGAIN */
	case 13: return 16;  /* BLK_STS_DEV_RESOURCE -> EBUSY */
	case 14: return 109; /* BLK_STS_ZONE_OPEN_RESOURCE -> ETOOMANYREFS */
	case 15: return 75;  /* BLK_STS_ZONE_ACTIVE_RESOURCE -> EOVERFLOW */
	case 16: return 19;  /* BLK_STS_OFFLINE -> ENODEV */
	case 17: return 62;  /* BLK_STS_DURATION_LIMIT -> ETIME */
	case 19: return 22;  /* BLK_STS_INVAL -> EINVAL */
	default: return 5;   /* unknown status: EIO, as the kernel's table does */
	}
}

/* A request's first sector as block_rq_issue reports it: 0 for requests
 * without a position (the flush request's __sector is (sector_t)-1). */
static __always_inline __u64 jalki_storage_sector(__u64 sector)
{
	return sector == (__u64)-1 ? 0 : sector;
}

/* The completion that ends a flush sequence (block/blk-flush.c, REQ_FSEQ_DONE):
 * a write (or zone append) with no bytes. Such a request is never issued as
 * itself: its flushes are issued as separate REQ_OP_FLUSH requests and its data
 * part, if any, was issued and completed before. Not a drop. */
static __always_inline bool jalki_storage_flush_seq_end(__u32 op, __u32 size)
{
	return size == 0 && (op == JALKI_STORAGE_OP_WRITE || op == JALKI_STORAGE_OP_ZONE_APPEND);
}

/* floor(log2(v)) for v > 0, 0 for v == 0 (branch-free, as libbpf-tools' log2). */
static __always_inline __u32 jalki_log2_u32(__u32 v)
{
	__u32 r, shift;

	r = (v > 0xFFFF) << 4;
	v >>= r;
	shift = (v > 0xFF) << 3;
	v >>= shift;
	r |= shift;
	shift = (v > 0xF) << 2;
	v >>= shift;
	r |= shift;
	shift = (v > 0x3) << 1;
	v >>= shift;
	r |= shift;
	r |= (v >> 1);
	return r;
}

/* Histogram slot of a latency: log2 of microseconds, capped to the last slot. */
static __always_inline __u32 jalki_storage_slot(__u64 latency_ns)
{
	__u64 us = latency_ns / 1000;
	__u32 hi = us >> 32;
	__u32 slot = hi ? jalki_log2_u32(hi) + 32 : jalki_log2_u32((__u32)us);

	return slot < JALKI_STORAGE_HIST_SLOTS ? slot : JALKI_STORAGE_HIST_SLOTS - 1;
}

#endif /* JALKI_STORAGE_BLOCK_IO_H */
