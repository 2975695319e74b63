/* SPDX-License-Identifier: Apache-2.0 */
/*
 * C helpers for jalki's libbpf binding.
 *
 * This header is read twice: by the C compiler (included from shim.c) and by
 * cffi's cdef parser (build_ffi.py). Keep it free of #include and macros other
 * than the guard, and use only types from <stdint.h>/<stddef.h>.
 */
#ifndef JALKI_SHIM_H
#define JALKI_SHIM_H

/* Batch state shared between RingBufferReader (Python) and the sample callback (C). */
struct jalki_rb_ctx {
    char *buf;              /* batch buffer owned by the Python reader */
    size_t cap;             /* its size in bytes, a multiple of record_size */
    size_t len;             /* bytes filled so far */
    size_t record_size;     /* every accepted record has exactly this size */
    uint64_t records;       /* records copied, ever */
    uint64_t mismatches;    /* records skipped because their size differed */
    uint64_t lost;          /* records dropped for want of batch space (never, if used right) */
    int full;               /* set when fewer than record_size bytes remain */
    /*
     * Several record kinds (nkinds > 0; record_size is then the largest): every
     * record carries a host-order uint32 kind at kind_offset, and is accepted
     * only with its kind's size. Records are still copied back to back in
     * arrival order; runs[] says which bytes are which kind: pairs
     * (kind index, bytes), a new pair whenever the kind changes.
     */
    uint32_t nkinds;        /* 0: one record size, no runs */
    uint32_t kind_offset;
    uint32_t kind_values[16];
    uint32_t kind_sizes[16];
    uint32_t *runs;         /* 2 * runs_cap entries owned by the Python reader */
    size_t runs_cap;        /* pairs; at least one per record the batch can hold */
    size_t nruns;           /* pairs filled so far */
    uint64_t unknown_kinds; /* records skipped because their kind was not declared */
};

struct bpf_object;
struct ring_buffer;

/* The positions pages of a ring buffer map (consumer page, producer page), mapped read-only. */
struct jalki_rb_pages {
    void *base;             /* NULL while not mapped */
    size_t len;             /* two pages */
};

/* Route libbpf's printing into Python (jalki_py_print). */
void jalki_install_print(void);

/* bpf_object__open_mem with an object name. NULL + errno on failure. */
struct bpf_object *jalki_open_mem(const void *buf, size_t size, const char *name);

/* Offset and size of variable `var` in DATASEC `sec` of the object's BTF. 0 or -errno. */
int jalki_datasec_locate(struct bpf_object *obj, const char *sec, const char *var,
                         uint32_t *off, uint32_t *size);

/* Size of BTF struct `name` in the object's BTF; -ENOENT when absent. */
long jalki_btf_struct_size(struct bpf_object *obj, const char *name);

/* run_time_ns and run_cnt of a loaded program. 0 or -errno. */
int jalki_prog_stats(int prog_fd, uint64_t *run_time_ns, uint64_t *run_cnt);

/* recursion_misses of a loaded program: runs the kernel skipped because the
 * program (tp_btf, raw_tp) or another tracing program (classic tracepoint) was
 * already running on that CPU. Counted always, stats enabled or not. 0 or -errno. */
int jalki_prog_recursion_misses(int prog_fd, uint64_t *recursion_misses);

/* ring_buffer__new with the batching sample callback. NULL + errno on failure. */
struct ring_buffer *jalki_rb_new(int map_fd, struct jalki_rb_ctx *ctx);

/* Map the consumer and producer position pages of ring buffer map `map_fd` read-only. 0 or -errno. */
int jalki_rb_pages_map(int map_fd, struct jalki_rb_pages *pages);

/* Bytes the producer has reserved that the consumer has not released yet (headers included). */
uint64_t jalki_rb_pages_backlog(const struct jalki_rb_pages *pages);

/* Unmap what jalki_rb_pages_map mapped (idempotent). */
void jalki_rb_pages_unmap(struct jalki_rb_pages *pages);

/*
 * perf_event_open(2): a counting event of `type` and `config` (enabled, not
 * inherited, user and kernel mode) for task `pid` (-1: every task) on `cpu`
 * (-1: any), close-on-exec. The file descriptor, or -errno (-ENOSYS where
 * the C library's headers have no system call number for it).
 */
int jalki_perf_event_open(uint32_t type, uint64_t config, int pid, int cpu);

#endif /* JALKI_SHIM_H */
