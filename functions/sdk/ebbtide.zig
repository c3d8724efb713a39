//! ebbtide guest SDK for the guest ABI, version 2 (see docs/abi.md): one message per call
//! (`ebbtide_handle`, as in version 1) or several (`ebbtide_handle_batch`), the same handler for both.
//!
//! A function's main.zig plugs its code in with
//!
//!     const ebbtide = @import("ebbtide");
//!     comptime { ebbtide.exportFunction(@This()); }
//!     pub fn init(config: ebbtide.Config, out: *ebbtide.Output) ebbtide.Status { ... } // optional
//!     pub fn handle(msg: ebbtide.Message, out: *ebbtide.Output) ebbtide.Status { ... }
//!
//! The SDK owns the static input/output buffers and the `ebbtide_*` exports. It imports nothing and
//! does not use `std` (no allocator, no WASI): everything below is plain Zig over static buffers.

pub const abi_version: i32 = 2;
pub const input_capacity: usize = 64 * 1024;
/// The most output one message may have (its effects or its reason): room for the whole input plus the
/// effect framing, so any accepted input fits in one publish. The same in a batch as alone.
pub const max_output_len: usize = input_capacity + 1024 - 4;
// A batch's output starts with its progress counter and each message's output with its status and length
// (docs/abi.md): the buffer holds those 12 bytes besides one message's largest output, so the first
// message of a batch has the same room as a message handled alone.
const batch_header_len: usize = 4;
const record_header_len: usize = 8;
pub const output_capacity: usize = batch_header_len + record_header_len + max_output_len;
// A batch stops before a message when less than this is left: room for its record header and the
// longest reason (so a REJECT/RETRY always fits), and for an empty effect array.
const min_record_room: usize = record_header_len + max_reason_len + 3;

/// Reasons (REJECT/RETRY/init refusal) are capped at this many bytes; a longer reason is cut at a
/// UTF-8 character boundary and ends with "...". Reasons are always valid UTF-8: any invalid byte
/// a function passes in is replaced by '?'.
pub const max_reason_len: usize = 512;

var input_buffer: [input_capacity]u8 align(16) = undefined;
var output_buffer: [output_capacity]u8 align(16) = undefined;
var initialized: bool = false;

pub const Status = enum(i32) {
    /// the output holds a MessagePack array of effects
    ok = 0,
    /// permanent failure: the input is dead-lettered with the reason
    reject = 1,
    /// transient failure: the input is redelivered with backoff
    retry = 2,
};

/// One input message. Both slices point into the input buffer and are only valid during `handle`.
pub const Message = struct {
    subject: []const u8,
    payload: []const u8,
};

pub fn Result(comptime T: type) type {
    return union(enum) {
        ok: T,
        /// a short, specific, static description of what is wrong
        err: []const u8,
    };
}

// ---------------------------------------------------------------------------------------------
// Exports
// ---------------------------------------------------------------------------------------------

/// Exports the ABI functions for `Impl` (normally the function's main.zig, `@This()`). `Impl` must
/// declare `pub fn handle(Message, *Output) Status` and may declare `pub fn init(Config, *Output) Status`
/// (a function without `init` accepts any JSON-object config).
pub fn exportFunction(comptime Impl: type) void {
    if (!@hasDecl(Impl, "handle"))
        @compileError("an ebbtide function must declare `pub fn handle(msg: ebbtide.Message, out: *ebbtide.Output) ebbtide.Status`");

    const Glue = struct {
        fn abiVersion() callconv(.c) i32 {
            return abi_version;
        }
        fn inputPtr() callconv(.c) i32 {
            return @intCast(@intFromPtr(&input_buffer));
        }
        fn inputCapacity() callconv(.c) i32 {
            return @intCast(input_capacity);
        }
        fn outputPtr() callconv(.c) i32 {
            return @intCast(@intFromPtr(&output_buffer));
        }
        fn outputCapacity() callconv(.c) i32 {
            return @intCast(output_capacity);
        }

        fn init(config_len: i32) callconv(.c) i32 {
            initialized = false;
            var out = Output.begin(.init);
            if (config_len < 0 or config_len > input_capacity) {
                return out.finish(out.reject("config: length out of range"));
            }
            const text = input_buffer[0..@intCast(config_len)];
            // An empty config is treated as `{}`.
            var object = json.Value{ .kind = .object, .raw = "{}" };
            if (text.len != 0) {
                switch (json.parse(text)) {
                    .ok => |v| object = v,
                    .err => |e| return out.finish(out.reject(.{ "config: malformed-json: ", e.message, " at offset ", e.offset })),
                }
                if (object.kind != .object)
                    return out.finish(out.reject(.{ "config: expected a JSON object, got ", object.kind.phrase() }));
            }
            const status: Status = if (@hasDecl(Impl, "init")) Impl.init(.{ .object = object }, &out) else .ok;
            const rc = out.finish(status);
            initialized = rc == 0;
            return rc;
        }

        fn handle(subject_len: i32, payload_len: i32) callconv(.c) i32 {
            var out = Output.begin(.handle);
            if (subject_len < 0 or payload_len < 0) return handleAt(&out, 0, input_capacity + 1, 0);
            return handleAt(&out, 0, @intCast(subject_len), @intCast(payload_len));
        }

        /// One message whose subject starts at input_buffer[start]; `out` says where its output goes.
        fn handleAt(out: *Output, start: usize, subject_len: usize, payload_len: usize) i32 {
            if (!initialized) {
                return out.finish(out.retry("not initialized: ebbtide_init has not succeeded"));
            }
            if (subject_len > input_capacity - start or payload_len > input_capacity - start - subject_len) {
                return out.finish(out.reject("invalid-input: subject_len/payload_len out of range"));
            }
            const p = start + subject_len;
            const msg = Message{ .subject = input_buffer[start..p], .payload = input_buffer[p .. p + payload_len] };
            return out.finish(Impl.handle(msg, out));
        }

        /// Input: `count` records `u32 subject_len, u32 payload_len, subject, payload`. Output: `u32 done`,
        /// then per message `u32 status, u32 length, output`; `done` is bumped after each message, so the
        /// host can read what was finished before a trap. Returns how many messages were handled: fewer
        /// than `count` when the output buffer is full (the host sends the rest in another call).
        fn handleBatch(count: i32) callconv(.c) i32 {
            writeU32(0, 0);
            var done: i32 = 0;
            var in_pos: usize = 0;
            var record: usize = batch_header_len;
            while (done < count) {
                if (done > 0 and output_capacity - record < min_record_room) break;
                var out = Output.beginRecord(record, done == 0);
                // A record outside the input buffer gets handleAt's invalid-input REJECT and ends the batch.
                var subject_len: usize = input_capacity + 1;
                var payload_len: usize = 0;
                if (input_capacity - in_pos >= record_header_len) {
                    subject_len = readU32(in_pos);
                    payload_len = readU32(in_pos + 4);
                }
                const start = @min(in_pos + record_header_len, input_capacity);
                const status = handleAt(&out, start, subject_len, payload_len);
                if (status == Output.does_not_fit) break; // it is handled first in the next call
                writeU32(record, @bitCast(status));
                record = out.end;
                done += 1;
                writeU32(0, @intCast(done));
                if (subject_len > input_capacity - start or payload_len > input_capacity - start - subject_len) break;
                in_pos = start + subject_len + payload_len;
            }
            return done;
        }
    };

    @export(&Glue.abiVersion, .{ .name = "ebbtide_abi_version" });
    @export(&Glue.inputPtr, .{ .name = "ebbtide_input_ptr" });
    @export(&Glue.inputCapacity, .{ .name = "ebbtide_input_capacity" });
    @export(&Glue.outputPtr, .{ .name = "ebbtide_output_ptr" });
    @export(&Glue.outputCapacity, .{ .name = "ebbtide_output_capacity" });
    @export(&Glue.init, .{ .name = "ebbtide_init" });
    @export(&Glue.handle, .{ .name = "ebbtide_handle" });
    @export(&Glue.handleBatch, .{ .name = "ebbtide_handle_batch" });
}

fn readU32(at: usize) usize {
    return @as(usize, input_buffer[at]) | @as(usize, input_buffer[at + 1]) << 8 |
        @as(usize, input_buffer[at + 2]) << 16 | @as(usize, input_buffer[at + 3]) << 24;
}

fn writeU32(at: usize, n: u32) void {
    output_buffer[at] = @truncate(n);
    output_buffer[at + 1] = @truncate(n >> 8);
    output_buffer[at + 2] = @truncate(n >> 16);
    output_buffer[at + 3] = @truncate(n >> 24);
}

// ---------------------------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------------------------

/// The function's config (a validated JSON object). It lives in the input buffer, which the next
/// message overwrites: copy whatever you keep (see `string`).
pub const Config = struct {
    object: json.Value,

    pub const String = union(enum) {
        missing,
        /// the decoded value, copied into the caller's buffer
        ok: []u8,
        /// why the value is unusable, e.g. "must be a string"
        invalid: []const u8,
    };

    /// The raw JSON value of a config key, or null when absent (or given more than once).
    pub fn get(self: Config, name: []const u8) ?json.Value {
        return self.object.field(name) catch null;
    }

    /// Looks up a string value and copies its decoded bytes into `buf` (a static buffer).
    pub fn string(self: Config, name: []const u8, buf: []u8) String {
        const v = (self.object.field(name) catch return .{ .invalid = "is given more than once" }) orelse return .missing;
        if (v.kind != .string) return .{ .invalid = "must be a string" };
        const s = switch (v.asString()) {
            .ok => |s| s,
            .err => |e| return .{ .invalid = e },
        };
        const decoded = s.decode(buf) orelse return .{ .invalid = "is too long" };
        return .{ .ok = decoded };
    }
};

// ---------------------------------------------------------------------------------------------
// Output: effects (MessagePack) or a reason (UTF-8)
// ---------------------------------------------------------------------------------------------

/// Writer for the output buffer. Layout: little-endian u32 length N, then N bytes.
///
/// Effects: the SDK reserves an array16 header (0xdc + big-endian u16 count) at the start of the body
/// and patches the count when `handle` returns OK. `publish`/`kvPut` append one effect each.
///
/// Overflow (documented choice): if the effects do not fit in the output buffer, the message is
/// REJECTed with the reason "output buffer overflow" instead of OK. It is permanent (not RETRY)
/// because the same input would overflow again on every redelivery.
///
/// `reject`/`retry` discard any effects written so far and write the reason; they return the status so
/// a handler can `return out.reject(...)`. Once a reason is written its status is the result of the
/// call, whatever `handle` returns. A handler returning REJECT/RETRY without a reason gets
/// "no reason given". A reason is a string, an integer, or a tuple of them:
/// `out.reject(.{ "bad-thing: ", detail, " at offset ", offset })`.
pub const Output = struct {
    context: Context,
    /// where the u32 length goes (0 for a single message; inside its record in a batch); the body follows
    frame: usize = 0,
    body_start: usize = 4,
    pos: usize = 4 + 3,
    /// the end of the room for this message's output
    limit: usize = 4 + max_output_len,
    /// the room ends at the output buffer's end before the message's own cap: in a batch, a message that
    /// overflows it is not handled in this call (`does_not_fit`) but first in the next one
    room_limited: bool = false,
    /// where the output ends, once finished
    end: usize = 0,
    count: usize = 0,
    overflow: bool = false,
    reason_status: ?Status = null,
    truncated: bool = false,

    const Context = enum { init, handle };
    const does_not_fit: i32 = -1;

    fn begin(context: Context) Output {
        return .{ .context = context };
    }

    /// The output of a batch's message whose record starts at `record` (a u32 status, then the frame).
    fn beginRecord(record: usize, first: bool) Output {
        const frame = record + 4;
        const cap = frame + 4 + max_output_len;
        const room_limited = !first and cap > output_capacity;
        return .{
            .context = .handle,
            .frame = frame,
            .body_start = frame + 4,
            .pos = frame + 4 + 3,
            .limit = if (room_limited) output_capacity else cap,
            .room_limited = room_limited,
        };
    }

    /// Appends `["publish", subject, payload]`.
    pub fn publish(self: *Output, subject: []const u8, payload: []const u8) void {
        if (!self.beginEffect(3, "publish")) return;
        self.putStr(subject);
        self.putBin(payload);
    }

    /// Appends `["kv_put", bucket, key, value]`.
    pub fn kvPut(self: *Output, bucket: []const u8, key: []const u8, value: []const u8) void {
        if (!self.beginEffect(4, "kv_put")) return;
        self.putStr(bucket);
        self.putStr(key);
        self.putBin(value);
    }

    pub fn reject(self: *Output, reason: anytype) Status {
        self.setReason(.reject, reason);
        return .reject;
    }

    pub fn retry(self: *Output, reason: anytype) Status {
        self.setReason(.retry, reason);
        return .retry;
    }

    /// True once an effect did not fit (the call will end as REJECT "output buffer overflow").
    pub fn overflowed(self: *const Output) bool {
        return self.overflow;
    }

    fn beginEffect(self: *Output, comptime n: u8, comptime tag: []const u8) bool {
        if (self.reason_status != null or self.context != .handle) return false;
        if (self.count == 0xffff) self.overflow = true;
        if (self.overflow) return false;
        self.count += 1;
        self.putByte(0x90 | n);
        self.putStr(tag);
        return true;
    }

    fn put(self: *Output, bytes: []const u8) void {
        if (self.overflow) return;
        if (bytes.len > self.limit - self.pos) {
            self.overflow = true;
            return;
        }
        @memcpy(output_buffer[self.pos .. self.pos + bytes.len], bytes);
        self.pos += bytes.len;
    }

    fn putByte(self: *Output, b: u8) void {
        self.put(&[1]u8{b});
    }

    fn putHeader(self: *Output, tag8: u8, len: usize) void {
        // tag8 / tag8+1 / tag8+2 are the 8/16/32-bit length variants for str (0xd9..) and bin (0xc4..)
        if (len < 0x100) {
            self.put(&[2]u8{ tag8, @intCast(len) });
        } else if (len < 0x10000) {
            self.put(&[3]u8{ tag8 + 1, @intCast(len >> 8), @truncate(len) });
        } else {
            self.put(&[5]u8{ tag8 + 2, @truncate(len >> 24), @truncate(len >> 16), @truncate(len >> 8), @truncate(len) });
        }
    }

    fn putStr(self: *Output, s: []const u8) void {
        if (s.len < 32) self.putByte(0xa0 | @as(u8, @intCast(s.len))) else self.putHeader(0xd9, s.len);
        self.put(s);
    }

    fn putBin(self: *Output, b: []const u8) void {
        self.putHeader(0xc4, b.len);
        self.put(b);
    }

    fn setReason(self: *Output, status: Status, reason: anytype) void {
        self.reason_status = status;
        self.pos = self.body_start;
        self.truncated = false;
        self.overflow = false;
        self.text(reason);
    }

    fn text(self: *Output, x: anytype) void {
        const T = @TypeOf(x);
        switch (@typeInfo(T)) {
            .comptime_int => self.textSigned(x),
            .int => |info| {
                if (info.bits > 64) @compileError("reason integers must fit in 64 bits");
                if (info.signedness == .signed) self.textSigned(x) else self.textUnsigned(x);
            },
            .@"struct" => |info| {
                if (!info.is_tuple) @compileError("a reason is a string, an integer or a tuple of them");
                inline for (x) |part| self.text(part);
            },
            else => {
                const s: []const u8 = x; // strings: []const u8, []u8, string literals
                self.textBytes(s);
            },
        }
    }

    fn textSigned(self: *Output, n: i64) void {
        var buf: [20]u8 = undefined;
        self.textBytes(formatInt(&buf, n));
    }

    fn textUnsigned(self: *Output, n: u64) void {
        var buf: [20]u8 = undefined;
        self.textBytes(formatUnsigned(&buf, n));
    }

    fn textBytes(self: *Output, s: []const u8) void {
        if (self.truncated) return;
        const room = self.body_start + max_reason_len - self.pos;
        const n = if (s.len > room) room else s.len;
        if (n < s.len) self.truncated = true;
        @memcpy(output_buffer[self.pos .. self.pos + n], s[0..n]);
        self.pos += n;
    }

    /// Makes the reason valid UTF-8, appends "..." if it was cut, and writes the length prefix.
    fn finishReason(self: *Output) void {
        const body_start = self.body_start;
        var end = self.pos;
        if (self.truncated) {
            // drop a character cut in half by the length cap
            var k = end;
            while (k > body_start and end - k < 3 and output_buffer[k - 1] & 0xc0 == 0x80) k -= 1;
            if (k > body_start and output_buffer[k - 1] >= 0xc0 and end - (k - 1) < utf8LeadLen(output_buffer[k - 1]))
                end = k - 1;
        }
        var i: usize = body_start;
        while (i < end) {
            const n = utf8SeqLen(output_buffer[0..end], i);
            if (n == 0) {
                output_buffer[i] = '?';
                i += 1;
            } else i += n;
        }
        if (self.truncated) {
            @memcpy(output_buffer[end .. end + 3], "...");
            end += 3;
        }
        self.writeEnd(end);
    }

    /// The status, with the output written; `does_not_fit` when a batch must stop before this message.
    fn finish(self: *Output, returned: Status) i32 {
        if (self.reason_status) |status| {
            self.finishReason();
            return @intFromEnum(status);
        }
        if (returned != .ok) {
            self.setReason(returned, "no reason given");
            self.finishReason();
            return @intFromEnum(returned);
        }
        if (self.context == .init) {
            self.writeEnd(self.body_start);
            return 0;
        }
        if (self.overflow) {
            if (self.room_limited) return does_not_fit;
            self.setReason(.reject, "output buffer overflow");
            self.finishReason();
            return @intFromEnum(Status.reject);
        }
        output_buffer[self.body_start] = 0xdc; // array16
        output_buffer[self.body_start + 1] = @intCast(self.count >> 8);
        output_buffer[self.body_start + 2] = @truncate(self.count);
        self.writeEnd(self.pos);
        return 0;
    }

    fn writeEnd(self: *Output, end: usize) void {
        writeU32(self.frame, @intCast(end - self.body_start));
        self.end = end;
    }
};

// ---------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------

/// Decimal text of `n` in `buf` (e.g. a KV key from an integer id).
pub fn formatInt(buf: *[20]u8, n: i64) []u8 {
    if (n >= 0) return formatUnsigned(buf, @intCast(n));
    const mag: u64 = @as(u64, @intCast(-(n + 1))) + 1; // no overflow for minInt(i64)
    var tmp: [20]u8 = undefined;
    const digits = formatUnsigned(&tmp, mag);
    buf[0] = '-';
    @memcpy(buf[1 .. 1 + digits.len], digits);
    return buf[0 .. 1 + digits.len];
}

pub fn formatUnsigned(buf: *[20]u8, n: u64) []u8 {
    var i: usize = buf.len;
    var v = n;
    while (true) {
        i -= 1;
        buf[i] = @intCast('0' + v % 10);
        v /= 10;
        if (v == 0) break;
    }
    return buf[i..];
}

pub fn eql(a: []const u8, b: []const u8) bool {
    if (a.len != b.len) return false;
    for (a, b) |x, y| if (x != y) return false;
    return true;
}

fn lowerAscii(c: u8) u8 {
    return if (c >= 'A' and c <= 'Z') c + 32 else c;
}

fn utf8LeadLen(b: u8) usize {
    if (b < 0x80) return 1;
    if (b >= 0xc2 and b <= 0xdf) return 2;
    if (b >= 0xe0 and b <= 0xef) return 3;
    if (b >= 0xf0 and b <= 0xf4) return 4;
    return 1; // invalid lead byte
}

/// Length (1..4) of the valid UTF-8 sequence starting at s[i], or 0 if invalid or incomplete.
fn utf8SeqLen(s: []const u8, i: usize) usize {
    const b0 = s[i];
    if (b0 < 0x80) return 1;
    const n = utf8LeadLen(b0);
    if (n == 1 or i + n > s.len) return 0;
    const b1 = s[i + 1];
    const lo: u8, const hi: u8 = switch (b0) {
        0xe0 => .{ 0xa0, 0xbf }, // no overlong 3-byte forms
        0xed => .{ 0x80, 0x9f }, // no surrogates
        0xf0 => .{ 0x90, 0xbf }, // no overlong 4-byte forms
        0xf4 => .{ 0x80, 0x8f }, // <= U+10FFFF
        else => .{ 0x80, 0xbf },
    };
    if (b1 < lo or b1 > hi) return 0;
    var k: usize = 2;
    while (k < n) : (k += 1) {
        if (s[i + k] & 0xc0 != 0x80) return 0;
    }
    return n;
}

// ---------------------------------------------------------------------------------------------
// JSON: strict validator + navigation over the validated text (no allocation, no copies)
// ---------------------------------------------------------------------------------------------

/// Strict RFC 8259 JSON. `parse` validates the whole text first (grammar, string escapes including
/// \uXXXX with correctly paired surrogates, UTF-8 inside strings, no control characters in strings,
/// number syntax, nesting depth <= `max_depth`, nothing but whitespace after the value); the
/// navigation helpers then rely on that validation.
///
/// Strings: `String.raw` is the bytes between the quotes, escapes not decoded. Comparisons
/// (`eql`, `eqlIgnoreCase`, object keys in `field`) are done on the DECODED value, so
/// "order\u0049d" matches "orderId"; `decode` copies the decoded bytes.
///
/// Duplicate keys: `field` scans the whole object and returns error.DuplicateKey if the requested
/// key occurs more than once (which value would win is ambiguous between JSON parsers). Other keys
/// are not checked for duplicates.
pub const json = struct {
    pub const max_depth: usize = 64;

    pub const SyntaxError = struct {
        message: []const u8,
        offset: usize,
    };

    pub const ParseResult = union(enum) {
        ok: Value,
        err: SyntaxError,
    };

    pub const Kind = enum {
        object,
        array,
        string,
        number,
        boolean,
        @"null",

        pub fn phrase(k: Kind) []const u8 {
            return switch (k) {
                .object => "an object",
                .array => "an array",
                .string => "a string",
                .number => "a number",
                .boolean => "a boolean",
                .@"null" => "null",
            };
        }
    };

    fn got(comptime expected: []const u8, k: Kind) []const u8 {
        return switch (k) {
            inline else => |kk| "expected " ++ expected ++ ", got " ++ comptime kk.phrase(),
        };
    }

    /// Validates `text` and returns its (single, top-level) value.
    pub fn parse(text: []const u8) ParseResult {
        if (validate(text)) |e| return .{ .err = e };
        return .{ .ok = valueAt(text, skipWs(text, 0)) };
    }

    pub const Value = struct {
        kind: Kind,
        /// the value's JSON text (for a string: including the quotes)
        raw: []const u8,

        /// For an object: the value of key `name`, or null when absent (or when self is not an object).
        pub fn field(self: Value, name: []const u8) error{DuplicateKey}!?Value {
            if (self.kind != .object) return null;
            var found: ?Value = null;
            var it = self.members();
            while (it.next()) |m| {
                if (m.key.eql(name)) {
                    if (found != null) return error.DuplicateKey;
                    found = m.value;
                }
            }
            return found;
        }

        /// A JSON integer: no fraction, no exponent, within i64.
        pub fn asInt(self: Value) Result(i64) {
            if (self.kind != .number) return .{ .err = got("an integer", self.kind) };
            for (self.raw) |c| {
                if (c == '.') return .{ .err = "expected an integer, got a fractional number" };
                if (c == 'e' or c == 'E') return .{ .err = "expected an integer, got a number with an exponent" };
            }
            const negative = self.raw[0] == '-';
            var mag: u64 = 0;
            for (self.raw[@intFromBool(negative)..]) |c| {
                const m = @mulWithOverflow(mag, 10);
                const a = @addWithOverflow(m[0], @as(u64, c - '0'));
                if (m[1] != 0 or a[1] != 0) return .{ .err = "integer out of range" };
                mag = a[0];
            }
            const limit: u64 = if (negative) 1 << 63 else (1 << 63) - 1;
            if (mag > limit) return .{ .err = "integer out of range" };
            if (!negative) return .{ .ok = @intCast(mag) };
            if (mag == 0) return .{ .ok = 0 };
            return .{ .ok = -@as(i64, @intCast(mag - 1)) - 1 };
        }

        pub fn asString(self: Value) Result(String) {
            if (self.kind != .string) return .{ .err = got("a string", self.kind) };
            return .{ .ok = .{ .raw = self.raw[1 .. self.raw.len - 1] } };
        }

        pub fn asArray(self: Value) Result(Array) {
            if (self.kind != .array) return .{ .err = got("an array", self.kind) };
            var n: usize = 0;
            var it = ArrayIterator{ .text = self.raw };
            while (it.next()) |_| n += 1;
            return .{ .ok = .{ .value = self, .len = n } };
        }

        pub fn asBool(self: Value) Result(bool) {
            if (self.kind != .boolean) return .{ .err = got("a boolean", self.kind) };
            return .{ .ok = self.raw[0] == 't' };
        }

        /// Iterates the members of an object (nothing for other kinds).
        pub fn members(self: Value) ObjectIterator {
            return .{ .text = if (self.kind == .object) self.raw else "{}" };
        }

        /// Iterates the elements of an array (nothing for other kinds).
        pub fn elements(self: Value) ArrayIterator {
            return .{ .text = if (self.kind == .array) self.raw else "[]" };
        }
    };

    pub const Array = struct {
        value: Value,
        len: usize,

        pub fn iterator(self: Array) ArrayIterator {
            return self.value.elements();
        }
    };

    pub const Member = struct {
        key: String,
        value: Value,
    };

    pub const ObjectIterator = struct {
        text: []const u8,
        i: usize = 1,

        pub fn next(self: *ObjectIterator) ?Member {
            var i = skipWs(self.text, self.i);
            if (self.text[i] == '}') return null;
            if (self.text[i] == ',') i = skipWs(self.text, i + 1);
            const key_end = skipString(self.text, i);
            const key = String{ .raw = self.text[i + 1 .. key_end - 1] };
            i = skipWs(self.text, key_end); // ':'
            const start = skipWs(self.text, i + 1);
            const v = valueAt(self.text, start);
            self.i = start + v.raw.len;
            return .{ .key = key, .value = v };
        }
    };

    pub const ArrayIterator = struct {
        text: []const u8,
        i: usize = 1,

        pub fn next(self: *ArrayIterator) ?Value {
            var i = skipWs(self.text, self.i);
            if (self.text[i] == ']') return null;
            if (self.text[i] == ',') i = skipWs(self.text, i + 1);
            const v = valueAt(self.text, i);
            self.i = i + v.raw.len;
            return v;
        }
    };

    /// A JSON string's contents; `raw` is the text between the quotes with escapes not decoded.
    pub const String = struct {
        raw: []const u8,

        pub fn decoder(self: String) Decoder {
            return .{ .raw = self.raw };
        }

        /// Decoded value == `s` (byte-wise).
        pub fn eql(self: String, s: []const u8) bool {
            var d = self.decoder();
            for (s) |c| {
                const b = d.next() orelse return false;
                if (b != c) return false;
            }
            return d.next() == null;
        }

        /// Decoded value == `s`, ignoring ASCII case.
        pub fn eqlIgnoreCase(self: String, s: []const u8) bool {
            var d = self.decoder();
            for (s) |c| {
                const b = d.next() orelse return false;
                if (lowerAscii(b) != lowerAscii(c)) return false;
            }
            return d.next() == null;
        }

        /// Copies the decoded value into `buf`; null if it does not fit.
        pub fn decode(self: String, buf: []u8) ?[]u8 {
            var d = self.decoder();
            var n: usize = 0;
            while (d.next()) |b| {
                if (n == buf.len) return null;
                buf[n] = b;
                n += 1;
            }
            return buf[0..n];
        }
    };

    /// Yields the decoded UTF-8 bytes of a validated JSON string.
    pub const Decoder = struct {
        raw: []const u8,
        i: usize = 0,
        pending: [4]u8 = undefined,
        pending_len: u8 = 0,
        pending_i: u8 = 0,

        pub fn next(self: *Decoder) ?u8 {
            if (self.pending_i < self.pending_len) {
                const b = self.pending[self.pending_i];
                self.pending_i += 1;
                return b;
            }
            if (self.i >= self.raw.len) return null;
            const c = self.raw[self.i];
            if (c != '\\') {
                self.i += 1;
                return c;
            }
            const e = self.raw[self.i + 1];
            self.i += 2;
            switch (e) {
                'b' => return 0x08,
                'f' => return 0x0c,
                'n' => return '\n',
                'r' => return '\r',
                't' => return '\t',
                'u' => {
                    var cp: u32 = hex4(self.raw, self.i).?;
                    self.i += 4;
                    if (cp >= 0xd800 and cp <= 0xdbff) {
                        const low = hex4(self.raw, self.i + 2).?; // validated: "\uDC00".."\uDFFF"
                        self.i += 6;
                        cp = 0x10000 + ((cp - 0xd800) << 10) + (low - 0xdc00);
                    }
                    self.pending_len = encodeUtf8(cp, &self.pending);
                    self.pending_i = 1;
                    return self.pending[0];
                },
                else => return e, // '"', '\\', '/'
            }
        }
    };

    fn encodeUtf8(cp: u32, out: *[4]u8) u8 {
        if (cp < 0x80) {
            out[0] = @intCast(cp);
            return 1;
        } else if (cp < 0x800) {
            out[0] = @intCast(0xc0 | (cp >> 6));
            out[1] = @intCast(0x80 | (cp & 0x3f));
            return 2;
        } else if (cp < 0x10000) {
            out[0] = @intCast(0xe0 | (cp >> 12));
            out[1] = @intCast(0x80 | ((cp >> 6) & 0x3f));
            out[2] = @intCast(0x80 | (cp & 0x3f));
            return 3;
        } else {
            out[0] = @intCast(0xf0 | (cp >> 18));
            out[1] = @intCast(0x80 | ((cp >> 12) & 0x3f));
            out[2] = @intCast(0x80 | ((cp >> 6) & 0x3f));
            out[3] = @intCast(0x80 | (cp & 0x3f));
            return 4;
        }
    }

    fn isWs(c: u8) bool {
        return c == ' ' or c == '\t' or c == '\n' or c == '\r';
    }

    fn isDigit(c: u8) bool {
        return c >= '0' and c <= '9';
    }

    fn skipWs(t: []const u8, start: usize) usize {
        var i = start;
        while (i < t.len and isWs(t[i])) i += 1;
        return i;
    }

    fn hex4(t: []const u8, i: usize) ?u32 {
        if (i + 4 > t.len) return null;
        var v: u32 = 0;
        for (t[i .. i + 4]) |c| {
            const d: u32 = switch (c) {
                '0'...'9' => c - '0',
                'a'...'f' => c - 'a' + 10,
                'A'...'F' => c - 'A' + 10,
                else => return null,
            };
            v = v * 16 + d;
        }
        return v;
    }

    // -- navigation over validated text ------------------------------------------------------

    fn kindAt(c: u8) Kind {
        return switch (c) {
            '{' => .object,
            '[' => .array,
            '"' => .string,
            't', 'f' => .boolean,
            'n' => .@"null",
            else => .number,
        };
    }

    fn valueAt(t: []const u8, i: usize) Value {
        return .{ .kind = kindAt(t[i]), .raw = t[i..skipValue(t, i)] };
    }

    /// End of the (validated) string starting with the quote at t[i].
    fn skipString(t: []const u8, i: usize) usize {
        var j = i + 1;
        while (t[j] != '"') j += if (t[j] == '\\') 2 else 1;
        return j + 1;
    }

    /// End of the (validated) value starting at t[i].
    fn skipValue(t: []const u8, i: usize) usize {
        switch (t[i]) {
            '"' => return skipString(t, i),
            't', 'n' => return i + 4,
            'f' => return i + 5,
            '{', '[' => {
                var depth: usize = 0;
                var j = i;
                while (true) {
                    switch (t[j]) {
                        '"' => {
                            j = skipString(t, j);
                            continue;
                        },
                        '{', '[' => depth += 1,
                        '}', ']' => {
                            depth -= 1;
                            if (depth == 0) return j + 1;
                        },
                        else => {},
                    }
                    j += 1;
                }
            },
            else => {
                var j = i;
                while (j < t.len and (isDigit(t[j]) or t[j] == '-' or t[j] == '+' or t[j] == '.' or t[j] == 'e' or t[j] == 'E')) j += 1;
                return j;
            },
        }
    }

    // -- validation ----------------------------------------------------------------------------

    const Scan = union(enum) {
        ok: usize, // index just after the scanned token
        err: SyntaxError,
    };

    fn fail(message: []const u8, offset: usize) SyntaxError {
        return .{ .message = message, .offset = offset };
    }

    /// null when `t` is exactly one valid JSON value surrounded by optional whitespace.
    pub fn validate(t: []const u8) ?SyntaxError {
        var i = skipWs(t, 0);
        if (i == t.len) return fail(if (t.len == 0) "empty input" else "no value, only whitespace", i);
        var depth: usize = 0;
        var arrays: u64 = 0; // bit d set: the container at depth d+1 is an array
        outer: while (true) {
            // a value is expected at t[i]
            if (i >= t.len) return fail("unexpected end of input", i);
            const c = t[i];
            switch (c) {
                '{', '[' => {
                    if (depth == max_depth) return fail("nesting deeper than 64 levels", i);
                    const is_array = c == '[';
                    const bit = @as(u64, 1) << @intCast(depth);
                    if (is_array) arrays |= bit else arrays &= ~bit;
                    depth += 1;
                    i = skipWs(t, i + 1);
                    if (i < t.len and t[i] == @as(u8, if (is_array) ']' else '}')) {
                        depth -= 1;
                        i += 1; // empty container: a complete value
                    } else if (is_array) {
                        continue :outer;
                    } else {
                        switch (scanKey(t, i)) {
                            .ok => |j| i = j,
                            .err => |e| return e,
                        }
                        continue :outer;
                    }
                },
                '"' => switch (scanString(t, i)) {
                    .ok => |j| i = j,
                    .err => |e| return e,
                },
                't' => i = literal(t, i, "true") orelse return fail("invalid literal", i),
                'f' => i = literal(t, i, "false") orelse return fail("invalid literal", i),
                'n' => i = literal(t, i, "null") orelse return fail("invalid literal", i),
                '-', '0'...'9' => switch (scanNumber(t, i)) {
                    .ok => |j| i = j,
                    .err => |e| return e,
                },
                else => return fail("unexpected character", i),
            }
            // a value just ended at t[i]
            while (true) {
                i = skipWs(t, i);
                if (depth == 0) {
                    if (i != t.len) return fail("unexpected data after the JSON value", i);
                    return null;
                }
                if (i >= t.len) return fail("unexpected end of input", i);
                const in_array = (arrays >> @intCast(depth - 1)) & 1 == 1;
                if (t[i] == ',') {
                    i = skipWs(t, i + 1);
                    if (!in_array) switch (scanKey(t, i)) {
                        .ok => |j| i = j,
                        .err => |e| return e,
                    };
                    continue :outer;
                }
                if (t[i] == @as(u8, if (in_array) ']' else '}')) {
                    depth -= 1;
                    i += 1;
                    continue;
                }
                return fail(if (in_array) "expected ',' or ']'" else "expected ',' or '}'", i);
            }
        }
    }

    fn literal(t: []const u8, i: usize, comptime word: []const u8) ?usize {
        if (i + word.len > t.len or !eql(t[i .. i + word.len], word)) return null;
        return i + word.len;
    }

    /// `"key"` `:` at t[i]; returns the index of the member's value (whitespace skipped).
    fn scanKey(t: []const u8, i: usize) Scan {
        if (i >= t.len) return .{ .err = fail("unexpected end of input", i) };
        if (t[i] != '"') return .{ .err = fail("expected a string key", i) };
        const end = switch (scanString(t, i)) {
            .ok => |j| j,
            .err => |e| return .{ .err = e },
        };
        const colon = skipWs(t, end);
        if (colon >= t.len) return .{ .err = fail("unexpected end of input", colon) };
        if (t[colon] != ':') return .{ .err = fail("expected ':' after object key", colon) };
        return .{ .ok = skipWs(t, colon + 1) };
    }

    fn scanString(t: []const u8, i: usize) Scan {
        var j = i + 1;
        while (true) {
            if (j >= t.len) return .{ .err = fail("unterminated string", i) };
            const c = t[j];
            if (c == '"') return .{ .ok = j + 1 };
            if (c == '\\') {
                if (j + 1 >= t.len) return .{ .err = fail("unterminated string", i) };
                switch (t[j + 1]) {
                    '"', '\\', '/', 'b', 'f', 'n', 'r', 't' => j += 2,
                    'u' => {
                        const cp = hex4(t, j + 2) orelse return .{ .err = fail("invalid \\u escape", j) };
                        if (cp >= 0xd800 and cp <= 0xdbff) {
                            if (j + 8 > t.len or t[j + 6] != '\\' or t[j + 7] != 'u')
                                return .{ .err = fail("unpaired surrogate in \\u escape", j) };
                            const low = hex4(t, j + 8) orelse return .{ .err = fail("invalid \\u escape", j + 6) };
                            if (low < 0xdc00 or low > 0xdfff) return .{ .err = fail("unpaired surrogate in \\u escape", j) };
                            j += 12;
                        } else if (cp >= 0xdc00 and cp <= 0xdfff) {
                            return .{ .err = fail("unpaired surrogate in \\u escape", j) };
                        } else j += 6;
                    },
                    else => return .{ .err = fail("invalid escape in string", j) },
                }
            } else if (c < 0x20) {
                return .{ .err = fail("control character in string", j) };
            } else if (c < 0x80) {
                j += 1;
            } else {
                const n = utf8SeqLen(t, j);
                if (n == 0) return .{ .err = fail("invalid UTF-8 in string", j) };
                j += n;
            }
        }
    }

    fn scanNumber(t: []const u8, i: usize) Scan {
        var j = i;
        if (t[j] == '-') j += 1;
        if (j >= t.len or !isDigit(t[j])) return .{ .err = fail("invalid number", i) };
        if (t[j] == '0') {
            j += 1;
            if (j < t.len and isDigit(t[j])) return .{ .err = fail("invalid number: leading zero", i) };
        } else {
            while (j < t.len and isDigit(t[j])) j += 1;
        }
        if (j < t.len and t[j] == '.') {
            j += 1;
            if (j >= t.len or !isDigit(t[j])) return .{ .err = fail("invalid number: digit expected after '.'", j) };
            while (j < t.len and isDigit(t[j])) j += 1;
        }
        if (j < t.len and (t[j] == 'e' or t[j] == 'E')) {
            j += 1;
            if (j < t.len and (t[j] == '+' or t[j] == '-')) j += 1;
            if (j >= t.len or !isDigit(t[j])) return .{ .err = fail("invalid number: digit expected in exponent", j) };
            while (j < t.len and isDigit(t[j])) j += 1;
        }
        return .{ .ok = j };
    }
};
