/* SPDX-License-Identifier: Apache-2.0 */
/* Fixed records to NDJSON event lines (see recordjson.h). The output is byte for byte what
 * orjson writes for the event dict the probe's Python decoder builds; tests/unit/test_recordjson.py
 * compares the two on every record kind that uses it. */
#include <arpa/inet.h>
#include <string.h>
#include <time.h>

#include "recordjson.h"

#define JALKI_NS_PER_S 1000000000LL
#define JALKI_TS_MAX (1ULL << 62)
#define JALKI_HDR_OWNER_KNOWN 1u
/* struct jalki_event_header: ts_ns, cgroup_id, pid, flags, comm[16] */
#define JALKI_HDR_CGROUP 8
#define JALKI_HDR_PID 16
#define JALKI_HDR_FLAGS 20
#define JALKI_HDR_COMM 24
#define JALKI_COMM_LEN 16

static uint64_t jalki_read_uint(const uint8_t *p, uint32_t size)
{
    uint8_t v8;
    uint16_t v16;
    uint32_t v32;
    uint64_t v64;

    switch (size) {
    case 1: memcpy(&v8, p, 1); return v8;
    case 2: memcpy(&v16, p, 2); return v16;
    case 4: memcpy(&v32, p, 4); return v32;
    default: memcpy(&v64, p, 8); return v64;
    }
}

static int64_t jalki_read_int(const uint8_t *p, uint32_t size)
{
    int8_t v8;
    int16_t v16;
    int32_t v32;
    int64_t v64;

    switch (size) {
    case 1: memcpy(&v8, p, 1); return v8;
    case 2: memcpy(&v16, p, 2); return v16;
    case 4: memcpy(&v32, p, 4); return v32;
    default: memcpy(&v64, p, 8); return v64;
    }
}

static char *jalki_put(char *out, const char *text, size_t len)
{
    memcpy(out, text, len);
    return out + len;
}

static char *jalki_put_uint(char *out, uint64_t value)
{
    char digits[20];
    int n = 0;

    do {
        digits[n++] = (char)('0' + value % 10);
        value /= 10;
    } while (value);
    while (n)
        *out++ = digits[--n];
    return out;
}

static char *jalki_put_int(char *out, int64_t value)
{
    if (value < 0) {
        *out++ = '-';
        return jalki_put_uint(out, (uint64_t)0 - (uint64_t)value);
    }
    return jalki_put_uint(out, (uint64_t)value);
}

/* The address text Python's format_ip gives: IPv4 from the first 4 bytes (dotted decimal, what
 * inet_ntop writes, without its call), anything else as IPv6 through inet_ntop. */
static char *jalki_put_ip(char *out, const uint8_t *addr, uint16_t family, int bracket_v6)
{
    char text[INET6_ADDRSTRLEN];

    if (family == AF_INET) {
        for (int i = 0; i < 4; i++) {
            if (i)
                *out++ = '.';
            out = jalki_put_uint(out, addr[i]);
        }
        return out;
    }
    if (!inet_ntop(AF_INET6, addr, text, sizeof(text)))
        text[0] = '\0';
    bracket_v6 = bracket_v6 && family == AF_INET6;
    if (bracket_v6)
        *out++ = '[';
    out = jalki_put(out, text, strlen(text));
    if (bracket_v6)
        *out++ = ']';
    return out;
}

static int jalki_comm_is_ascii(const uint8_t *comm)
{
    for (int i = 0; i < JALKI_COMM_LEN && comm[i]; i++)
        if (comm[i] >= 0x80)
            return 0;
    return 1;
}

/* A NUL-padded ASCII comm as a JSON string, escaped as orjson escapes. */
static char *jalki_put_comm(char *out, const uint8_t *comm)
{
    static const char hex[] = "0123456789abcdef";

    *out++ = '"';
    for (int i = 0; i < JALKI_COMM_LEN && comm[i]; i++) {
        uint8_t c = comm[i];
        switch (c) {
        case '"': out = jalki_put(out, "\\\"", 2); break;
        case '\\': out = jalki_put(out, "\\\\", 2); break;
        case '\b': out = jalki_put(out, "\\b", 2); break;
        case '\t': out = jalki_put(out, "\\t", 2); break;
        case '\n': out = jalki_put(out, "\\n", 2); break;
        case '\f': out = jalki_put(out, "\\f", 2); break;
        case '\r': out = jalki_put(out, "\\r", 2); break;
        default:
            if (c < 0x20) {
                out = jalki_put(out, "\\u00", 4);
                *out++ = hex[c >> 4];
                *out++ = hex[c & 15];
            } else {
                *out++ = (char)c;
            }
        }
    }
    *out++ = '"';
    return out;
}

static char *jalki_put_time(char *out, struct jalki_json_state *state, uint64_t ts_ns)
{
    int64_t realtime = (int64_t)ts_ns + state->clock_offset_ns; /* ts_ns <= 2^62, |offset| < 2^62 */
    int64_t nanos;

    /* realtime < second_ns first: the unsigned difference is then the true one (second_ns starts far back) */
    if (realtime < state->second_ns || (uint64_t)realtime - (uint64_t)state->second_ns >= JALKI_NS_PER_S) {
        int64_t seconds = realtime / JALKI_NS_PER_S;
        struct tm tm;
        time_t t;

        if (realtime % JALKI_NS_PER_S < 0)
            seconds -= 1; /* floor, as Python's divmod */
        t = (time_t)seconds;
        gmtime_r(&t, &tm);
        if (!strftime(state->second_prefix, sizeof(state->second_prefix), "%Y-%m-%dT%H:%M:%S.", &tm))
            state->second_prefix[0] = '\0';
        state->second_ns = seconds * JALKI_NS_PER_S;
    }
    nanos = realtime - state->second_ns;
    *out++ = '"';
    out = jalki_put(out, state->second_prefix, strlen(state->second_prefix));
    for (int64_t div = 100000000; div; div /= 10)
        *out++ = (char)('0' + (nanos / div) % 10);
    *out++ = 'Z';
    *out++ = '"';
    return out;
}

size_t jalki_json_line_bound(const struct jalki_json_op *ops, size_t n_ops)
{
    size_t bound = 1; /* the newline */

    for (size_t i = 0; i < n_ops; i++) {
        const struct jalki_json_op *op = &ops[i];
        size_t value = 0;

        switch (op->kind) {
        case JALKI_JSON_ID: value = 21; break;
        case JALKI_JSON_TIME: value = 48; break;
        case JALKI_JSON_UINT:
        case JALKI_JSON_INT:
        case JALKI_JSON_UINT_UNLESS: value = 21; break;
        case JALKI_JSON_IP: value = INET6_ADDRSTRLEN + 2; break;
        case JALKI_JSON_ENDPOINTS: value = 2 * (INET6_ADDRSTRLEN + 2 + 6) + 8; break;
        case JALKI_JSON_ENUM:
        case JALKI_JSON_CHOICE:
            value = op->fallback_len + 23;
            for (uint32_t k = 0; k < op->table_len; k++)
                if (op->table[k] && op->table_lens[k] > value)
                    value = op->table_lens[k];
            break;
        case JALKI_JSON_OWNER: value = 64 + 6 * JALKI_COMM_LEN; break;
        default: break;
        }
        bound += op->text_len + value;
    }
    return bound;
}

size_t jalki_json_encode(const struct jalki_json_op *ops, size_t n_ops, struct jalki_json_state *state,
                         const uint8_t *records, size_t record_size, size_t start, size_t count,
                         char *out, size_t cap, size_t *written)
{
    size_t bound = jalki_json_line_bound(ops, n_ops);
    char *p = out;
    size_t index;

    for (index = start; index < count; index++) {
        const uint8_t *rec = records + index * record_size;
        uint32_t hdr_flags = (uint32_t)jalki_read_uint(rec + JALKI_HDR_FLAGS, 4);

        if ((size_t)(p - out) + bound > cap)
            break;
        for (size_t i = 0; i < n_ops; i++) {
            const struct jalki_json_op *op = &ops[i];
            if (op->kind == JALKI_JSON_OWNER && (hdr_flags & JALKI_HDR_OWNER_KNOWN) &&
                !jalki_comm_is_ascii(rec + JALKI_HDR_COMM))
                goto done; /* Python decodes this command (utf-8 with replacement) */
            if (op->kind == JALKI_JSON_TIME && jalki_read_uint(rec + op->offset, 8) > JALKI_TS_MAX)
                goto done; /* not a kernel time (146 years of uptime): Python's big integers */
            if (op->kind == JALKI_JSON_CHOICE) {
                uint64_t value = jalki_read_uint(rec + op->offset, op->size);
                if (value && (value >= op->table_len || !op->table[value]))
                    goto done; /* a value without a prepared text: Python's */
            }
        }
        for (size_t i = 0; i < n_ops; i++) {
            const struct jalki_json_op *op = &ops[i];
            const uint8_t *at = rec + op->offset;

            if (op->kind == JALKI_JSON_FLAG_LIT) {
                if ((uint32_t)jalki_read_uint(rec + op->aux, 4) & op->mask)
                    p = jalki_put(p, op->text, op->text_len);
                continue;
            }
            p = jalki_put(p, op->text, op->text_len);
            switch (op->kind) {
            case JALKI_JSON_ID:
                p = jalki_put_uint(p, state->next_id++);
                *p++ = '"';
                break;
            case JALKI_JSON_TIME:
                p = jalki_put_time(p, state, jalki_read_uint(at, 8));
                break;
            case JALKI_JSON_UINT:
                p = jalki_put_uint(p, jalki_read_uint(at, op->size));
                break;
            case JALKI_JSON_INT:
                p = jalki_put_int(p, jalki_read_int(at, op->size));
                break;
            case JALKI_JSON_UINT_UNLESS:
                if ((uint32_t)jalki_read_uint(rec + op->aux, 4) & op->mask)
                    p = jalki_put(p, "null", 4);
                else
                    p = jalki_put_uint(p, jalki_read_uint(at, op->size));
                break;
            case JALKI_JSON_IP:
                *p++ = '"';
                p = jalki_put_ip(p, at, (uint16_t)jalki_read_uint(rec + op->aux, 2), 0);
                *p++ = '"';
                break;
            case JALKI_JSON_ENDPOINTS: {
                uint16_t sport = (uint16_t)jalki_read_uint(at + 32, 2);
                uint16_t dport = (uint16_t)jalki_read_uint(at + 34, 2);
                uint16_t family = (uint16_t)jalki_read_uint(at + 36, 2);

                p = jalki_put(p, "[\"", 2);
                p = jalki_put_ip(p, at, family, 1);
                *p++ = ':';
                p = jalki_put_uint(p, sport);
                p = jalki_put(p, "->", 2);
                p = jalki_put_ip(p, at + 16, family, 1);
                *p++ = ':';
                p = jalki_put_uint(p, dport);
                p = jalki_put(p, "\"]", 2);
                break;
            }
            case JALKI_JSON_ENUM: {
                uint64_t value = jalki_read_uint(at, op->size);
                if (value < op->table_len && op->table[value]) {
                    p = jalki_put(p, op->table[value], op->table_lens[value]);
                } else if (op->mask & 1) {
                    p = jalki_put(p, op->fallback, op->fallback_len);
                } else {
                    *p++ = '"';
                    p = jalki_put(p, op->fallback, op->fallback_len);
                    p = jalki_put_uint(p, value);
                    *p++ = '"';
                }
                break;
            }
            case JALKI_JSON_CHOICE: {
                uint64_t value = jalki_read_uint(at, op->size);
                if (value)
                    p = jalki_put(p, op->table[value], op->table_lens[value]);
                else
                    p = jalki_put(p, op->fallback, op->fallback_len);
                break;
            }
            case JALKI_JSON_OWNER:
                if (hdr_flags & JALKI_HDR_OWNER_KNOWN) {
                    p = jalki_put(p, "{\"pid\":", 7);
                    p = jalki_put_uint(p, jalki_read_uint(rec + JALKI_HDR_PID, 4));
                    p = jalki_put(p, ",\"command\":", 11);
                    p = jalki_put_comm(p, rec + JALKI_HDR_COMM);
                    p = jalki_put(p, ",\"cgroup_id\":", 13);
                    p = jalki_put_uint(p, jalki_read_uint(rec + JALKI_HDR_CGROUP, 8));
                    *p++ = '}';
                } else {
                    p = jalki_put(p, "{\"pid\":null,\"command\":null,\"cgroup_id\":null}", 44);
                }
                break;
            default: /* JALKI_JSON_LIT: the text was all */
                break;
            }
        }
        *p++ = '\n';
    }
done:
    *written = (size_t)(p - out);
    return index - start;
}
