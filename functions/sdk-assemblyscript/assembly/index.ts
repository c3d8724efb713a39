// ebbtide guest SDK for AssemblyScript, guest ABI version 2 (docs/abi.md): the handler is called once per
// message, whether the host sends one message per call (ebbtide_handle) or a batch (ebbtide_handle_batch).
//
// A function's main.ts:
//
//     import { Span, Status, onInit, onMessage, kvPut, reject } from "ebbtide";
//     export * from "ebbtide/exports"; // the ABI exports: memory is exported by the compiler
//     onMessage((subject: Span, payload: Span): Status => { ...; return Status.OK; });
//
// Byte strings in linear memory (subject, payload, JSON values, decoded config) are `Span`s: a u64
// packing (address << 32 | length), so nothing on the hot path allocates (the module is built with
// the "stub" runtime, which never frees). AssemblyScript `string`s (UTF-16) are accepted where text
// comes from the function's code (subjects, reasons, JSON key names) and are written as UTF-8.
//
// Behaves like the Zig SDK (functions/sdk/ebbtide.zig): the same strict JSON validator and error
// texts, the same reason rules (at most 512 bytes, cut at a character boundary with "...", invalid
// UTF-8 replaced by '?') and the same effect encoding.

export const ABI_VERSION: i32 = 2;
export const INPUT_CAPACITY: i32 = 64 * 1024;
/** The most output one message may have: the whole input plus effect framing fits, alone or in a batch. */
export const MAX_OUTPUT_LEN: i32 = INPUT_CAPACITY + 1024 - 4;
// A batch's progress counter and a record header (status, length) besides one message's largest output.
const BATCH_HEADER_LEN: i32 = 4;
const RECORD_HEADER_LEN: i32 = 8;
export const OUTPUT_CAPACITY: i32 = BATCH_HEADER_LEN + RECORD_HEADER_LEN + MAX_OUTPUT_LEN;
export const MAX_REASON_LEN: i32 = 512;
export const JSON_MAX_DEPTH: i32 = 64;

// @ts-ignore: decorator
@inline const INPUT: usize = memory.data(65536, 16);
// @ts-ignore: decorator
@inline const OUTPUT: usize = memory.data(66568, 16); // OUTPUT_CAPACITY
// AssemblyScript strings (UTF-16) are encoded here before they are written or compared.
// @ts-ignore: decorator
@inline const SCRATCH: usize = memory.data(2048, 16);
const SCRATCH_CAPACITY: i32 = 2048;

export enum Status {
  OK = 0, // the output holds a MessagePack array of effects
  REJECT = 1, // permanent: the input is dead-lettered with the reason
  RETRY = 2, // transient: the input is redelivered with backoff
}

// ---- spans ----------------------------------------------------------------------------------------

export type Span = u64;

export function span(ptr: usize, len: i32): Span {
  return ((<u64>ptr) << 32) | <u64>(<u32>len);
}
export function spanPtr(s: Span): usize {
  return <usize>(s >> 32);
}
export function spanLen(s: Span): i32 {
  return <i32>(<u32>s);
}
export function spanEquals(a: Span, b: Span): bool {
  return spanLen(a) == spanLen(b) && memory.compare(spanPtr(a), spanPtr(b), spanLen(a)) == 0;
}

/** The UTF-8 bytes of `s` in a scratch buffer (valid until the next SDK call), at most 2048 bytes. */
export function utf8(s: string): Span {
  return span(SCRATCH, encodeUtf8String(s, SCRATCH, SCRATCH_CAPACITY));
}

function encodeUtf8String(s: string, dst: usize, cap: i32): i32 {
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    let cp = <u32>s.charCodeAt(i);
    if (cp >= 0xd800 && cp <= 0xdbff && i + 1 < s.length) {
      const low = <u32>s.charCodeAt(i + 1);
      if (low >= 0xdc00 && low <= 0xdfff) {
        cp = 0x10000 + ((cp - 0xd800) << 10) + (low - 0xdc00);
        i++;
      }
    }
    if (cp >= 0xd800 && cp <= 0xdfff) cp = 0x3f; // a lone surrogate: '?'
    const len = cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
    if (n + len > cap) break;
    n += encodeCodePoint(cp, dst + n);
  }
  return n;
}

function encodeCodePoint(cp: u32, dst: usize): i32 {
  if (cp < 0x80) {
    store<u8>(dst, cp);
    return 1;
  }
  if (cp < 0x800) {
    store<u8>(dst, 0xc0 | (cp >> 6));
    store<u8>(dst + 1, 0x80 | (cp & 0x3f));
    return 2;
  }
  if (cp < 0x10000) {
    store<u8>(dst, 0xe0 | (cp >> 12));
    store<u8>(dst + 1, 0x80 | ((cp >> 6) & 0x3f));
    store<u8>(dst + 2, 0x80 | (cp & 0x3f));
    return 3;
  }
  store<u8>(dst, 0xf0 | (cp >> 18));
  store<u8>(dst + 1, 0x80 | ((cp >> 12) & 0x3f));
  store<u8>(dst + 2, 0x80 | ((cp >> 6) & 0x3f));
  store<u8>(dst + 3, 0x80 | (cp & 0x3f));
  return 4;
}

function utf8LeadLen(b: u32): i32 {
  if (b < 0x80) return 1;
  if (b >= 0xc2 && b <= 0xdf) return 2;
  if (b >= 0xe0 && b <= 0xef) return 3;
  if (b >= 0xf0 && b <= 0xf4) return 4;
  return 1; // invalid lead byte
}

/** Length (1..4) of the valid UTF-8 sequence at base[i] (of len bytes), or 0 if invalid or incomplete. */
function utf8SeqLen(base: usize, len: i32, i: i32): i32 {
  const b0 = <u32>load<u8>(base + i);
  if (b0 < 0x80) return 1;
  const n = utf8LeadLen(b0);
  if (n == 1 || i + n > len) return 0;
  let lo: u32 = 0x80;
  let hi: u32 = 0xbf;
  if (b0 == 0xe0) lo = 0xa0; // no overlong 3-byte forms
  else if (b0 == 0xed) hi = 0x9f; // no surrogates
  else if (b0 == 0xf0) lo = 0x90; // no overlong 4-byte forms
  else if (b0 == 0xf4) hi = 0x8f; // <= U+10FFFF
  const b1 = <u32>load<u8>(base + i + 1);
  if (b1 < lo || b1 > hi) return 0;
  for (let k = 2; k < n; k++) {
    if ((<u32>load<u8>(base + i + k) & 0xc0) != 0x80) return 0;
  }
  return n;
}

// ---- output: effects (MessagePack) or a reason (UTF-8) ----------------------------------------------
// Layout at `frame`: little-endian u32 length N, then N bytes (frame 0 for one message; inside its
// record in a batch). Effects: an array16 header (0xdc + big-endian count) reserved at the start of the
// body and patched when the handler returns OK.

const NO_REASON: i32 = -1;
const DOES_NOT_FIT: i32 = -1;
// A batch stops before a message when less than this is left: its record header, the longest reason (so
// a REJECT/RETRY always fits) and an empty effect array.
const MIN_RECORD_ROOM: i32 = RECORD_HEADER_LEN + MAX_REASON_LEN + 3;

let inHandle = false;
let frame: i32 = 0;
let bodyStart: i32 = 4;
let pos: i32 = 7;
let limit: i32 = 4 + MAX_OUTPUT_LEN; // the end of the room for this message's output
// The room ends at the buffer's end before the message's own cap: in a batch, a message that overflows
// it is handled first in the next call (DOES_NOT_FIT).
let roomLimited = false;
let outputEnd: i32 = 0; // where the output ends, once finished
let count: i32 = 0;
let overflow = false;
let reasonStatus: i32 = NO_REASON;
let truncated = false;

function beginAt(handle: bool, at: i32, first: bool): void {
  inHandle = handle;
  frame = at;
  bodyStart = at + 4;
  pos = bodyStart + 3;
  const cap = bodyStart + MAX_OUTPUT_LEN;
  roomLimited = !first && cap > OUTPUT_CAPACITY;
  limit = roomLimited ? OUTPUT_CAPACITY : cap;
  count = 0;
  overflow = false;
  reasonStatus = NO_REASON;
  truncated = false;
}

function begin(handle: bool): void {
  beginAt(handle, 0, true);
}

function put(src: usize, len: i32): void {
  if (overflow) return;
  if (len > limit - pos) {
    overflow = true;
    return;
  }
  memory.copy(OUTPUT + pos, src, len);
  pos += len;
}

function putByte(b: u32): void {
  if (overflow) return;
  if (pos >= limit) {
    overflow = true;
    return;
  }
  store<u8>(OUTPUT + pos, b);
  pos++;
}

// tag8, tag8+1, tag8+2: the 8/16/32-bit length forms of str (0xd9) and bin (0xc4)
function putHeader(tag8: u32, len: i32): void {
  if (len < 0x100) {
    putByte(tag8);
    putByte(len);
  } else if (len < 0x10000) {
    putByte(tag8 + 1);
    putByte(len >> 8);
    putByte(len & 0xff);
  } else {
    putByte(tag8 + 2);
    putByte(len >>> 24);
    putByte((len >> 16) & 0xff);
    putByte((len >> 8) & 0xff);
    putByte(len & 0xff);
  }
}

function putStr(s: Span): void {
  const len = spanLen(s);
  if (len < 32) putByte(0xa0 | len);
  else putHeader(0xd9, len);
  put(spanPtr(s), len);
}

function putBin(b: Span): void {
  putHeader(0xc4, spanLen(b));
  put(spanPtr(b), spanLen(b));
}

function beginEffect(n: u32, tag: string): bool {
  if (reasonStatus != NO_REASON || !inHandle) return false;
  if (count == 0xffff) overflow = true;
  if (overflow) return false;
  count++;
  putByte(0x90 | n);
  // the tag is ASCII and short: written directly, so a subject passed as utf8(...) is not overwritten
  putByte(0xa0 | tag.length);
  for (let i = 0; i < tag.length; i++) putByte(<u32>tag.charCodeAt(i));
  return true;
}

// A text argument: an AssemblyScript string, or a Span of UTF-8 bytes.
function textSpan<T>(text: T): Span {
  if (isString<T>()) return utf8(changetype<string>(text));
  return <Span>text;
}

/** Appends ["publish", subject, payload]; `subject` is a string or a Span. */
export function publish<S>(subject: S, payload: Span): void {
  if (!beginEffect(3, "publish")) return;
  putStr(textSpan<S>(subject));
  putBin(payload);
}

/** Appends ["kv_put", bucket, key, value]; `bucket` and `key` are strings or Spans. */
export function kvPut<B, K>(bucket: B, key: K, value: Span): void {
  if (!beginEffect(4, "kv_put")) return;
  putStr(textSpan<B>(bucket));
  putStr(textSpan<K>(key));
  putBin(value);
}

/** True once an effect did not fit: the call ends as REJECT "output buffer overflow" (permanent,
 * because the same input would overflow again on every redelivery). */
export function overflowed(): bool {
  return overflow;
}

function setReason(status: Status, text: Span): Status {
  reasonStatus = status;
  pos = bodyStart;
  truncated = false;
  overflow = false;
  reasonBytes(text);
  return status;
}

function reasonBytes(s: Span): void {
  if (reasonStatus == NO_REASON || truncated) return;
  const room = bodyStart + MAX_REASON_LEN - pos;
  const len = spanLen(s);
  const n = len > room ? room : len;
  if (n < len) truncated = true;
  memory.copy(OUTPUT + pos, spanPtr(s), n);
  pos += n;
}

/** Discard the effects written so far, start the reason with `text` (a string or a Span) and return
 * REJECT, so a handler can `return reject("missing-order-id")`. Append more with `reason`. */
export function reject<T>(text: T): Status {
  return setReason(Status.REJECT, textSpan<T>(text));
}

/** Like `reject`, for a transient failure: the input is redelivered with backoff. */
export function retry<T>(text: T): Status {
  return setReason(Status.RETRY, textSpan<T>(text));
}

/** Appends to the reason started by reject/retry: a string, a Span, or an integer (in decimal). */
export function reason<T>(text: T): void {
  if (isInteger<T>()) {
    reasonBytes(formatInt(<i64>text));
  } else {
    reasonBytes(textSpan<T>(text));
  }
}

function writeEnd(end: i32): void {
  store<u32>(OUTPUT + frame, <u32>(end - bodyStart)); // wasm is little-endian
  outputEnd = end;
}

// Makes the reason valid UTF-8, appends "..." if it was cut, and writes the length prefix.
function finishReason(): void {
  let end = pos;
  if (truncated) { // drop a character cut in half by the length cap
    let k = end;
    while (k > bodyStart && end - k < 3 && (<u32>load<u8>(OUTPUT + k - 1) & 0xc0) == 0x80) k--;
    if (k > bodyStart && <u32>load<u8>(OUTPUT + k - 1) >= 0xc0 && end - (k - 1) < utf8LeadLen(load<u8>(OUTPUT + k - 1)))
      end = k - 1;
  }
  let i = bodyStart;
  while (i < end) {
    const n = utf8SeqLen(OUTPUT, end, i);
    if (n == 0) {
      store<u8>(OUTPUT + i, 0x3f); // '?'
      i++;
    } else i += n;
  }
  if (truncated) {
    store<u8>(OUTPUT + end, 0x2e);
    store<u8>(OUTPUT + end + 1, 0x2e);
    store<u8>(OUTPUT + end + 2, 0x2e);
    end += 3;
  }
  writeEnd(end);
}

// The status, with the output written; DOES_NOT_FIT when a batch must stop before this message.
function finish(returned: Status): i32 {
  if (reasonStatus != NO_REASON) {
    finishReason();
    return reasonStatus;
  }
  if (returned != Status.OK) {
    if (returned != Status.REJECT && returned != Status.RETRY) {
      setReason(Status.RETRY, utf8("invalid status returned by the function: "));
      reason<i32>(returned);
    } else {
      setReason(returned, utf8("no reason given"));
    }
    finishReason();
    return reasonStatus;
  }
  if (!inHandle) {
    writeEnd(bodyStart);
    return Status.OK;
  }
  if (overflow) {
    if (roomLimited) return DOES_NOT_FIT;
    setReason(Status.REJECT, utf8("output buffer overflow"));
    finishReason();
    return Status.REJECT;
  }
  store<u8>(OUTPUT + bodyStart, 0xdc); // array16
  store<u8>(OUTPUT + bodyStart + 1, count >> 8);
  store<u8>(OUTPUT + bodyStart + 2, count & 0xff);
  writeEnd(pos);
  return Status.OK;
}

// ---- the function's handlers -------------------------------------------------------------------------

function acceptAnyConfig(config: Span): Status {
  return Status.OK;
}

function noHandler(subject: Span, payload: Span): Status {
  return retry("no handler: the function did not call onMessage");
}

let initHandler: (config: Span) => Status = acceptAnyConfig;
let messageHandler: (subject: Span, payload: Span) => Status = noHandler;
let initialized = false;

/** Registers the handler called once per message with the subject and the payload. */
export function onMessage(handler: (subject: Span, payload: Span) => Status): void {
  messageHandler = handler;
}

/** Registers the handler called once per instance with the config (a validated JSON object); without
 * one, any config object is accepted. The config lives in the input buffer, which the next message
 * overwrites: copy what you keep (configString does). */
export function onInit(handler: (config: Span) => Status): void {
  initHandler = handler;
}

// ---- ABI exports (re-exported by "ebbtide/exports") ----------------------------------------------------

export function ebbtide_abi_version(): i32 {
  return ABI_VERSION;
}
export function ebbtide_input_ptr(): i32 {
  return <i32>INPUT;
}
export function ebbtide_input_capacity(): i32 {
  return INPUT_CAPACITY;
}
export function ebbtide_output_ptr(): i32 {
  return <i32>OUTPUT;
}
export function ebbtide_output_capacity(): i32 {
  return OUTPUT_CAPACITY;
}

export function ebbtide_init(configLen: i32): i32 {
  initialized = false;
  begin(false);
  if (configLen < 0 || configLen > INPUT_CAPACITY) return finish(reject("config: length out of range"));
  let object = span(OBJECT_TEXT, 2); // an empty config is `{}`
  if (configLen != 0) {
    const parsed = jsonParse(span(INPUT, configLen));
    if (parsed == MISSING) {
      reject("config: malformed-json: ");
      reason(lastError);
      reason(" at offset ");
      reason<i32>(lastErrorOffset);
      return finish(Status.REJECT);
    }
    if (jsonKind(parsed) != Kind.OBJECT) {
      reject("config: expected a JSON object, got ");
      reason(kindPhrase(jsonKind(parsed)));
      return finish(Status.REJECT);
    }
    object = parsed;
  }
  const rc = finish(initHandler(object));
  initialized = rc == Status.OK;
  return rc;
}

// One message whose subject starts at INPUT + start; beginAt said where its output goes.
function handleAt(start: i32, subjectLen: i32, payloadLen: i32): i32 {
  if (!initialized) return finish(retry("not initialized: ebbtide_init has not succeeded"));
  if (!validRecord(start, subjectLen, payloadLen))
    return finish(reject("invalid-input: subject_len/payload_len out of range"));
  const subject = INPUT + <usize>start;
  return finish(messageHandler(span(subject, subjectLen), span(subject + subjectLen, payloadLen)));
}

function validRecord(start: i32, subjectLen: i32, payloadLen: i32): bool {
  return subjectLen >= 0 && payloadLen >= 0 && subjectLen <= INPUT_CAPACITY - start &&
    payloadLen <= INPUT_CAPACITY - start - subjectLen;
}

export function ebbtide_handle(subjectLen: i32, payloadLen: i32): i32 {
  begin(true);
  return handleAt(0, subjectLen, payloadLen);
}

/** Input: `count` records `u32 subject_len, u32 payload_len, subject, payload`. Output: `u32 done`, then
 * per message `u32 status, u32 length, output`; `done` is bumped after each message, so the host can read
 * what was finished before a trap. Returns how many messages were handled: fewer than `count` when the
 * output buffer is full (the host sends the rest in another call). */
export function ebbtide_handle_batch(batchCount: i32): i32 {
  store<u32>(OUTPUT, 0);
  let done: i32 = 0;
  let inPos: i32 = 0;
  let record: i32 = BATCH_HEADER_LEN;
  while (done < batchCount) {
    if (done > 0 && OUTPUT_CAPACITY - record < MIN_RECORD_ROOM) break;
    beginAt(true, record + 4, done == 0);
    // A record outside the input buffer gets handleAt's invalid-input REJECT and ends the batch.
    let subjectLen: i32 = -1;
    let payloadLen: i32 = 0;
    if (INPUT_CAPACITY - inPos >= RECORD_HEADER_LEN) {
      subjectLen = load<i32>(INPUT + <usize>inPos);
      payloadLen = load<i32>(INPUT + <usize>inPos + 4);
    }
    const start = min(inPos + RECORD_HEADER_LEN, INPUT_CAPACITY);
    const status = handleAt(start, subjectLen, payloadLen);
    if (status == DOES_NOT_FIT) break; // it is handled first in the next call
    store<i32>(OUTPUT + <usize>record, status);
    record = outputEnd;
    done++;
    store<i32>(OUTPUT, done);
    if (!validRecord(start, subjectLen, payloadLen)) break;
    inPos = start + subjectLen + payloadLen;
  }
  return done;
}

// ---- helpers ------------------------------------------------------------------------------------------------

// @ts-ignore: decorator
@inline const INT_TEXT: usize = memory.data(20, 8);
// @ts-ignore: decorator
@inline const OBJECT_TEXT: usize = memory.data<u8>([0x7b, 0x7d]); // "{}"

/** Decimal text of n (e.g. a KV key from an integer id), in a buffer valid until the next formatInt. */
export function formatInt(n: i64): Span {
  let mag: u64 = n < 0 ? <u64>(-(n + 1)) + 1 : <u64>n; // no overflow for i64.MIN_VALUE
  let i = 20;
  do {
    i--;
    store<u8>(INT_TEXT + i, <u32>(0x30 + mag % 10));
    mag /= 10;
  } while (mag != 0);
  if (n < 0) {
    i--;
    store<u8>(INT_TEXT + i, 0x2d);
  }
  return span(INT_TEXT + i, 20 - i);
}

// ---- JSON: strict RFC 8259 validator + navigation over the validated text ---------------------------------
// A JSON value is the Span of its text (a string's includes the quotes); its kind is read from its first
// byte. Functions that can fail return MISSING (or an undefined value) and set `lastError`.

export enum Kind {
  OBJECT,
  ARRAY,
  STRING,
  NUMBER,
  BOOLEAN,
  NULL,
}

/** Returned by jsonParse on error and by jsonField for an absent key (no JSON value has an empty span). */
export const MISSING: Span = 0;
/** Returned by jsonField when the key occurs more than once (which one wins is ambiguous). */
export const DUPLICATE: Span = 0xffffffffffffffff;

/** Why the last jsonParse / jsonInt / jsonString / ... failed; "" after a success. */
export let lastError: string = "";
/** Where jsonParse found the error (byte offset). */
export let lastErrorOffset: i32 = 0;

export function kindPhrase(kind: Kind): string {
  switch (kind) {
    case Kind.OBJECT: return "an object";
    case Kind.ARRAY: return "an array";
    case Kind.STRING: return "a string";
    case Kind.NUMBER: return "a number";
    case Kind.BOOLEAN: return "a boolean";
    default: return "null";
  }
}

function gotInteger(kind: Kind): string {
  switch (kind) {
    case Kind.OBJECT: return "expected an integer, got an object";
    case Kind.ARRAY: return "expected an integer, got an array";
    case Kind.STRING: return "expected an integer, got a string";
    case Kind.BOOLEAN: return "expected an integer, got a boolean";
    default: return "expected an integer, got null";
  }
}

function gotString(kind: Kind): string {
  switch (kind) {
    case Kind.OBJECT: return "expected a string, got an object";
    case Kind.ARRAY: return "expected a string, got an array";
    case Kind.NUMBER: return "expected a string, got a number";
    case Kind.BOOLEAN: return "expected a string, got a boolean";
    default: return "expected a string, got null";
  }
}

function gotArray(kind: Kind): string {
  switch (kind) {
    case Kind.OBJECT: return "expected an array, got an object";
    case Kind.STRING: return "expected an array, got a string";
    case Kind.NUMBER: return "expected an array, got a number";
    case Kind.BOOLEAN: return "expected an array, got a boolean";
    default: return "expected an array, got null";
  }
}

function gotBoolean(kind: Kind): string {
  switch (kind) {
    case Kind.OBJECT: return "expected a boolean, got an object";
    case Kind.ARRAY: return "expected a boolean, got an array";
    case Kind.STRING: return "expected a boolean, got a string";
    case Kind.NUMBER: return "expected a boolean, got a number";
    default: return "expected a boolean, got null";
  }
}

function kindAt(c: u32): Kind {
  if (c == 0x7b) return Kind.OBJECT; // {
  if (c == 0x5b) return Kind.ARRAY; // [
  if (c == 0x22) return Kind.STRING; // "
  if (c == 0x74 || c == 0x66) return Kind.BOOLEAN; // t f
  if (c == 0x6e) return Kind.NULL; // n
  return Kind.NUMBER;
}

export function jsonKind(value: Span): Kind {
  return kindAt(load<u8>(spanPtr(value)));
}

// @ts-ignore: decorator
@inline function at(base: usize, i: i32): u32 {
  return <u32>load<u8>(base + i);
}

function isWs(c: u32): bool {
  return c == 0x20 || c == 0x09 || c == 0x0a || c == 0x0d;
}

function isDigit(c: u32): bool {
  return c >= 0x30 && c <= 0x39;
}

function skipWs(base: usize, len: i32, i: i32): i32 {
  while (i < len && isWs(at(base, i))) i++;
  return i;
}

/** The value of 4 hex digits at base[i], or -1. */
function hex4(base: usize, len: i32, i: i32): i32 {
  if (i + 4 > len) return -1;
  let v = 0;
  for (let k = i; k < i + 4; k++) {
    const c = at(base, k);
    let d: i32;
    if (c >= 0x30 && c <= 0x39) d = c - 0x30;
    else if (c >= 0x61 && c <= 0x66) d = c - 0x61 + 10;
    else if (c >= 0x41 && c <= 0x46) d = c - 0x41 + 10;
    else return -1;
    v = v * 16 + d;
  }
  return v;
}

// -- navigation over validated text --

function skipString(base: usize, i: i32): i32 {
  let j = i + 1;
  while (at(base, j) != 0x22) j += at(base, j) == 0x5c ? 2 : 1;
  return j + 1;
}

function skipValue(base: usize, len: i32, i: i32): i32 {
  const c = at(base, i);
  if (c == 0x22) return skipString(base, i);
  if (c == 0x74 || c == 0x6e) return i + 4;
  if (c == 0x66) return i + 5;
  if (c == 0x7b || c == 0x5b) {
    let depth = 0;
    let j = i;
    while (true) {
      const d = at(base, j);
      if (d == 0x22) {
        j = skipString(base, j);
        continue;
      }
      if (d == 0x7b || d == 0x5b) depth++;
      else if (d == 0x7d || d == 0x5d) {
        depth--;
        if (depth == 0) return j + 1;
      }
      j++;
    }
  }
  let j = i;
  while (j < len) {
    const d = at(base, j);
    if (!(isDigit(d) || d == 0x2d || d == 0x2b || d == 0x2e || d == 0x65 || d == 0x45)) break;
    j++;
  }
  return j;
}

function valueAt(base: usize, len: i32, i: i32): Span {
  return span(base + i, skipValue(base, len, i) - i);
}

/** For an object: the value of key `name` (compared with the decoded key, so "order\u0049d" is
 * "orderId"); MISSING when absent or not an object, DUPLICATE when the key occurs more than once. */
export function jsonField(object: Span, name: string): Span {
  if (jsonKind(object) != Kind.OBJECT) return MISSING;
  const wanted = utf8(name);
  const base = spanPtr(object);
  const len = spanLen(object);
  let found = MISSING;
  let i = 1;
  while (true) {
    i = skipWs(base, len, i);
    if (at(base, i) == 0x7d) return found; // }
    if (at(base, i) == 0x2c) i = skipWs(base, len, i + 1); // ,
    const keyEnd = skipString(base, i);
    const key = span(base + i + 1, keyEnd - i - 2);
    i = skipWs(base, len, keyEnd); // ':'
    const start = skipWs(base, len, i + 1);
    const value = valueAt(base, len, start);
    i = start + spanLen(value);
    if (decodedEquals(key, wanted, false)) {
      if (found != MISSING) return DUPLICATE;
      found = value;
    }
  }
  return found;
}

/** For an array: its index-th element, or MISSING. */
export function jsonElement(array: Span, index: i32): Span {
  if (jsonKind(array) != Kind.ARRAY) return MISSING;
  const base = spanPtr(array);
  const len = spanLen(array);
  let i = 1;
  let n = 0;
  while (true) {
    i = skipWs(base, len, i);
    if (at(base, i) == 0x5d) return MISSING; // ]
    if (at(base, i) == 0x2c) i = skipWs(base, len, i + 1);
    const value = valueAt(base, len, i);
    if (n == index) return value;
    n++;
    i += spanLen(value);
  }
  return MISSING;
}

/** The number of elements of an array; -1 (and lastError) for other kinds. */
export function jsonArrayLength(value: Span): i32 {
  const kind = jsonKind(value);
  if (kind != Kind.ARRAY) {
    lastError = gotArray(kind);
    return -1;
  }
  lastError = "";
  let n = 0;
  while (jsonElement(value, n) != MISSING) n++;
  return n;
}

/** A JSON integer within i64; on failure returns 0 and sets lastError ("integer out of range", ...). */
export function jsonInt(value: Span): i64 {
  const kind = jsonKind(value);
  if (kind != Kind.NUMBER) {
    lastError = gotInteger(kind);
    return 0;
  }
  const base = spanPtr(value);
  const len = spanLen(value);
  for (let i = 0; i < len; i++) {
    const c = at(base, i);
    if (c == 0x2e) {
      lastError = "expected an integer, got a fractional number";
      return 0;
    }
    if (c == 0x65 || c == 0x45) {
      lastError = "expected an integer, got a number with an exponent";
      return 0;
    }
  }
  const negative = at(base, 0) == 0x2d;
  let mag: u64 = 0;
  for (let i = negative ? 1 : 0; i < len; i++) {
    const d = <u64>(at(base, i) - 0x30);
    if (mag > (u64.MAX_VALUE - d) / 10) {
      lastError = "integer out of range";
      return 0;
    }
    mag = mag * 10 + d;
  }
  const limit: u64 = negative ? (<u64>1) << 63 : ((<u64>1) << 63) - 1;
  if (mag > limit) {
    lastError = "integer out of range";
    return 0;
  }
  lastError = "";
  if (!negative) return <i64>mag;
  if (mag == 0) return 0;
  return -<i64>(mag - 1) - 1;
}

/** The text between a JSON string's quotes, escapes not decoded; MISSING (and lastError) for other kinds. */
export function jsonString(value: Span): Span {
  const kind = jsonKind(value);
  if (kind != Kind.STRING) {
    lastError = gotString(kind);
    return MISSING;
  }
  lastError = "";
  return span(spanPtr(value) + 1, spanLen(value) - 2);
}

/** A JSON boolean; false (and lastError) for other kinds. */
export function jsonBool(value: Span): bool {
  const kind = jsonKind(value);
  if (kind != Kind.BOOLEAN) {
    lastError = gotBoolean(kind);
    return false;
  }
  lastError = "";
  return load<u8>(spanPtr(value)) == 0x74;
}

// -- decoding a validated string (the Span from jsonString) --

let decRaw: Span = 0;
let decI: i32 = 0;
// @ts-ignore: decorator
@inline const PENDING: usize = memory.data(4, 4);
let pendingLen: i32 = 0;
let pendingI: i32 = 0;

function decodeStart(escaped: Span): void {
  decRaw = escaped;
  decI = 0;
  pendingLen = 0;
  pendingI = 0;
}

/** The next decoded byte, or -1 at the end. */
function decodeNext(): i32 {
  if (pendingI < pendingLen) return <i32>load<u8>(PENDING + pendingI++);
  const base = spanPtr(decRaw);
  const len = spanLen(decRaw);
  if (decI >= len) return -1;
  const c = at(base, decI);
  if (c != 0x5c) {
    decI++;
    return c;
  }
  const e = at(base, decI + 1);
  decI += 2;
  if (e == 0x62) return 0x08; // b
  if (e == 0x66) return 0x0c; // f
  if (e == 0x6e) return 0x0a; // n
  if (e == 0x72) return 0x0d; // r
  if (e == 0x74) return 0x09; // t
  if (e == 0x75) { // u
    let cp = <u32>hex4(base, len, decI);
    decI += 4;
    if (cp >= 0xd800 && cp <= 0xdbff) { // validated: a "\uDC00".."\uDFFF" follows
      const low = <u32>hex4(base, len, decI + 2);
      decI += 6;
      cp = 0x10000 + ((cp - 0xd800) << 10) + (low - 0xdc00);
    }
    pendingLen = encodeCodePoint(cp, PENDING);
    pendingI = 1;
    return <i32>load<u8>(PENDING);
  }
  return e; // '"', '\\', '/'
}

function lowerAscii(c: u32): u32 {
  return c >= 0x41 && c <= 0x5a ? c + 32 : c;
}

function decodedEquals(escaped: Span, bytes: Span, ignoreCase: bool): bool {
  decodeStart(escaped);
  const base = spanPtr(bytes);
  for (let i = 0; i < spanLen(bytes); i++) {
    const b = decodeNext();
    if (b < 0) return false;
    const x = <u32>b;
    const y = at(base, i);
    if (ignoreCase ? lowerAscii(x) != lowerAscii(y) : x != y) return false;
  }
  return decodeNext() < 0;
}

/** Decoded JSON string (from jsonString) == s. */
export function stringEquals(escaped: Span, s: string): bool {
  return decodedEquals(escaped, utf8(s), false);
}

/** Decoded JSON string (from jsonString) == s, ignoring ASCII case. */
export function stringEqualsIgnoreCase(escaped: Span, s: string): bool {
  return decodedEquals(escaped, utf8(s), true);
}

/** Copies the decoded bytes into buf (cap bytes, e.g. from memory.data); MISSING if they do not fit. */
export function stringDecode(escaped: Span, buf: usize, cap: i32): Span {
  decodeStart(escaped);
  let n = 0;
  for (let b = decodeNext(); b >= 0; b = decodeNext()) {
    if (n == cap) return MISSING;
    store<u8>(buf + n, b);
    n++;
  }
  return span(buf, n);
}

// -- validation: each scan returns the index after the token, or -1 with lastError/lastErrorOffset set --

function fail(message: string, offset: i32): i32 {
  lastError = message;
  lastErrorOffset = offset;
  return -1;
}

function scanString(base: usize, len: i32, i: i32): i32 {
  let j = i + 1;
  while (true) {
    if (j >= len) return fail("unterminated string", i);
    const c = at(base, j);
    if (c == 0x22) return j + 1;
    if (c == 0x5c) {
      if (j + 1 >= len) return fail("unterminated string", i);
      const e = at(base, j + 1);
      if (e == 0x22 || e == 0x5c || e == 0x2f || e == 0x62 || e == 0x66 || e == 0x6e || e == 0x72 || e == 0x74) {
        j += 2;
      } else if (e == 0x75) {
        const cp = hex4(base, len, j + 2);
        if (cp < 0) return fail("invalid \\u escape", j);
        if (cp >= 0xd800 && cp <= 0xdbff) {
          if (j + 8 > len || at(base, j + 6) != 0x5c || at(base, j + 7) != 0x75)
            return fail("unpaired surrogate in \\u escape", j);
          const low = hex4(base, len, j + 8);
          if (low < 0) return fail("invalid \\u escape", j + 6);
          if (low < 0xdc00 || low > 0xdfff) return fail("unpaired surrogate in \\u escape", j);
          j += 12;
        } else if (cp >= 0xdc00 && cp <= 0xdfff) {
          return fail("unpaired surrogate in \\u escape", j);
        } else j += 6;
      } else return fail("invalid escape in string", j);
    } else if (c < 0x20) {
      return fail("control character in string", j);
    } else if (c < 0x80) {
      j++;
    } else {
      const n = utf8SeqLen(base, len, j);
      if (n == 0) return fail("invalid UTF-8 in string", j);
      j += n;
    }
  }
  return -1;
}

// `"key"` `:` at base[i]; returns the index of the member's value (whitespace skipped).
function scanKey(base: usize, len: i32, i: i32): i32 {
  if (i >= len) return fail("unexpected end of input", i);
  if (at(base, i) != 0x22) return fail("expected a string key", i);
  const end = scanString(base, len, i);
  if (end < 0) return end;
  const colon = skipWs(base, len, end);
  if (colon >= len) return fail("unexpected end of input", colon);
  if (at(base, colon) != 0x3a) return fail("expected ':' after object key", colon);
  return skipWs(base, len, colon + 1);
}

function scanNumber(base: usize, len: i32, i: i32): i32 {
  let j = i;
  if (at(base, j) == 0x2d) j++;
  if (j >= len || !isDigit(at(base, j))) return fail("invalid number", i);
  if (at(base, j) == 0x30) {
    j++;
    if (j < len && isDigit(at(base, j))) return fail("invalid number: leading zero", i);
  } else {
    while (j < len && isDigit(at(base, j))) j++;
  }
  if (j < len && at(base, j) == 0x2e) {
    j++;
    if (j >= len || !isDigit(at(base, j))) return fail("invalid number: digit expected after '.'", j);
    while (j < len && isDigit(at(base, j))) j++;
  }
  if (j < len && (at(base, j) == 0x65 || at(base, j) == 0x45)) {
    j++;
    if (j < len && (at(base, j) == 0x2b || at(base, j) == 0x2d)) j++;
    if (j >= len || !isDigit(at(base, j))) return fail("invalid number: digit expected in exponent", j);
    while (j < len && isDigit(at(base, j))) j++;
  }
  return j;
}

function scanLiteral(base: usize, len: i32, i: i32, word: string): i32 {
  const n = word.length;
  if (i + n > len) return fail("invalid literal", i);
  for (let k = 0; k < n; k++) {
    if (at(base, i + k) != <u32>word.charCodeAt(k)) return fail("invalid literal", i);
  }
  return i + n;
}

function validate(base: usize, len: i32): bool {
  let i = skipWs(base, len, 0);
  if (i == len) {
    fail(len == 0 ? "empty input" : "no value, only whitespace", i);
    return false;
  }
  let depth = 0;
  let arrays: u64 = 0; // bit d set: the container at depth d+1 is an array
  while (true) {
    // a value is expected at base[i]
    if (i >= len) return fail("unexpected end of input", i) == 0;
    const c = at(base, i);
    let valueEnded = true;
    if (c == 0x7b || c == 0x5b) {
      if (depth == JSON_MAX_DEPTH) return fail("nesting deeper than 64 levels", i) == 0;
      const isArray = c == 0x5b;
      const bit = (<u64>1) << depth;
      arrays = isArray ? arrays | bit : arrays & ~bit;
      depth++;
      i = skipWs(base, len, i + 1);
      if (i < len && at(base, i) == (isArray ? 0x5d : 0x7d)) {
        depth--;
        i++; // an empty container: a complete value
      } else if (isArray) {
        valueEnded = false;
      } else {
        i = scanKey(base, len, i);
        if (i < 0) return false;
        valueEnded = false;
      }
    } else if (c == 0x22) {
      i = scanString(base, len, i);
    } else if (c == 0x74) {
      i = scanLiteral(base, len, i, "true");
    } else if (c == 0x66) {
      i = scanLiteral(base, len, i, "false");
    } else if (c == 0x6e) {
      i = scanLiteral(base, len, i, "null");
    } else if (c == 0x2d || isDigit(c)) {
      i = scanNumber(base, len, i);
    } else {
      return fail("unexpected character", i) == 0;
    }
    if (i < 0) return false;
    while (valueEnded) { // a value just ended at base[i]
      i = skipWs(base, len, i);
      if (depth == 0) {
        if (i != len) return fail("unexpected data after the JSON value", i) == 0;
        return true;
      }
      if (i >= len) return fail("unexpected end of input", i) == 0;
      const inArray = ((arrays >> <u64>(depth - 1)) & 1) == 1;
      const d = at(base, i);
      if (d == 0x2c) {
        i = skipWs(base, len, i + 1);
        if (!inArray) {
          i = scanKey(base, len, i);
          if (i < 0) return false;
        }
        valueEnded = false; // a value is expected next
      } else if (d == (inArray ? 0x5d : 0x7d)) {
        depth--;
        i++;
      } else {
        return fail(inArray ? "expected ',' or ']'" : "expected ',' or '}'", i) == 0;
      }
    }
  }
  return false;
}

/** Validates all of `text` (grammar, escapes and surrogate pairs, UTF-8, depth <= 64, nothing after the
 * value) and returns its top-level value, or MISSING with lastError and lastErrorOffset set. */
export function jsonParse(text: Span): Span {
  const base = spanPtr(text);
  const len = spanLen(text);
  if (!validate(base, len)) return MISSING;
  lastError = "";
  return valueAt(base, len, skipWs(base, len, 0));
}

// ---- config --------------------------------------------------------------------------------------------------

/** Looks up a string value of the config and copies its decoded bytes into buf (static storage, e.g.
 * memory.data(256)); MISSING when absent; on an unusable value, MISSING with lastError set
 * ("must be a string", "is given more than once", "is too long"). */
export function configString(config: Span, name: string, buf: usize, cap: i32): Span {
  lastError = "";
  const value = jsonField(config, name);
  if (value == MISSING) return MISSING;
  if (value == DUPLICATE) {
    lastError = "is given more than once";
    return MISSING;
  }
  const escaped = jsonString(value);
  if (escaped == MISSING) {
    lastError = "must be a string";
    return MISSING;
  }
  const decoded = stringDecode(escaped, buf, cap);
  if (decoded == MISSING) lastError = "is too long";
  return decoded;
}
