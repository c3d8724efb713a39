/* ebbtide guest SDK for C: the ABI exports, the output writer and the strict JSON reader.
 * See ebbtide.h for the API and docs/abi.md for the ABI. A port of functions/sdk/ebbtide.zig: keep the
 * two in step (tests/integration/test_languages.py compares their outputs byte for byte). */

#include "ebbtide.h"

#define EXPORT(name) __attribute__((export_name(name), visibility("default")))

static uint8_t input_buffer[EB_INPUT_CAPACITY] __attribute__((aligned(16)));
static uint8_t output_buffer[EB_OUTPUT_CAPACITY] __attribute__((aligned(16)));
static bool initialized = false;

/* ---- the few libc functions a compiler may call; memory.copy/fill (bulk memory) do the work ----- */

void *memcpy(void *restrict dst, const void *restrict src, size_t n) {
    __builtin_memcpy(dst, src, n);
    return dst;
}
void *memmove(void *dst, const void *src, size_t n) {
    __builtin_memmove(dst, src, n);
    return dst;
}
void *memset(void *dst, int c, size_t n) {
    __builtin_memset(dst, c, n);
    return dst;
}
int memcmp(const void *a, const void *b, size_t n) {
    const uint8_t *x = a, *y = b;
    for (size_t i = 0; i < n; i++)
        if (x[i] != y[i]) return x[i] < y[i] ? -1 : 1;
    return 0;
}
size_t strlen(const char *s) {
    size_t n = 0;
    while (s[n]) n++;
    return n;
}

eb_bytes eb_cstr(const char *s) { return (eb_bytes){(const uint8_t *)s, strlen(s)}; }

bool eb_bytes_eq(eb_bytes a, eb_bytes b) { return a.len == b.len && memcmp(a.ptr, b.ptr, a.len) == 0; }

/* ---- UTF-8 ------------------------------------------------------------------------------------------ */

static size_t utf8_lead_len(uint8_t b) {
    if (b < 0x80) return 1;
    if (b >= 0xc2 && b <= 0xdf) return 2;
    if (b >= 0xe0 && b <= 0xef) return 3;
    if (b >= 0xf0 && b <= 0xf4) return 4;
    return 1; /* invalid lead byte */
}

/* Length (1..4) of the valid UTF-8 sequence at s[i], or 0 if invalid or incomplete. */
static size_t utf8_seq_len(const uint8_t *s, size_t len, size_t i) {
    uint8_t b0 = s[i];
    if (b0 < 0x80) return 1;
    size_t n = utf8_lead_len(b0);
    if (n == 1 || i + n > len) return 0;
    uint8_t lo = 0x80, hi = 0xbf;
    if (b0 == 0xe0) lo = 0xa0;      /* no overlong 3-byte forms */
    else if (b0 == 0xed) hi = 0x9f; /* no surrogates */
    else if (b0 == 0xf0) lo = 0x90; /* no overlong 4-byte forms */
    else if (b0 == 0xf4) hi = 0x8f; /* <= U+10FFFF */
    if (s[i + 1] < lo || s[i + 1] > hi) return 0;
    for (size_t k = 2; k < n; k++)
        if ((s[i + k] & 0xc0) != 0x80) return 0;
    return n;
}

/* ---- output ----------------------------------------------------------------------------------------------- */

enum { NO_REASON = -1, DOES_NOT_FIT = -1, BATCH_HEADER_LEN = 4, RECORD_HEADER_LEN = 8 };
/* A batch stops before a message when less than this is left: its record header, the longest reason
 * (so a REJECT/RETRY always fits) and an empty effect array. */
enum { MIN_RECORD_ROOM = RECORD_HEADER_LEN + EB_MAX_REASON_LEN + 3 };
typedef enum { CONTEXT_INIT, CONTEXT_HANDLE } context;

/* Layout at `frame`: little-endian u32 length N, then N bytes (frame 0 for one message; inside its record
 * in a batch). Effects: an array16 header (0xdc + big-endian count) reserved at the start of the body
 * and patched when the handler returns OK. */
struct eb_output {
    context context;
    size_t frame;
    size_t body_start;
    size_t pos;
    size_t limit;      /* the end of the room for this message's output */
    bool room_limited; /* the room ends at the buffer's end, before the message's own cap: in a batch, a
                          message that overflows it is handled first in the next call (DOES_NOT_FIT) */
    size_t end;        /* where the output ends, once finished */
    size_t count;
    bool overflow;
    int reason_status; /* NO_REASON, or the status a reason was written for */
    bool truncated;
};

static eb_output begin_at(context c, size_t frame, bool first) {
    size_t cap = frame + 4 + EB_MAX_OUTPUT_LEN;
    bool room_limited = !first && cap > EB_OUTPUT_CAPACITY;
    return (eb_output){.context = c, .frame = frame, .body_start = frame + 4, .pos = frame + 4 + 3,
                       .limit = room_limited ? EB_OUTPUT_CAPACITY : cap, .room_limited = room_limited,
                       .reason_status = NO_REASON};
}

static eb_output begin(context c) { return begin_at(c, 0, true); }

static void put(eb_output *out, const uint8_t *bytes, size_t len) {
    if (out->overflow) return;
    if (len > out->limit - out->pos) {
        out->overflow = true;
        return;
    }
    memcpy(output_buffer + out->pos, bytes, len);
    out->pos += len;
}

static void put_byte(eb_output *out, uint8_t b) { put(out, &b, 1); }

/* tag8, tag8+1, tag8+2: the 8/16/32-bit length forms of str (0xd9) and bin (0xc4) */
static void put_header(eb_output *out, uint8_t tag8, size_t len) {
    if (len < 0x100) {
        uint8_t h[2] = {tag8, (uint8_t)len};
        put(out, h, 2);
    } else if (len < 0x10000) {
        uint8_t h[3] = {(uint8_t)(tag8 + 1), (uint8_t)(len >> 8), (uint8_t)len};
        put(out, h, 3);
    } else {
        uint8_t h[5] = {(uint8_t)(tag8 + 2), (uint8_t)(len >> 24), (uint8_t)(len >> 16), (uint8_t)(len >> 8), (uint8_t)len};
        put(out, h, 5);
    }
}

static void put_str(eb_output *out, eb_bytes s) {
    if (s.len < 32) put_byte(out, (uint8_t)(0xa0 | s.len));
    else put_header(out, 0xd9, s.len);
    put(out, s.ptr, s.len);
}

static void put_bin(eb_output *out, eb_bytes b) {
    put_header(out, 0xc4, b.len);
    put(out, b.ptr, b.len);
}

static bool begin_effect(eb_output *out, uint8_t n, eb_bytes tag) {
    if (out->reason_status != NO_REASON || out->context != CONTEXT_HANDLE) return false;
    if (out->count == 0xffff) out->overflow = true;
    if (out->overflow) return false;
    out->count++;
    put_byte(out, 0x90 | n);
    put_str(out, tag);
    return true;
}

void eb_publish(eb_output *out, eb_bytes subject, eb_bytes payload) {
    if (!begin_effect(out, 3, EB_LIT("publish"))) return;
    put_str(out, subject);
    put_bin(out, payload);
}

void eb_kv_put(eb_output *out, eb_bytes bucket, eb_bytes key, eb_bytes value) {
    if (!begin_effect(out, 4, EB_LIT("kv_put"))) return;
    put_str(out, bucket);
    put_str(out, key);
    put_bin(out, value);
}

bool eb_overflowed(const eb_output *out) { return out->overflow; }

void eb_reason_bytes(eb_output *out, eb_bytes s) {
    if (out->reason_status == NO_REASON || out->truncated) return;
    size_t room = out->body_start + EB_MAX_REASON_LEN - out->pos;
    size_t n = s.len > room ? room : s.len;
    if (n < s.len) out->truncated = true;
    memcpy(output_buffer + out->pos, s.ptr, n);
    out->pos += n;
}

void eb_reason(eb_output *out, const char *text) { eb_reason_bytes(out, eb_cstr(text)); }

void eb_reason_int(eb_output *out, int64_t n) {
    char buf[20];
    size_t len = eb_format_int(n, buf);
    eb_reason_bytes(out, (eb_bytes){(const uint8_t *)buf, len});
}

static eb_status set_reason(eb_output *out, eb_status status, const char *text) {
    out->reason_status = status;
    out->pos = out->body_start;
    out->truncated = false;
    out->overflow = false;
    eb_reason(out, text);
    return status;
}

eb_status eb_reject(eb_output *out, const char *text) { return set_reason(out, EB_REJECT, text); }
eb_status eb_retry(eb_output *out, const char *text) { return set_reason(out, EB_RETRY, text); }

static void write_u32(size_t at, uint32_t n) {
    output_buffer[at] = (uint8_t)n;
    output_buffer[at + 1] = (uint8_t)(n >> 8);
    output_buffer[at + 2] = (uint8_t)(n >> 16);
    output_buffer[at + 3] = (uint8_t)(n >> 24);
}

static void write_end(eb_output *out, size_t end) {
    write_u32(out->frame, (uint32_t)(end - out->body_start));
    out->end = end;
}

/* Makes the reason valid UTF-8, appends "..." if it was cut, and writes the length prefix. */
static void finish_reason(eb_output *out) {
    size_t body_start = out->body_start;
    size_t end = out->pos;
    if (out->truncated) { /* drop a character cut in half by the length cap */
        size_t k = end;
        while (k > body_start && end - k < 3 && (output_buffer[k - 1] & 0xc0) == 0x80) k--;
        if (k > body_start && output_buffer[k - 1] >= 0xc0 && end - (k - 1) < utf8_lead_len(output_buffer[k - 1]))
            end = k - 1;
    }
    for (size_t i = body_start; i < end;) {
        size_t n = utf8_seq_len(output_buffer, end, i);
        if (n == 0) output_buffer[i++] = '?';
        else i += n;
    }
    if (out->truncated) {
        memcpy(output_buffer + end, "...", 3);
        end += 3;
    }
    write_end(out, end);
}

/* The status, with the output written; DOES_NOT_FIT when a batch must stop before this message. */
static int32_t finish(eb_output *out, eb_status returned) {
    if (out->reason_status != NO_REASON) {
        finish_reason(out);
        return out->reason_status;
    }
    if (returned != EB_OK) {
        if (returned != EB_REJECT && returned != EB_RETRY) {
            set_reason(out, EB_RETRY, "invalid status returned by the function: ");
            eb_reason_int(out, (int64_t)returned);
        } else {
            set_reason(out, returned, "no reason given");
        }
        finish_reason(out);
        return out->reason_status;
    }
    if (out->context == CONTEXT_INIT) {
        write_end(out, out->body_start);
        return EB_OK;
    }
    if (out->overflow) {
        if (out->room_limited) return DOES_NOT_FIT;
        set_reason(out, EB_REJECT, "output buffer overflow");
        finish_reason(out);
        return EB_REJECT;
    }
    output_buffer[out->body_start] = 0xdc; /* array16 */
    output_buffer[out->body_start + 1] = (uint8_t)(out->count >> 8);
    output_buffer[out->body_start + 2] = (uint8_t)out->count;
    write_end(out, out->pos);
    return EB_OK;
}

/* ---- ABI exports ------------------------------------------------------------------------------------------ */

/* The default init: accept any JSON-object config. A function's own definition replaces it. */
__attribute__((weak)) eb_status eb_function_init(eb_config config, eb_output *out) {
    (void)config;
    (void)out;
    return EB_OK;
}

EXPORT("ebbtide_abi_version") int32_t ebbtide_abi_version(void) { return EB_ABI_VERSION; }
EXPORT("ebbtide_input_ptr") int32_t ebbtide_input_ptr(void) { return (int32_t)(uintptr_t)input_buffer; }
EXPORT("ebbtide_input_capacity") int32_t ebbtide_input_capacity(void) { return EB_INPUT_CAPACITY; }
EXPORT("ebbtide_output_ptr") int32_t ebbtide_output_ptr(void) { return (int32_t)(uintptr_t)output_buffer; }
EXPORT("ebbtide_output_capacity") int32_t ebbtide_output_capacity(void) { return EB_OUTPUT_CAPACITY; }

EXPORT("ebbtide_init") int32_t ebbtide_init(int32_t config_len) {
    initialized = false;
    eb_output out = begin(CONTEXT_INIT);
    if (config_len < 0 || config_len > EB_INPUT_CAPACITY)
        return finish(&out, eb_reject(&out, "config: length out of range"));
    eb_bytes text = {input_buffer, (size_t)config_len};
    eb_json object = {EB_JSON_OBJECT, EB_LIT("{}")}; /* an empty config is `{}` */
    if (text.len != 0) {
        eb_json_error e;
        if (!eb_json_parse(text, &object, &e)) {
            eb_reject(&out, "config: malformed-json: ");
            eb_reason(&out, e.message);
            eb_reason(&out, " at offset ");
            eb_reason_int(&out, (int64_t)e.offset);
            return finish(&out, EB_REJECT);
        }
        if (object.kind != EB_JSON_OBJECT) {
            eb_reject(&out, "config: expected a JSON object, got ");
            eb_reason(&out, eb_json_kind_phrase(object.kind));
            return finish(&out, EB_REJECT);
        }
    }
    int32_t rc = finish(&out, eb_function_init((eb_config){object}, &out));
    initialized = rc == EB_OK;
    return rc;
}

/* One message whose subject starts at input_buffer[start]; `out` says where its output goes. */
static int32_t handle_at(eb_output *out, size_t start, size_t subject_len, size_t payload_len) {
    if (!initialized) return finish(out, eb_retry(out, "not initialized: ebbtide_init has not succeeded"));
    if (subject_len > EB_INPUT_CAPACITY - start || payload_len > EB_INPUT_CAPACITY - start - subject_len)
        return finish(out, eb_reject(out, "invalid-input: subject_len/payload_len out of range"));
    eb_message msg = {
        .subject = {input_buffer + start, subject_len},
        .payload = {input_buffer + start + subject_len, payload_len},
    };
    return finish(out, eb_function_handle(&msg, out));
}

EXPORT("ebbtide_handle") int32_t ebbtide_handle(int32_t subject_len, int32_t payload_len) {
    eb_output out = begin(CONTEXT_HANDLE);
    if (subject_len < 0 || payload_len < 0) return handle_at(&out, 0, EB_INPUT_CAPACITY + 1, 0);
    return handle_at(&out, 0, (size_t)subject_len, (size_t)payload_len);
}

static size_t read_u32(size_t at) {
    return (size_t)input_buffer[at] | (size_t)input_buffer[at + 1] << 8 | (size_t)input_buffer[at + 2] << 16 |
           (size_t)input_buffer[at + 3] << 24;
}

/* Input: `count` records `u32 subject_len, u32 payload_len, subject, payload`. Output: `u32 done`, then per
 * message `u32 status, u32 length, output`; `done` is bumped after each message, so the host can read what
 * was finished before a trap. Returns how many messages were handled: fewer than `count` when the output
 * buffer is full (the host sends the rest in another call). */
EXPORT("ebbtide_handle_batch") int32_t ebbtide_handle_batch(int32_t count) {
    write_u32(0, 0);
    int32_t done = 0;
    size_t in_pos = 0;
    size_t record = BATCH_HEADER_LEN;
    while (done < count) {
        if (done > 0 && EB_OUTPUT_CAPACITY - record < MIN_RECORD_ROOM) break;
        eb_output out = begin_at(CONTEXT_HANDLE, record + 4, done == 0);
        /* A record outside the input buffer gets handle_at's invalid-input REJECT and ends the batch. */
        size_t subject_len = EB_INPUT_CAPACITY + 1, payload_len = 0;
        if (EB_INPUT_CAPACITY - in_pos >= RECORD_HEADER_LEN) {
            subject_len = read_u32(in_pos);
            payload_len = read_u32(in_pos + 4);
        }
        size_t start = in_pos + RECORD_HEADER_LEN < EB_INPUT_CAPACITY ? in_pos + RECORD_HEADER_LEN : EB_INPUT_CAPACITY;
        int32_t status = handle_at(&out, start, subject_len, payload_len);
        if (status == DOES_NOT_FIT) break; /* it is handled first in the next call */
        write_u32(record, (uint32_t)status);
        record = out.end;
        done++;
        write_u32(0, (uint32_t)done);
        if (subject_len > EB_INPUT_CAPACITY - start || payload_len > EB_INPUT_CAPACITY - start - subject_len) break;
        in_pos = start + subject_len + payload_len;
    }
    return done;
}

/* ---- helpers ------------------------------------------------------------------------------------------------ */

size_t eb_format_int(int64_t n, char buf[20]) {
    char tmp[20];
    uint64_t mag = n < 0 ? (uint64_t)(-(n + 1)) + 1 : (uint64_t)n; /* no overflow for INT64_MIN */
    size_t i = sizeof tmp;
    do {
        tmp[--i] = (char)('0' + mag % 10);
        mag /= 10;
    } while (mag);
    size_t len = 0;
    if (n < 0) buf[len++] = '-';
    memcpy(buf + len, tmp + i, sizeof tmp - i);
    return len + sizeof tmp - i;
}

static uint8_t lower_ascii(uint8_t c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; }

/* ---- JSON ---------------------------------------------------------------------------------------------------- */

const char *eb_json_kind_phrase(eb_json_kind kind) {
    switch (kind) {
    case EB_JSON_OBJECT: return "an object";
    case EB_JSON_ARRAY: return "an array";
    case EB_JSON_STRING: return "a string";
    case EB_JSON_NUMBER: return "a number";
    case EB_JSON_BOOLEAN: return "a boolean";
    default: return "null";
    }
}

/* "expected <what>, got <kind>" as static text (reasons are built from static strings). */
#define GOT_TABLE(what)                                                                                     \
    {"expected " what ", got an object", "expected " what ", got an array", "expected " what ", got a string", \
     "expected " what ", got a number", "expected " what ", got a boolean", "expected " what ", got null"}
static const char *const got_integer[] = GOT_TABLE("an integer");
static const char *const got_string[] = GOT_TABLE("a string");
static const char *const got_array[] = GOT_TABLE("an array");
static const char *const got_boolean[] = GOT_TABLE("a boolean");

static bool is_ws(uint8_t c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
static bool is_digit(uint8_t c) { return c >= '0' && c <= '9'; }

static size_t skip_ws(eb_bytes t, size_t i) {
    while (i < t.len && is_ws(t.ptr[i])) i++;
    return i;
}

/* The value of 4 hex digits at t[i], or -1. */
static int32_t hex4(eb_bytes t, size_t i) {
    if (i + 4 > t.len) return -1;
    int32_t v = 0;
    for (size_t k = i; k < i + 4; k++) {
        uint8_t c = t.ptr[k];
        int32_t d;
        if (c >= '0' && c <= '9') d = c - '0';
        else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
        else return -1;
        v = v * 16 + d;
    }
    return v;
}

/* -- navigation over validated text -- */

static eb_json_kind kind_at(uint8_t c) {
    switch (c) {
    case '{': return EB_JSON_OBJECT;
    case '[': return EB_JSON_ARRAY;
    case '"': return EB_JSON_STRING;
    case 't': case 'f': return EB_JSON_BOOLEAN;
    case 'n': return EB_JSON_NULL;
    default: return EB_JSON_NUMBER;
    }
}

static size_t skip_string(eb_bytes t, size_t i) {
    size_t j = i + 1;
    while (t.ptr[j] != '"') j += t.ptr[j] == '\\' ? 2 : 1;
    return j + 1;
}

static size_t skip_value(eb_bytes t, size_t i) {
    switch (t.ptr[i]) {
    case '"': return skip_string(t, i);
    case 't': case 'n': return i + 4;
    case 'f': return i + 5;
    case '{': case '[': {
        size_t depth = 0, j = i;
        for (;;) {
            uint8_t c = t.ptr[j];
            if (c == '"') {
                j = skip_string(t, j);
                continue;
            }
            if (c == '{' || c == '[') depth++;
            else if (c == '}' || c == ']') {
                if (--depth == 0) return j + 1;
            }
            j++;
        }
    }
    default: {
        size_t j = i;
        while (j < t.len && (is_digit(t.ptr[j]) || t.ptr[j] == '-' || t.ptr[j] == '+' || t.ptr[j] == '.' ||
                             t.ptr[j] == 'e' || t.ptr[j] == 'E'))
            j++;
        return j;
    }
    }
}

static eb_json value_at(eb_bytes t, size_t i) {
    return (eb_json){kind_at(t.ptr[i]), {t.ptr + i, skip_value(t, i) - i}};
}

eb_json_iter eb_json_members(eb_json v) { return (eb_json_iter){v.kind == EB_JSON_OBJECT ? v.raw : EB_LIT("{}"), 1}; }
eb_json_iter eb_json_elements(eb_json v) { return (eb_json_iter){v.kind == EB_JSON_ARRAY ? v.raw : EB_LIT("[]"), 1}; }

bool eb_json_next_member(eb_json_iter *it, eb_bytes *key, eb_json *value) {
    size_t i = skip_ws(it->text, it->i);
    if (it->text.ptr[i] == '}') return false;
    if (it->text.ptr[i] == ',') i = skip_ws(it->text, i + 1);
    size_t key_end = skip_string(it->text, i);
    *key = (eb_bytes){it->text.ptr + i + 1, key_end - i - 2};
    i = skip_ws(it->text, key_end); /* ':' */
    size_t start = skip_ws(it->text, i + 1);
    *value = value_at(it->text, start);
    it->i = start + value->raw.len;
    return true;
}

bool eb_json_next_element(eb_json_iter *it, eb_json *value) {
    size_t i = skip_ws(it->text, it->i);
    if (it->text.ptr[i] == ']') return false;
    if (it->text.ptr[i] == ',') i = skip_ws(it->text, i + 1);
    *value = value_at(it->text, i);
    it->i = i + value->raw.len;
    return true;
}

eb_field_result eb_json_field(eb_json object, const char *name, eb_json *value) {
    eb_field_result result = EB_FIELD_MISSING;
    if (object.kind != EB_JSON_OBJECT) return result;
    eb_json_iter it = eb_json_members(object);
    eb_bytes key;
    eb_json v;
    while (eb_json_next_member(&it, &key, &v)) {
        if (eb_json_string_eq(key, name)) {
            if (result == EB_FIELD_FOUND) return EB_FIELD_DUPLICATE;
            result = EB_FIELD_FOUND;
            *value = v;
        }
    }
    return result;
}

const char *eb_json_int(eb_json v, int64_t *n) {
    if (v.kind != EB_JSON_NUMBER) return got_integer[v.kind];
    for (size_t i = 0; i < v.raw.len; i++) {
        if (v.raw.ptr[i] == '.') return "expected an integer, got a fractional number";
        if (v.raw.ptr[i] == 'e' || v.raw.ptr[i] == 'E') return "expected an integer, got a number with an exponent";
    }
    bool negative = v.raw.ptr[0] == '-';
    uint64_t mag = 0;
    for (size_t i = negative; i < v.raw.len; i++) {
        uint64_t d = (uint64_t)(v.raw.ptr[i] - '0');
        if (mag > (UINT64_MAX - d) / 10) return "integer out of range";
        mag = mag * 10 + d;
    }
    uint64_t limit = negative ? (uint64_t)1 << 63 : ((uint64_t)1 << 63) - 1;
    if (mag > limit) return "integer out of range";
    if (!negative) *n = (int64_t)mag;
    else if (mag == 0) *n = 0;
    else *n = -(int64_t)(mag - 1) - 1;
    return NULL;
}

const char *eb_json_string(eb_json v, eb_bytes *escaped) {
    if (v.kind != EB_JSON_STRING) return got_string[v.kind];
    *escaped = (eb_bytes){v.raw.ptr + 1, v.raw.len - 2};
    return NULL;
}

const char *eb_json_bool(eb_json v, bool *b) {
    if (v.kind != EB_JSON_BOOLEAN) return got_boolean[v.kind];
    *b = v.raw.ptr[0] == 't';
    return NULL;
}

const char *eb_json_array_len(eb_json v, size_t *len) {
    if (v.kind != EB_JSON_ARRAY) return got_array[v.kind];
    eb_json_iter it = eb_json_elements(v);
    eb_json e;
    size_t n = 0;
    while (eb_json_next_element(&it, &e)) n++;
    *len = n;
    return NULL;
}

/* -- decoding a validated string -- */

typedef struct {
    eb_bytes raw;
    size_t i;
    uint8_t pending[4];
    uint8_t pending_len, pending_i;
} decoder;

static uint8_t encode_utf8(uint32_t cp, uint8_t out[4]) {
    if (cp < 0x80) {
        out[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (uint8_t)(0xc0 | (cp >> 6));
        out[1] = (uint8_t)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (uint8_t)(0xe0 | (cp >> 12));
        out[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (uint8_t)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (uint8_t)(0xf0 | (cp >> 18));
    out[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3f));
    out[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3f));
    out[3] = (uint8_t)(0x80 | (cp & 0x3f));
    return 4;
}

/* The next decoded byte, or -1 at the end. */
static int next_byte(decoder *d) {
    if (d->pending_i < d->pending_len) return d->pending[d->pending_i++];
    if (d->i >= d->raw.len) return -1;
    uint8_t c = d->raw.ptr[d->i];
    if (c != '\\') {
        d->i++;
        return c;
    }
    uint8_t e = d->raw.ptr[d->i + 1];
    d->i += 2;
    switch (e) {
    case 'b': return 0x08;
    case 'f': return 0x0c;
    case 'n': return '\n';
    case 'r': return '\r';
    case 't': return '\t';
    case 'u': {
        uint32_t cp = (uint32_t)hex4(d->raw, d->i);
        d->i += 4;
        if (cp >= 0xd800 && cp <= 0xdbff) { /* validated: a "\uDC00".."\uDFFF" follows */
            uint32_t low = (uint32_t)hex4(d->raw, d->i + 2);
            d->i += 6;
            cp = 0x10000 + ((cp - 0xd800) << 10) + (low - 0xdc00);
        }
        d->pending_len = encode_utf8(cp, d->pending);
        d->pending_i = 1;
        return d->pending[0];
    }
    default: return e; /* '"', '\\', '/' */
    }
}

static bool string_eq(eb_bytes escaped, const char *s, bool ignore_case) {
    decoder d = {.raw = escaped};
    for (; *s; s++) {
        int b = next_byte(&d);
        if (b < 0) return false;
        uint8_t x = (uint8_t)b, y = (uint8_t)*s;
        if (ignore_case ? lower_ascii(x) != lower_ascii(y) : x != y) return false;
    }
    return next_byte(&d) < 0;
}

bool eb_json_string_eq(eb_bytes escaped, const char *s) { return string_eq(escaped, s, false); }
bool eb_json_string_eq_ignore_case(eb_bytes escaped, const char *s) { return string_eq(escaped, s, true); }

bool eb_json_string_decode(eb_bytes escaped, uint8_t *buf, size_t cap, size_t *len) {
    decoder d = {.raw = escaped};
    size_t n = 0;
    for (int b; (b = next_byte(&d)) >= 0;) {
        if (n == cap) return false;
        buf[n++] = (uint8_t)b;
    }
    *len = n;
    return true;
}

/* -- validation: each scan returns the index after the token, or sets *error and returns SIZE_MAX -- */

#define FAIL(msg, at) (error->message = (msg), error->offset = (at), SIZE_MAX)

static size_t scan_string(eb_bytes t, size_t i, eb_json_error *error) {
    size_t j = i + 1;
    for (;;) {
        if (j >= t.len) return FAIL("unterminated string", i);
        uint8_t c = t.ptr[j];
        if (c == '"') return j + 1;
        if (c == '\\') {
            if (j + 1 >= t.len) return FAIL("unterminated string", i);
            switch (t.ptr[j + 1]) {
            case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
                j += 2;
                break;
            case 'u': {
                int32_t cp = hex4(t, j + 2);
                if (cp < 0) return FAIL("invalid \\u escape", j);
                if (cp >= 0xd800 && cp <= 0xdbff) {
                    if (j + 8 > t.len || t.ptr[j + 6] != '\\' || t.ptr[j + 7] != 'u')
                        return FAIL("unpaired surrogate in \\u escape", j);
                    int32_t low = hex4(t, j + 8);
                    if (low < 0) return FAIL("invalid \\u escape", j + 6);
                    if (low < 0xdc00 || low > 0xdfff) return FAIL("unpaired surrogate in \\u escape", j);
                    j += 12;
                } else if (cp >= 0xdc00 && cp <= 0xdfff) {
                    return FAIL("unpaired surrogate in \\u escape", j);
                } else {
                    j += 6;
                }
                break;
            }
            default: return FAIL("invalid escape in string", j);
            }
        } else if (c < 0x20) {
            return FAIL("control character in string", j);
        } else if (c < 0x80) {
            j++;
        } else {
            size_t n = utf8_seq_len(t.ptr, t.len, j);
            if (n == 0) return FAIL("invalid UTF-8 in string", j);
            j += n;
        }
    }
}

/* `"key"` `:` at t[i]; returns the index of the member's value (whitespace skipped). */
static size_t scan_key(eb_bytes t, size_t i, eb_json_error *error) {
    if (i >= t.len) return FAIL("unexpected end of input", i);
    if (t.ptr[i] != '"') return FAIL("expected a string key", i);
    size_t end = scan_string(t, i, error);
    if (end == SIZE_MAX) return end;
    size_t colon = skip_ws(t, end);
    if (colon >= t.len) return FAIL("unexpected end of input", colon);
    if (t.ptr[colon] != ':') return FAIL("expected ':' after object key", colon);
    return skip_ws(t, colon + 1);
}

static size_t scan_number(eb_bytes t, size_t i, eb_json_error *error) {
    size_t j = i;
    if (t.ptr[j] == '-') j++;
    if (j >= t.len || !is_digit(t.ptr[j])) return FAIL("invalid number", i);
    if (t.ptr[j] == '0') {
        j++;
        if (j < t.len && is_digit(t.ptr[j])) return FAIL("invalid number: leading zero", i);
    } else {
        while (j < t.len && is_digit(t.ptr[j])) j++;
    }
    if (j < t.len && t.ptr[j] == '.') {
        j++;
        if (j >= t.len || !is_digit(t.ptr[j])) return FAIL("invalid number: digit expected after '.'", j);
        while (j < t.len && is_digit(t.ptr[j])) j++;
    }
    if (j < t.len && (t.ptr[j] == 'e' || t.ptr[j] == 'E')) {
        j++;
        if (j < t.len && (t.ptr[j] == '+' || t.ptr[j] == '-')) j++;
        if (j >= t.len || !is_digit(t.ptr[j])) return FAIL("invalid number: digit expected in exponent", j);
        while (j < t.len && is_digit(t.ptr[j])) j++;
    }
    return j;
}

static size_t scan_literal(eb_bytes t, size_t i, const char *word, eb_json_error *error) {
    size_t n = strlen(word);
    if (i + n > t.len || memcmp(t.ptr + i, word, n) != 0) return FAIL("invalid literal", i);
    return i + n;
}

static bool validate(eb_bytes t, eb_json_error *error) {
    size_t i = skip_ws(t, 0);
    if (i == t.len) {
        FAIL(t.len == 0 ? "empty input" : "no value, only whitespace", i);
        return false;
    }
    size_t depth = 0;
    uint64_t arrays = 0; /* bit d set: the container at depth d+1 is an array */
    for (;;) {
    value: /* a value is expected at t[i] */
        if (i >= t.len) return FAIL("unexpected end of input", i), false;
        uint8_t c = t.ptr[i];
        if (c == '{' || c == '[') {
            if (depth == EB_JSON_MAX_DEPTH) return FAIL("nesting deeper than 64 levels", i), false;
            bool is_array = c == '[';
            uint64_t bit = (uint64_t)1 << depth;
            arrays = is_array ? arrays | bit : arrays & ~bit;
            depth++;
            i = skip_ws(t, i + 1);
            if (i < t.len && t.ptr[i] == (is_array ? ']' : '}')) {
                depth--;
                i++; /* an empty container: a complete value */
            } else if (is_array) {
                goto value;
            } else {
                if ((i = scan_key(t, i, error)) == SIZE_MAX) return false;
                goto value;
            }
        } else if (c == '"') {
            i = scan_string(t, i, error);
        } else if (c == 't') {
            i = scan_literal(t, i, "true", error);
        } else if (c == 'f') {
            i = scan_literal(t, i, "false", error);
        } else if (c == 'n') {
            i = scan_literal(t, i, "null", error);
        } else if (c == '-' || is_digit(c)) {
            i = scan_number(t, i, error);
        } else {
            return FAIL("unexpected character", i), false;
        }
        if (i == SIZE_MAX) return false;
        for (;;) { /* a value just ended at t[i] */
            i = skip_ws(t, i);
            if (depth == 0) {
                if (i != t.len) return FAIL("unexpected data after the JSON value", i), false;
                return true;
            }
            if (i >= t.len) return FAIL("unexpected end of input", i), false;
            bool in_array = (arrays >> (depth - 1)) & 1;
            if (t.ptr[i] == ',') {
                i = skip_ws(t, i + 1);
                if (!in_array && (i = scan_key(t, i, error)) == SIZE_MAX) return false;
                goto value;
            }
            if (t.ptr[i] == (in_array ? ']' : '}')) {
                depth--;
                i++;
                continue;
            }
            return FAIL(in_array ? "expected ',' or ']'" : "expected ',' or '}'", i), false;
        }
    }
}

bool eb_json_parse(eb_bytes text, eb_json *value, eb_json_error *error) {
    if (!validate(text, error)) return false;
    *value = value_at(text, skip_ws(text, 0));
    return true;
}

/* ---- config -------------------------------------------------------------------------------------------------- */

eb_config_result eb_config_string(eb_config config, const char *name, uint8_t *buf, size_t cap, eb_bytes *value,
                                  const char **why) {
    eb_json v;
    switch (eb_json_field(config.object, name, &v)) {
    case EB_FIELD_MISSING: return EB_CONFIG_MISSING;
    case EB_FIELD_DUPLICATE: *why = "is given more than once"; return EB_CONFIG_INVALID;
    default: break;
    }
    eb_bytes escaped;
    if (eb_json_string(v, &escaped) != NULL) {
        *why = "must be a string";
        return EB_CONFIG_INVALID;
    }
    size_t len;
    if (!eb_json_string_decode(escaped, buf, cap, &len)) {
        *why = "is too long";
        return EB_CONFIG_INVALID;
    }
    *value = (eb_bytes){buf, len};
    return EB_CONFIG_OK;
}
