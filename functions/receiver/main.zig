//! receiver: writes an order to the outbox KV bucket, keyed by its orderId.
//!
//! OK:     ["kv_put", <bucket>, <orderId in decimal>, <payload unchanged>]
//! REJECT: "malformed-json: …"   invalid JSON, not an object, or a duplicated orderId key
//!         "missing-order-id"
//!         "invalid-order-id: …" orderId is not a JSON integer within i64
//!
//! Config: bucket (required), a KV bucket name: [-_a-zA-Z0-9]+, at most 255 bytes.

const ebbtide = @import("ebbtide");
const json = ebbtide.json;

comptime {
    ebbtide.exportFunction(@This());
}

var bucket_buf: [255]u8 = undefined;
var bucket: []const u8 = "";

pub fn init(config: ebbtide.Config, out: *ebbtide.Output) ebbtide.Status {
    bucket = switch (config.string("bucket", &bucket_buf)) {
        .missing => return out.reject("config: bucket is required"),
        .ok => |s| s,
        .invalid => |why| return out.reject(.{ "config: bucket ", why }),
    };
    if (bucket.len == 0) return out.reject("config: bucket is required");
    for (bucket) |c| {
        const ok = (c >= 'a' and c <= 'z') or (c >= 'A' and c <= 'Z') or (c >= '0' and c <= '9') or c == '-' or c == '_';
        if (!ok) return out.reject("config: bucket must match [-_a-zA-Z0-9]+");
    }
    return .ok;
}

pub fn handle(msg: ebbtide.Message, out: *ebbtide.Output) ebbtide.Status {
    const order = switch (json.parse(msg.payload)) {
        .ok => |v| v,
        .err => |e| return out.reject(.{ "malformed-json: ", e.message, " at offset ", e.offset }),
    };
    if (order.kind != .object) return out.reject(.{ "malformed-json: expected an object, got ", order.kind.phrase() });

    const id_value = (order.field("orderId") catch return out.reject("malformed-json: duplicate key \"orderId\"")) orelse
        return out.reject("missing-order-id");
    const id = switch (id_value.asInt()) {
        .ok => |n| n,
        .err => |why| return out.reject(.{ "invalid-order-id: ", why }),
    };

    var key_buf: [20]u8 = undefined;
    out.kvPut(bucket, ebbtide.formatInt(&key_buf, id), msg.payload);
    return .ok;
}
