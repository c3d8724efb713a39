/* ebbtide guest SDK for C, guest ABI version 2 (docs/abi.md): the handler is called once per message,
 * whether the host sends one message per call (`ebbtide_handle`) or a batch (`ebbtide_handle_batch`).
 *
 * A function is one C file that includes this header and defines
 *
 *     eb_status eb_function_handle(const eb_message *msg, eb_output *out);
 *     eb_status eb_function_init(eb_config config, eb_output *out);   // optional
 *
 * The SDK (ebbtide.c, compiled with the function) owns the static 64 KiB input/output buffers and the
 * `ebbtide_*` exports. It imports nothing and needs no libc: build with
 * `zig cc -target wasm32-freestanding -nostdlib` (`ebbtide build` does). memcpy, memmove, memset,
 * memcmp and strlen are provided, so the compiler's own calls to them resolve inside the module.
 *
 * It behaves like the Zig SDK (functions/sdk/ebbtide.zig): the same strict JSON validator with the same
 * error texts, the same reason rules (at most 512 bytes, cut at a character boundary with "...",
 * invalid UTF-8 replaced by '?') and the same effect encoding, so a function ported between the two
 * languages gives byte-identical outputs.
 */
#ifndef EBBTIDE_H
#define EBBTIDE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define EB_ABI_VERSION 2
#define EB_INPUT_CAPACITY (64 * 1024)
/* The most output one message may have: the whole input plus effect framing fits, alone or in a batch. */
#define EB_MAX_OUTPUT_LEN (EB_INPUT_CAPACITY + 1024 - 4)
/* A batch's progress counter and a record header (status, length) besides one message's largest output. */
#define EB_OUTPUT_CAPACITY (4 + 8 + EB_MAX_OUTPUT_LEN)
#define EB_MAX_REASON_LEN 512
#define EB_JSON_MAX_DEPTH 64

typedef enum {
    EB_OK = 0,     /* the output holds a MessagePack array of effects */
    EB_REJECT = 1, /* permanent: the input is dead-lettered with the reason */
    EB_RETRY = 2,  /* transient: the input is redelivered with backoff */
} eb_status;

/* A byte string that is not NUL-terminated (subjects, payloads, JSON text). */
typedef struct {
    const uint8_t *ptr;
    size_t len;
} eb_bytes;

/* A string literal as eb_bytes, e.g. EB_LIT("orders.express"). */
#define EB_LIT(s) ((eb_bytes){(const uint8_t *)(s), sizeof(s) - 1})
eb_bytes eb_cstr(const char *s);

/* One input message. Both point into the input buffer and are only valid during the call. */
typedef struct {
    eb_bytes subject;
    eb_bytes payload;
} eb_message;

/* ---- output: effects (MessagePack) or a reason (UTF-8) ------------------------------------------ */

typedef struct eb_output eb_output; /* one per call, owned by the SDK */

/* Appends ["publish", subject, payload]. */
void eb_publish(eb_output *out, eb_bytes subject, eb_bytes payload);
/* Appends ["kv_put", bucket, key, value]. */
void eb_kv_put(eb_output *out, eb_bytes bucket, eb_bytes key, eb_bytes value);
/* True once an effect did not fit: the call ends as REJECT "output buffer overflow" (permanent,
 * because the same input would overflow again on every redelivery). */
bool eb_overflowed(const eb_output *out);

/* Discard the effects written so far and start the reason with `text`; return the status, so a
 * handler can `return eb_reject(out, "missing-order-id");`. Append more with eb_reason_*. */
eb_status eb_reject(eb_output *out, const char *text);
eb_status eb_retry(eb_output *out, const char *text);
void eb_reason(eb_output *out, const char *text);
void eb_reason_bytes(eb_output *out, eb_bytes text);
void eb_reason_int(eb_output *out, int64_t n);

/* ---- JSON: strict RFC 8259 validator + navigation over the validated text ------------------------ */

typedef enum {
    EB_JSON_OBJECT,
    EB_JSON_ARRAY,
    EB_JSON_STRING,
    EB_JSON_NUMBER,
    EB_JSON_BOOLEAN,
    EB_JSON_NULL,
} eb_json_kind;

/* A value of validated JSON text; `raw` is its text (a string's includes the quotes). */
typedef struct {
    eb_json_kind kind;
    eb_bytes raw;
} eb_json;

typedef struct {
    const char *message; /* short and static, e.g. "unterminated string" */
    size_t offset;
} eb_json_error;

typedef enum {
    EB_FIELD_MISSING = 0,
    EB_FIELD_FOUND = 1,
    EB_FIELD_DUPLICATE = 2, /* the key occurs more than once: which one wins is ambiguous */
} eb_field_result;

/* Validates all of `text` (grammar, escapes and surrogate pairs, UTF-8, depth <= 64, nothing after
 * the value). true: *value is the top-level value; false: *error says what and where. */
bool eb_json_parse(eb_bytes text, eb_json *value, eb_json_error *error);
/* "an object", "an array", ... (for messages like "expected an object, got an array"). */
const char *eb_json_kind_phrase(eb_json_kind kind);
/* For an object: the value of key `name` (compared with the decoded key, so "order\u0049d" is
 * "orderId"). MISSING for other kinds. */
eb_field_result eb_json_field(eb_json object, const char *name, eb_json *value);
/* Each returns NULL on success, else why the value does not fit (e.g. "integer out of range"). */
const char *eb_json_int(eb_json value, int64_t *n);           /* a JSON integer within int64 */
const char *eb_json_string(eb_json value, eb_bytes *escaped); /* the text between the quotes */
const char *eb_json_bool(eb_json value, bool *b);
const char *eb_json_array_len(eb_json value, size_t *len);

/* Strings (the `escaped` text of eb_json_string), compared and copied DECODED. */
bool eb_json_string_eq(eb_bytes escaped, const char *s);
bool eb_json_string_eq_ignore_case(eb_bytes escaped, const char *s); /* ASCII case */
/* Copies the decoded bytes into buf; false if they do not fit. */
bool eb_json_string_decode(eb_bytes escaped, uint8_t *buf, size_t cap, size_t *len);

/* Iteration: `eb_json_iter it = eb_json_members(obj); while (eb_json_next_member(&it, &key, &v)) ...` */
typedef struct {
    eb_bytes text;
    size_t i;
} eb_json_iter;
eb_json_iter eb_json_members(eb_json object);  /* nothing for other kinds */
eb_json_iter eb_json_elements(eb_json array);  /* nothing for other kinds */
bool eb_json_next_member(eb_json_iter *it, eb_bytes *escaped_key, eb_json *value);
bool eb_json_next_element(eb_json_iter *it, eb_json *value);

/* ---- config --------------------------------------------------------------------------------------- */

/* The function's config (a validated JSON object). It lives in the input buffer, which the next message
 * overwrites: copy what you keep (eb_config_string does). */
typedef struct {
    eb_json object;
} eb_config;

typedef enum {
    EB_CONFIG_MISSING = 0,
    EB_CONFIG_OK = 1,
    EB_CONFIG_INVALID = 2, /* *why says why: "must be a string", "is too long", ... */
} eb_config_result;

/* Looks up a string value and copies its decoded bytes into buf (static storage); *value points there. */
eb_config_result eb_config_string(eb_config config, const char *name, uint8_t *buf, size_t cap,
                                  eb_bytes *value, const char **why);

/* ---- helpers ---------------------------------------------------------------------------------------- */

/* Decimal text of n in buf (e.g. a KV key from an integer id); returns the length. */
size_t eb_format_int(int64_t n, char buf[20]);
bool eb_bytes_eq(eb_bytes a, eb_bytes b);

/* ---- implemented by the function ------------------------------------------------------------------------ */

eb_status eb_function_handle(const eb_message *msg, eb_output *out);
/* Optional: without it, any JSON-object config is accepted. */
eb_status eb_function_init(eb_config config, eb_output *out);

#endif
