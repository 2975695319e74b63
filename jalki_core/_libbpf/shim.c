/* SPDX-License-Identifier: Apache-2.0 */
/* C side of jalki's libbpf binding; compiled by cffi (see build_ffi.py). */
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>
#include <linux/bpf.h>
#include <linux/perf_event.h>

#include "shim.h"

/* Defined by cffi from the cdef's extern "Python" declaration. */
static void jalki_py_print(int level, const char *msg);

static int jalki_vprint(enum libbpf_print_level level, const char *fmt, va_list ap)
{
    char small[1024];
    va_list again;
    int n;

    va_copy(again, ap);
    n = vsnprintf(small, sizeof(small), fmt, ap);
    if (n < 0) {
        va_end(again);
        return 0;
    }
    if ((size_t)n < sizeof(small)) {
        jalki_py_print((int)level, small);
    } else {
        /* Verifier logs arrive as one message and can be megabytes long. */
        char *big = malloc((size_t)n + 1);
        if (big) {
            vsnprintf(big, (size_t)n + 1, fmt, again);
            jalki_py_print((int)level, big);
            free(big);
        } else {
            jalki_py_print((int)level, small);
        }
    }
    va_end(again);
    return n;
}

void jalki_install_print(void)
{
    libbpf_set_print(jalki_vprint);
}

struct bpf_object *jalki_open_mem(const void *buf, size_t size, const char *name)
{
    LIBBPF_OPTS(bpf_object_open_opts, opts, .object_name = name);
    return bpf_object__open_mem(buf, size, &opts);
}

/* The object's BTF and its type `name` of `kind`: 0, or -ENODATA (no BTF) / -ENOENT. */
static int find_btf_type(struct bpf_object *obj, const char *name, uint32_t kind, struct btf **btf,
                         const struct btf_type **type)
{
    int id;

    *btf = bpf_object__btf(obj);
    if (!*btf)
        return -ENODATA;
    id = btf__find_by_name_kind(*btf, name, kind);
    if (id < 0)
        return -ENOENT;
    *type = btf__type_by_id(*btf, (uint32_t)id);
    return *type ? 0 : -ENOENT;
}

int jalki_datasec_locate(struct bpf_object *obj, const char *sec, const char *var,
                         uint32_t *off, uint32_t *size)
{
    const struct btf_var_secinfo *vsi;
    const struct btf_type *t, *vt;
    struct btf *btf;
    const char *name;
    int err, i, n;

    err = find_btf_type(obj, sec, BTF_KIND_DATASEC, &btf, &t);
    if (err)
        return err;
    vsi = btf_var_secinfos(t);
    n = btf_vlen(t);
    for (i = 0; i < n; i++, vsi++) {
        vt = btf__type_by_id(btf, vsi->type);
        if (!vt)
            continue;
        name = btf__name_by_offset(btf, vt->name_off);
        if (name && strcmp(name, var) == 0) {
            *off = vsi->offset;
            *size = vsi->size;
            return 0;
        }
    }
    return -ENOENT;
}

long jalki_btf_struct_size(struct bpf_object *obj, const char *name)
{
    const struct btf_type *t;
    struct btf *btf;
    int err = find_btf_type(obj, name, BTF_KIND_STRUCT, &btf, &t);

    return err ? err : (long)t->size;
}

static int prog_info(int prog_fd, struct bpf_prog_info *info)
{
    __u32 len = sizeof(*info);

    memset(info, 0, sizeof(*info));
    return bpf_obj_get_info_by_fd(prog_fd, info, &len);
}

int jalki_prog_stats(int prog_fd, uint64_t *run_time_ns, uint64_t *run_cnt)
{
    struct bpf_prog_info info;
    int err = prog_info(prog_fd, &info);

    if (err < 0)
        return err;
    *run_time_ns = info.run_time_ns;
    *run_cnt = info.run_cnt;
    return 0;
}

int jalki_prog_recursion_misses(int prog_fd, uint64_t *recursion_misses)
{
    struct bpf_prog_info info;
    int err = prog_info(prog_fd, &info);

    if (err < 0)
        return err;
    *recursion_misses = info.recursion_misses;
    return 0;
}

/*
 * Copy one record into the batch. libbpf advances the consumer position past
 * a record *before* returning a negative callback result to its caller
 * (ringbuf_process_ring stores consumer_pos, then returns err), so stopping
 * right after a successful copy never loses a record: the next poll/consume
 * starts at the following one.
 */
/* jalki_rb_sample for several record kinds: sort by the kind field, keep arrival order in runs[]. */
static int jalki_rb_sample_kinds(struct jalki_rb_ctx *c, void *data, size_t size)
{
    uint32_t kind, i;

    if (size < (size_t)c->kind_offset + sizeof(kind)) {
        c->mismatches++;
        return 0;
    }
    memcpy(&kind, (const char *)data + c->kind_offset, sizeof(kind));
    for (i = 0; i < c->nkinds && c->kind_values[i] != kind; i++)
        ;
    if (i == c->nkinds) {
        c->unknown_kinds++;
        return 0;
    }
    if (size != c->kind_sizes[i]) {
        c->mismatches++;
        return 0;
    }
    if (c->cap - c->len < size || c->nruns == c->runs_cap) {
        /* Unreachable while the reader resets the batch before each call. */
        c->lost++;
        c->full = 1;
        return -ENOBUFS;
    }
    memcpy(c->buf + c->len, data, size);
    c->len += size;
    c->records++;
    if (c->nruns > 0 && c->runs[2 * (c->nruns - 1)] == i) {
        c->runs[2 * (c->nruns - 1) + 1] += (uint32_t)size;
    } else {
        c->runs[2 * c->nruns] = i;
        c->runs[2 * c->nruns + 1] = (uint32_t)size;
        c->nruns++;
    }
    /* record_size is the largest kind: stop while any record still fits */
    if (c->cap - c->len < c->record_size || c->nruns == c->runs_cap) {
        c->full = 1;
        return -ENOBUFS;
    }
    return 0;
}

static int jalki_rb_sample(void *ctx, void *data, size_t size)
{
    struct jalki_rb_ctx *c = ctx;

    if (c->nkinds)
        return jalki_rb_sample_kinds(c, data, size);
    if (size != c->record_size) {
        c->mismatches++;
        return 0;
    }
    if (c->cap - c->len < size) {
        /* Unreachable while the reader resets the batch before each call;
         * count it rather than write past the buffer. */
        c->lost++;
        c->full = 1;
        return -ENOBUFS;
    }
    memcpy(c->buf + c->len, data, size);
    c->len += size;
    c->records++;
    if (c->cap - c->len < c->record_size) {
        c->full = 1;
        return -ENOBUFS;
    }
    return 0;
}

struct ring_buffer *jalki_rb_new(int map_fd, struct jalki_rb_ctx *ctx)
{
    if (map_fd < 0 || !ctx || !ctx->buf || ctx->record_size == 0 || ctx->cap < ctx->record_size ||
        ctx->nkinds > 16 || (ctx->nkinds && (!ctx->runs || ctx->runs_cap == 0))) {
        errno = EINVAL;
        return NULL;
    }
    return ring_buffer__new(map_fd, jalki_rb_sample, ctx, NULL);
}

/*
 * libbpf 1.1 keeps its ring positions private (ring__avail_data_size came in
 * 1.3), so the fill of a ring is read from the map's own pages: the kernel's
 * struct bpf_ringbuf puts consumer_pos at the start of the first page and
 * producer_pos at the start of the second. A read-only mapping of those two
 * pages is allowed (only the consumer page may be mapped writable), and the
 * kernel never lets producer_pos run more than the ring size ahead of
 * consumer_pos.
 */
int jalki_rb_pages_map(int map_fd, struct jalki_rb_pages *pages)
{
    long page = sysconf(_SC_PAGESIZE);
    void *base;

    if (map_fd < 0 || !pages || page <= 0)
        return -EINVAL;
    base = mmap(NULL, 2 * (size_t)page, PROT_READ, MAP_SHARED, map_fd, 0);
    if (base == MAP_FAILED)
        return -errno;
    pages->base = base;
    pages->len = 2 * (size_t)page;
    return 0;
}

uint64_t jalki_rb_pages_backlog(const struct jalki_rb_pages *pages)
{
    const unsigned long *consumer, *producer;
    unsigned long cons, prod;

    if (!pages || !pages->base)
        return 0;
    consumer = (const unsigned long *)pages->base;
    producer = (const unsigned long *)((const char *)pages->base + pages->len / 2);
    /* producer first: the consumer may only move up to it, so the difference is never negative */
    prod = __atomic_load_n(producer, __ATOMIC_ACQUIRE);
    cons = __atomic_load_n(consumer, __ATOMIC_ACQUIRE);
    return prod > cons ? (uint64_t)(prod - cons) : 0;
}

void jalki_rb_pages_unmap(struct jalki_rb_pages *pages)
{
    if (pages && pages->base) {
        munmap(pages->base, pages->len);
        pages->base = NULL;
        pages->len = 0;
    }
}

int jalki_perf_event_open(uint32_t type, uint64_t config, int pid, int cpu)
{
#ifdef __NR_perf_event_open
    struct perf_event_attr attr;
    long fd;

    /* Every byte zero but type, size and config: the kernel refuses unknown non-zero bits. */
    memset(&attr, 0, sizeof(attr));
    attr.type = type;
    attr.size = sizeof(attr);
    attr.config = config;
    fd = syscall(__NR_perf_event_open, &attr, pid, cpu, -1, PERF_FLAG_FD_CLOEXEC);
    return fd < 0 ? -errno : (int)fd;
#else
    (void)type; (void)config; (void)pid; (void)cpu;
    return -ENOSYS;
#endif
}
