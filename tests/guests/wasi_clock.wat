;; A guest (ABI v1, docs/abi.md) that imports WASI clock_time_get and random_get: it publishes to
;; "test.out" 8 bytes of realtime clock (little-endian ns) followed by 8 random bytes. The host refuses to
;; load it unless its function is granted `wasi = ["clock", "random"]`.
(module
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock_time_get (param i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "random_get" (func $random_get (param i32 i32) (result i32)))
  (memory (export "memory") 3)
  ;; [ ["publish", "test.out", bin8(16) ...] ]
  (data (i32.const 1024) "\91\93\a7publish\a8test.out\c4\10")
  (data (i32.const 1300) "clock or random refused")
  (func (export "ebbtide_abi_version") (result i32) (i32.const 1))
  (func (export "ebbtide_input_ptr") (result i32) (i32.const 65536))
  (func (export "ebbtide_input_capacity") (result i32) (i32.const 32768))
  (func (export "ebbtide_output_ptr") (result i32) (i32.const 131072))
  (func (export "ebbtide_output_capacity") (result i32) (i32.const 65536))
  (func (export "ebbtide_init") (param $config_len i32) (result i32)
    (i32.store (i32.const 131072) (i32.const 0))
    (i32.const 0))
  (func (export "ebbtide_handle") (param $subject_len i32) (param $len i32) (result i32)
    (memory.copy (i32.const 131076) (i32.const 1024) (i32.const 21))
    (if (i32.or (call $clock_time_get (i32.const 0) (i64.const 1) (i32.const 131097))
                (call $random_get (i32.const 131105) (i32.const 8)))
      (then
        (memory.copy (i32.const 131076) (i32.const 1300) (i32.const 23))
        (i32.store (i32.const 131072) (i32.const 23))
        (return (i32.const 1))))
    (i32.store (i32.const 131072) (i32.const 37))
    (i32.const 0)))
