//! distributor: validates an order (JSON, camelCase) and routes it by delivery type.
//!
//! OK:     ["publish", <express_subject | standard_subject>, <payload unchanged>]
//! REJECT: "malformed-json: …"   invalid JSON, not an object, or a duplicated orderId/delivery/items key
//!         "missing-order-id"
//!         "invalid-order-id: …" orderId is not a JSON integer within i64
//!         "unknown-delivery: …" delivery missing, not a string, or not express|standard (any case)
//!         "no-items: …"         items missing, not an array, or empty
//!
//! Config (all optional): express_subject (default "orders.express"),
//!                        standard_subject (default "orders.standard").

const ebbtide = @import("ebbtide");
const json = ebbtide.json;

comptime {
    ebbtide.exportFunction(@This());
}

var express_buf: [256]u8 = undefined;
var standard_buf: [256]u8 = undefined;
var express_subject: []const u8 = "orders.express";
var standard_subject: []const u8 = "orders.standard";

pub fn init(config: ebbtide.Config, out: *ebbtide.Output) ebbtide.Status {
    express_subject = switch (config.string("express_subject", &express_buf)) {
        .missing => "orders.express",
        .ok => |s| s,
        .invalid => |why| return out.reject(.{ "config: express_subject ", why }),
    };
    if (!validSubject(express_subject)) return out.reject("config: express_subject is not a valid NATS subject");
    standard_subject = switch (config.string("standard_subject", &standard_buf)) {
        .missing => "orders.standard",
        .ok => |s| s,
        .invalid => |why| return out.reject(.{ "config: standard_subject ", why }),
    };
    if (!validSubject(standard_subject)) return out.reject("config: standard_subject is not a valid NATS subject");
    return .ok;
}

pub fn handle(msg: ebbtide.Message, out: *ebbtide.Output) ebbtide.Status {
    const order = switch (json.parse(msg.payload)) {
        .ok => |v| v,
        .err => |e| return out.reject(.{ "malformed-json: ", e.message, " at offset ", e.offset }),
    };
    if (order.kind != .object) return out.reject(.{ "malformed-json: expected an object, got ", order.kind.phrase() });

    const id = (order.field("orderId") catch return out.reject("malformed-json: duplicate key \"orderId\"")) orelse
        return out.reject("missing-order-id");
    switch (id.asInt()) {
        .ok => {},
        .err => |why| return out.reject(.{ "invalid-order-id: ", why }),
    }

    const delivery = (order.field("delivery") catch return out.reject("malformed-json: duplicate key \"delivery\"")) orelse
        return out.reject("unknown-delivery: delivery is missing");
    const kind = switch (delivery.asString()) {
        .ok => |s| s,
        .err => |why| return out.reject(.{ "unknown-delivery: ", why }),
    };
    const subject = if (kind.eqlIgnoreCase("express"))
        express_subject
    else if (kind.eqlIgnoreCase("standard"))
        standard_subject
    else
        return out.reject(.{ "unknown-delivery: ", delivery.raw }); // the JSON string, quotes included

    const items = (order.field("items") catch return out.reject("malformed-json: duplicate key \"items\"")) orelse
        return out.reject("no-items: items is missing");
    switch (items.asArray()) {
        .ok => |a| if (a.len == 0) return out.reject("no-items: items is empty"),
        .err => |why| return out.reject(.{ "no-items: ", why }),
    }

    out.publish(subject, msg.payload);
    return .ok;
}

/// A NATS publish subject: dot-separated non-empty tokens, no whitespace/control characters, no
/// wildcards.
fn validSubject(s: []const u8) bool {
    if (s.len == 0) return false;
    var token_len: usize = 0;
    for (s) |c| {
        if (c <= ' ' or c == 0x7f or c == '*' or c == '>') return false;
        if (c == '.') {
            if (token_len == 0) return false;
            token_len = 0;
        } else token_len += 1;
    }
    return token_len != 0;
}
