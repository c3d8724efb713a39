// receiver, in AssemblyScript: writes an order to the outbox KV bucket, keyed by its orderId.
// The same behaviour as functions/receiver/main.zig (and functions/examples/receiver-c):
//
// OK:     ["kv_put", <bucket>, <orderId in decimal>, <payload unchanged>]
// REJECT: "malformed-json: ..."   invalid JSON, not an object, or a duplicated orderId key
//         "missing-order-id"
//         "invalid-order-id: ..." orderId is not a JSON integer within i64
//
// Config: bucket (required), a KV bucket name: [-_a-zA-Z0-9]+, at most 255 bytes.

import {
  DUPLICATE, Kind, MISSING, Span, Status, configString, formatInt, jsonField, jsonInt, jsonKind, jsonParse,
  kindPhrase, kvPut, lastError, lastErrorOffset, onInit, onMessage, reason, reject, spanLen, spanPtr,
} from "ebbtide";
export * from "ebbtide/exports";

const BUCKET_BUF: usize = memory.data(255);
let bucket: Span = MISSING;

onInit((config: Span): Status => {
  bucket = configString(config, "bucket", BUCKET_BUF, 255);
  if (lastError.length != 0) {
    reject("config: bucket ");
    reason(lastError);
    return Status.REJECT;
  }
  if (bucket == MISSING || spanLen(bucket) == 0) return reject("config: bucket is required");
  for (let i = 0; i < spanLen(bucket); i++) {
    const c = load<u8>(spanPtr(bucket) + i);
    const ok = (c >= 0x61 && c <= 0x7a) || (c >= 0x41 && c <= 0x5a) || (c >= 0x30 && c <= 0x39) || c == 0x2d || c == 0x5f;
    if (!ok) return reject("config: bucket must match [-_a-zA-Z0-9]+");
  }
  return Status.OK;
});

onMessage((subject: Span, payload: Span): Status => {
  const order = jsonParse(payload);
  if (order == MISSING) {
    reject("malformed-json: ");
    reason(lastError);
    reason(" at offset ");
    reason(lastErrorOffset);
    return Status.REJECT;
  }
  if (jsonKind(order) != Kind.OBJECT) {
    reject("malformed-json: expected an object, got ");
    reason(kindPhrase(jsonKind(order)));
    return Status.REJECT;
  }
  const idValue = jsonField(order, "orderId");
  if (idValue == MISSING) return reject("missing-order-id");
  if (idValue == DUPLICATE) return reject("malformed-json: duplicate key \"orderId\"");
  const id = jsonInt(idValue);
  if (lastError.length != 0) {
    reject("invalid-order-id: ");
    reason(lastError);
    return Status.REJECT;
  }
  kvPut(bucket, formatInt(id), payload);
  return Status.OK;
});
