// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * block_io: block I/O latency from issue to completion, per device and
 * operation, as an in-kernel log2 histogram (every request) plus one record
 * per request that took at least storage_warning_ns or completed with an
 * error.
 *
 * block_rq_issue records the request (time, device, sector, size, op and the
 * issuing task) in an LRU hash; block_rq_complete looks it up, deletes it,
 * updates the histogram and, above the threshold or on error, emits a
 * record. A completion whose issue was not seen (in flight when the probe
 * attached, or evicted from the LRU) is not guessed: it is counted in
 * jalki_drops as the probe's own cause issue_unseen, and nothing else.
 *
 * Completions without an issue by design are not drops and are ignored. The
 * flush machinery (block/blk-flush.c) never issues a write that carries
 * REQ_PREFLUSH (or REQ_FUA the device lacks) as itself: it issues a separate
 * flush request (rwbs "FF", REQ_OP_FLUSH; traced at issue and completion and
 * counted like any request) and, for the data part, the write with those
 * flags cleared. When the sequence is done it ends the original write once
 * more with zero bytes left (blk_flush_complete_seq -> REQ_FSEQ_DONE ->
 * blk_mq_end_request): block_rq_complete "WS 0 + 0" after every fsync of a
 * block device, "WSM <sector> + 0" after a journal commit. That zero-byte
 * write completion ends a request whose parts were already counted (or an
 * empty flush that was never issued): both rungs ignore it before any lookup
 * (on the classic tracepoint it must not take the entry of a write in flight
 * at the same sector). A write whose preflush failed is ended with its full
 * size and its data never issued: that one is counted as issue_unseen (the
 * error itself is reported on the flush request).
 *
 * The flush request has no position ((sector_t)-1): block_rq_issue reports
 * it as 0, block_rq_complete as -1; both rungs record 0, so the classic
 * tracepoint's key (dev, 0, flush) matches. A device with several hardware
 * queues can have several flush requests in flight under that one key: on
 * the classic tracepoint the later issue replaces the earlier one, and one
 * of their completions is counted as issue_unseen (tp_btf keys by request).
 *
 * Partial completions (nr_bytes smaller than the request, tp_btf only) leave
 * the request in flight; on the classic tracepoint the first completion ends
 * it.
 *
 * The histogram is device-wide: it counts every request, whoever issued it.
 * The self filter, the tgid filter and sampling select only which slow or
 * failed requests are reported one by one (the issuing task is recorded at
 * issue). The port filter does not apply.
 *
 * Rungs: tp_btf:     tpbtf_rq_issue + tpbtf_rq_complete (key: request pointer);
 *        tracepoint: tp_rq_issue + tp_rq_complete (key: dev + sector + op).
 * The completion program is attached and detached before the issue program
 * (probes.py lists it first): a classic-tracepoint link takes ~80 ms to
 * detach, and a completion program left running without its issue program
 * would count every completion in that gap as issue_unseen.
 */
#include "block_io.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

JALKI_BTF_EXPORT(block_io_event);

/* Thresholds, set before load (the warning threshold decides what is emitted;
 * severity is decided in user space from both). */
const volatile __u64 storage_warning_ns = 50000000;
const volatile __u64 storage_critical_ns = 200000000;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, JALKI_RINGBUF_DEFAULT_BYTES);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, JALKI_STORAGE_INFLIGHT_ENTRIES);
	__type(key, struct block_io_key);
	__type(value, struct block_io_start);
} storage_inflight SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, JALKI_STORAGE_HIST_ENTRIES);
	__type(key, struct block_io_hist_key);
	__type(value, struct block_io_hist);
} storage_hist SEC(".maps");

/* CO-RE flavors: build against the minimal vmlinux.h as well as a full one. */
struct gendisk___jalki {
	int major;
	int first_minor;
} __attribute__((preserve_access_index));

struct request_queue___jalki {
	struct gendisk___jalki *disk;
} __attribute__((preserve_access_index));

struct request___jalki {
	struct request_queue___jalki *q;
	unsigned int cmd_flags;
	unsigned int __data_len;
	__u64 __sector;
} __attribute__((preserve_access_index));

/* block:block_rq_issue (class block_rq) */
struct trace_event_raw_block_rq___jalki {
	__u32 dev;
	__u64 sector;
	unsigned int nr_sector;
	unsigned int bytes;
	char rwbs[10];
} __attribute__((preserve_access_index));

/* block:block_rq_complete (class block_rq_completion) */
struct trace_event_raw_block_rq_completion___jalki {
	__u32 dev;
	__u64 sector;
	unsigned int nr_sector;
	int error;
	char rwbs[10];
} __attribute__((preserve_access_index));

/* The operation from a tracepoint's rwbs ("W", "FWS", "R", "FF", "DE", ...):
 * a leading F before another operation letter is REQ_PREFLUSH. */
static __always_inline __u32 op_from_rwbs(char c0, char c1, char c2)
{
	char op = c0, next = c1;

	if (c0 == 'F' && (c1 == 'W' || c1 == 'R' || c1 == 'D' || c1 == 'N' || c1 == 'F')) {
		op = c1;
		next = c2;
	}
	switch (op) {
	case 'R': return JALKI_STORAGE_OP_READ;
	case 'W': return JALKI_STORAGE_OP_WRITE;
	case 'F': return JALKI_STORAGE_OP_FLUSH;
	case 'D': return next == 'E' ? JALKI_STORAGE_OP_SECURE_ERASE : JALKI_STORAGE_OP_DISCARD;
	default: return JALKI_STORAGE_OP_OTHER;
	}
}

static __always_inline void record_issue(const struct block_io_key *key, __u32 dev, __u64 sector,
					 __u32 bytes, __u32 op)
{
	struct block_io_start start = {};
	__u64 pid_tgid = bpf_get_current_pid_tgid();

	start.ts_ns = bpf_ktime_get_ns();
	start.sector = jalki_storage_sector(sector);
	start.dev = dev;
	start.bytes = bytes;
	start.op = op;
	start.tgid = pid_tgid >> 32;
	if (start.tgid) {
		start.cgroup_id = bpf_get_current_cgroup_id();
		bpf_get_current_comm(start.comm, sizeof(start.comm));
	}
	if (bpf_map_update_elem(&storage_inflight, key, &start, BPF_ANY))
		jalki_count_drop(JALKI_DROP_TRACKING_FULL);
}

static __always_inline void add_to_histogram(__u32 dev, __u32 op, __u64 latency_ns)
{
	struct block_io_hist_key key = { .dev = dev, .op = op };
	struct block_io_hist *hist = bpf_map_lookup_elem(&storage_hist, &key);
	__u32 slot;

	if (!hist) {
		struct block_io_hist zero = {};

		if (bpf_map_update_elem(&storage_hist, &key, &zero, BPF_NOEXIST) &&
		    !bpf_map_lookup_elem(&storage_hist, &key)) {
			jalki_count_drop(JALKI_DROP_TRACKING_FULL);
			return;
		}
		hist = bpf_map_lookup_elem(&storage_hist, &key);
		if (!hist)
			return;
	}
	slot = jalki_storage_slot(latency_ns);
	if (slot >= JALKI_STORAGE_HIST_SLOTS)
		slot = JALKI_STORAGE_HIST_SLOTS - 1;
	__sync_fetch_and_add(&hist->slots[slot], 1);
	__sync_fetch_and_add(&hist->count, 1);
	__sync_fetch_and_add(&hist->total_ns, latency_ns);
}

static __always_inline int handle_complete(const struct block_io_key *key, int error)
{
	struct block_io_start *start = bpf_map_lookup_elem(&storage_inflight, key);
	struct block_io_start seen;
	struct block_io_event *ev;
	__u64 latency_ns;

	if (!start) {
		jalki_count_drop(JALKI_DROP_PROBE_BASE + JALKI_STORAGE_DROP_ISSUE_UNSEEN);
		return 0;
	}
	__builtin_memcpy(&seen, start, sizeof(seen));
	bpf_map_delete_elem(&storage_inflight, key);
	latency_ns = bpf_ktime_get_ns() - seen.ts_ns;
	add_to_histogram(seen.dev, seen.op, latency_ns);

	if (error == 0 && latency_ns < storage_warning_ns)
		return 0;
	if (seen.tgid && jalki_is_self(seen.tgid))
		return 0;
	if (!jalki_pass_tgid_filter(seen.tgid))
		return 0;
	if (jalki_sampled_out())
		return 0;
	ev = jalki_reserve(sizeof(*ev));
	if (!ev)
		return 0;
	ev->hdr.ts_ns = bpf_ktime_get_ns();
	ev->hdr.cgroup_id = seen.cgroup_id;
	ev->hdr.pid = seen.tgid;
	ev->hdr.flags = seen.tgid ? JALKI_HDR_OWNER_KNOWN : 0;
	__builtin_memcpy(ev->hdr.comm, seen.comm, sizeof(ev->hdr.comm));
	ev->latency_ns = latency_ns;
	ev->sector = seen.sector;
	ev->dev = seen.dev;
	ev->bytes = seen.bytes;
	ev->op = seen.op;
	ev->error = error;
	bpf_ringbuf_submit(ev, 0);
	return 0;
}

/* ---- rung "tp_btf" ---- */

static __always_inline __u32 rq_dev(const struct request___jalki *rq)
{
	const struct gendisk___jalki *disk = rq->q->disk;

	if (!disk)
		return 0;
	return ((__u32)disk->major << 20) | (__u32)disk->first_minor;
}

SEC("tp_btf/block_rq_issue")
int BPF_PROG(tpbtf_rq_issue, struct request___jalki *rq)
{
	struct block_io_key key = { .id = (__u64)(unsigned long)rq };

	record_issue(&key, rq_dev(rq), rq->__sector, rq->__data_len,
		     rq->cmd_flags & JALKI_STORAGE_REQ_OP_MASK);
	return 0;
}

SEC("tp_btf/block_rq_complete")
int BPF_PROG(tpbtf_rq_complete, struct request___jalki *rq, __u8 status, unsigned int nr_bytes)
{
	struct block_io_key key = { .id = (__u64)(unsigned long)rq };

	/* more of this request is still to complete */
	if (status == 0 && nr_bytes < rq->__data_len)
		return 0;
	/* the end of a flush sequence: never issued by design */
	if (jalki_storage_flush_seq_end(rq->cmd_flags & JALKI_STORAGE_REQ_OP_MASK, rq->__data_len))
		return 0;
	return handle_complete(&key, jalki_blk_status_errno(status));
}

/* ---- rung "tracepoint" ---- */

SEC("tracepoint/block/block_rq_issue")
int tp_rq_issue(struct trace_event_raw_block_rq___jalki *ctx)
{
	__u32 op = op_from_rwbs(ctx->rwbs[0], ctx->rwbs[1], ctx->rwbs[2]);
	struct block_io_key key = { .id = ctx->sector, .dev = ctx->dev, .op = op };

	record_issue(&key, ctx->dev, ctx->sector, ctx->bytes, op);
	return 0;
}

SEC("tracepoint/block/block_rq_complete")
int tp_rq_complete(struct trace_event_raw_block_rq_completion___jalki *ctx)
{
	__u32 op = op_from_rwbs(ctx->rwbs[0], ctx->rwbs[1], ctx->rwbs[2]);
	/* the issue side reports a flush's position -1 as 0 (blk_rq_trace_sector) */
	struct block_io_key key = { .id = jalki_storage_sector(ctx->sector), .dev = ctx->dev, .op = op };
	int error = ctx->error;

	/* the end of a flush sequence: never issued by design, not looked up
	 * (it must not take the entry of a write in flight at that sector) */
	if (jalki_storage_flush_seq_end(op, ctx->nr_sector))
		return 0;
	return handle_complete(&key, error < 0 ? -error : error);
}
