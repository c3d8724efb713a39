;; A test guest (ABI v1, docs/abi.md) that takes at least 25 ms of wall-clock time per message on any
;; machine, fast or slow: it reads the monotonic clock (WASI clock_time_get; its function needs
;; `wasi = ["clock"]`) until 25 ms have passed, then publishes the payload unchanged to "test.out".
(module
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock_time_get (param i32 i64 i32) (result i32)))
  (memory (export "memory") 3)
  ;; [ ["publish", "test.out", bin16 ...] ]: fixarray(1) fixarray(3) fixstr(7) fixstr(8) bin16 marker
  (data (i32.const 1024) "\91\93\a7publish\a8test.out\c5")
  (func (export "ebbtide_abi_version") (result i32) (i32.const 1))
  (func (export "ebbtide_input_ptr") (result i32) (i32.const 65536))
  (func (export "ebbtide_input_capacity") (result i32) (i32.const 32768))
  (func (export "ebbtide_output_ptr") (result i32) (i32.const 131072))
  (func (export "ebbtide_output_capacity") (result i32) (i32.const 65536))
  (func (export "ebbtide_init") (param $config_len i32) (result i32)
    (i32.store (i32.const 131072) (i32.const 0))
    (i32.const 0))
  (func $now (result i64)  ;; monotonic clock (id 1), ns
    (drop (call $clock_time_get (i32.const 1) (i64.const 1) (i32.const 2048)))
    (i64.load (i32.const 2048)))
  (func (export "ebbtide_handle") (param $subject_len i32) (param $len i32) (result i32)
    (local $payload i32) (local $until i64)
    (local.set $payload (i32.add (i32.const 65536) (local.get $subject_len)))
    (local.set $until (i64.add (call $now) (i64.const 25000000)))
    (loop $wait (br_if $wait (i64.lt_u (call $now) (local.get $until))))
    (memory.copy (i32.const 131076) (i32.const 1024) (i32.const 20))
    (i32.store8 (i32.const 131096) (i32.shr_u (local.get $len) (i32.const 8)))
    (i32.store8 (i32.const 131097) (i32.and (local.get $len) (i32.const 255)))
    (memory.copy (i32.const 131098) (local.get $payload) (local.get $len))
    (i32.store (i32.const 131072) (i32.add (local.get $len) (i32.const 22)))
    (i32.const 0)))
