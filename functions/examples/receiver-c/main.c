/* receiver, in C: writes an order to the outbox KV bucket, keyed by its orderId.
 * The same behaviour as functions/receiver/main.zig (and functions/examples/receiver-assemblyscript):
 *
 * OK:     ["kv_put", <bucket>, <orderId in decimal>, <payload unchanged>]
 * REJECT: "malformed-json: ..."   invalid JSON, not an object, or a duplicated orderId key
 *         "missing-order-id"
 *         "invalid-order-id: ..." orderId is not a JSON integer within int64
 *
 * Config: bucket (required), a KV bucket name: [-_a-zA-Z0-9]+, at most 255 bytes.
 */
#include "ebbtide.h"

static uint8_t bucket_buf[255];
static eb_bytes bucket;

eb_status eb_function_init(eb_config config, eb_output *out) {
    const char *why;
    switch (eb_config_string(config, "bucket", bucket_buf, sizeof bucket_buf, &bucket, &why)) {
    case EB_CONFIG_MISSING: return eb_reject(out, "config: bucket is required");
    case EB_CONFIG_INVALID:
        eb_reject(out, "config: bucket ");
        eb_reason(out, why);
        return EB_REJECT;
    case EB_CONFIG_OK: break;
    }
    if (bucket.len == 0) return eb_reject(out, "config: bucket is required");
    for (size_t i = 0; i < bucket.len; i++) {
        uint8_t c = bucket.ptr[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
        if (!ok) return eb_reject(out, "config: bucket must match [-_a-zA-Z0-9]+");
    }
    return EB_OK;
}

eb_status eb_function_handle(const eb_message *msg, eb_output *out) {
    eb_json order, id_value;
    eb_json_error error;
    if (!eb_json_parse(msg->payload, &order, &error)) {
        eb_reject(out, "malformed-json: ");
        eb_reason(out, error.message);
        eb_reason(out, " at offset ");
        eb_reason_int(out, (int64_t)error.offset);
        return EB_REJECT;
    }
    if (order.kind != EB_JSON_OBJECT) {
        eb_reject(out, "malformed-json: expected an object, got ");
        eb_reason(out, eb_json_kind_phrase(order.kind));
        return EB_REJECT;
    }
    switch (eb_json_field(order, "orderId", &id_value)) {
    case EB_FIELD_MISSING: return eb_reject(out, "missing-order-id");
    case EB_FIELD_DUPLICATE: return eb_reject(out, "malformed-json: duplicate key \"orderId\"");
    case EB_FIELD_FOUND: break;
    }
    int64_t id;
    const char *why = eb_json_int(id_value, &id);
    if (why) {
        eb_reject(out, "invalid-order-id: ");
        eb_reason(out, why);
        return EB_REJECT;
    }
    char key[20];
    eb_kv_put(out, bucket, (eb_bytes){(const uint8_t *)key, eb_format_int(id, key)}, msg->payload);
    return EB_OK;
}
