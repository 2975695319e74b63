/* SPDX-License-Identifier: Apache-2.0 */
/* Fixed records to NDJSON event lines, driven by a compiled list of operations
 * (jalki_core/recordjson.py builds them from a probe's RecordLayout). */
#ifndef JALKI_RECORDJSON_H
#define JALKI_RECORDJSON_H

#include <stddef.h>
#include <stdint.h>

/* What one operation writes. Each writes `text` first (a member's `,"key":`, commas decided by the
 * compiler, which knows the structure), then its value. */
enum jalki_json_op_kind {
    JALKI_JSON_LIT = 1,      /* only text: constant members, '{', '}' */
    JALKI_JSON_ID = 2,       /* text, then the counter, then '"' (text ends with the id prefix) */
    JALKI_JSON_TIME = 3,     /* RFC 3339 UTC "YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ" of the u64 at offset + clock offset */
    JALKI_JSON_UINT = 4,     /* unsigned integer of `size` bytes at offset */
    JALKI_JSON_INT = 5,      /* signed integer of `size` bytes at offset */
    JALKI_JSON_UINT_UNLESS = 6, /* unsigned at offset, null when (u32 at aux) & mask */
    JALKI_JSON_IP = 7,       /* inet_ntop text of the 16 bytes at offset, family: u16 at aux */
    JALKI_JSON_ENDPOINTS = 8, /* ["src:sport->dst:dport"], tuple saddr[16] daddr[16] sport dport family at offset */
    JALKI_JSON_ENUM = 9,     /* table[value] (pre-encoded JSON), else "<fallback><value>"; with mask 1,
                              * else the fallback as it is (a JSON value) */
    JALKI_JSON_OWNER = 10,   /* {"pid","command","cgroup_id"} of the record's header, or all null */
    JALKI_JSON_FLAG_LIT = 11, /* text only when (u32 at aux) & mask */
    JALKI_JSON_CHOICE = 12,  /* text, then: value 0: the fallback; table[value]; else the record is left
                              * to Python (the value's text is Python's to make) */
};

struct jalki_json_op {
    uint32_t kind;
    uint32_t offset;
    uint32_t size;
    uint32_t aux;
    uint64_t mask;
    const char *text;
    uint32_t text_len;
    uint32_t table_len;
    const char *const *table;
    const uint32_t *table_lens;
    const char *fallback;
    uint32_t fallback_len;
};

/* The per-probe state carried between calls: the id counter and the cached second. */
struct jalki_json_state {
    int64_t clock_offset_ns;
    uint64_t next_id;
    int64_t second_ns;
    char second_prefix[24];
};

/* Upper bound of the bytes one record's line takes (newline included). */
size_t jalki_json_line_bound(const struct jalki_json_op *ops, size_t n_ops);

/* Encode records [start, count) of `record_size` bytes at `records` as NDJSON into out[0..cap).
 * Stops before a record it cannot encode exactly (a command that is not plain ASCII: its text is
 * decoded by Python's rules) or that would not fit. Returns the records encoded; *written gets the bytes. */
size_t jalki_json_encode(const struct jalki_json_op *ops, size_t n_ops, struct jalki_json_state *state,
                         const uint8_t *records, size_t record_size, size_t start, size_t count,
                         char *out, size_t cap, size_t *written);

#endif
