;; A test guest implementing the ebbtide ABI v1 (docs/abi.md) that misbehaves on request.
;; The first payload byte picks the behaviour:
;;   T trap (unreachable)        L runaway loop (time limit)    M grow memory until refused, then trap
;;   F publish to a forbidden subject                              G output that is not MessagePack
;;   R status RETRY              X status REJECT                 B an unknown status (7)
;;   S slow: spin 50,000,000 iterations (~20 ms; needs ~200M fuel), then publish like a normal payload
;;   anything else: publish the payload unchanged to "test.out"
;; A JSON object takes its mode from its first key's first letter: {"R": 1, "k": "key1"} retries (an ordered
;; function's tests carry the key in the payload, where the host reads it).
(module
  (memory (export "memory") 3)
  ;; [ ["publish", "test.out", bin16 ...] ]: fixarray(1) fixarray(3) fixstr(7) fixstr(8) bin16 marker
  (data (i32.const 1024) "\91\93\a7publish\a8test.out\c5")
  ;; [ ["publish", "not.allowed", bin8(0)] ]
  (data (i32.const 1100) "\91\93\a7publish\abnot.allowed\c4\00")
  (data (i32.const 1200) "\c1\c1\c1")
  (data (i32.const 1300) "refused by the chaos guest")
  (func (export "ebbtide_abi_version") (result i32) (i32.const 1))
  (func (export "ebbtide_input_ptr") (result i32) (i32.const 65536))
  (func (export "ebbtide_input_capacity") (result i32) (i32.const 32768))
  (func (export "ebbtide_output_ptr") (result i32) (i32.const 131072))
  (func (export "ebbtide_output_capacity") (result i32) (i32.const 65536))
  (func $output (param $src i32) (param $len i32)
    (i32.store (i32.const 131072) (local.get $len))
    (memory.copy (i32.const 131076) (local.get $src) (local.get $len)))
  (func (export "ebbtide_init") (param $config_len i32) (result i32)
    (call $output (i32.const 0) (i32.const 0))
    (i32.const 0))
  (func (export "ebbtide_handle") (param $subject_len i32) (param $len i32) (result i32)
    (local $payload i32) (local $mode i32) (local $spin i32)
    (local.set $payload (i32.add (i32.const 65536) (local.get $subject_len)))
    (if (local.get $len) (then (local.set $mode (i32.load8_u (local.get $payload)))))
    (if (i32.and (i32.eq (local.get $mode) (i32.const 123)) (i32.gt_u (local.get $len) (i32.const 2))) (then
      (local.set $mode (i32.load8_u (i32.add (local.get $payload) (i32.const 2))))))
    (if (i32.eq (local.get $mode) (i32.const 84)) (then unreachable))
    (if (i32.eq (local.get $mode) (i32.const 83)) (then
      (local.set $spin (i32.const 50000000))
      (loop $slow (local.set $spin (i32.sub (local.get $spin) (i32.const 1))) (br_if $slow (local.get $spin)))))
    (if (i32.eq (local.get $mode) (i32.const 76)) (then (loop $spin (br $spin))))
    (if (i32.eq (local.get $mode) (i32.const 77)) (then
      (loop $grow (br_if $grow (i32.ne (memory.grow (i32.const 1)) (i32.const -1))))
      unreachable))
    (if (i32.eq (local.get $mode) (i32.const 70)) (then (call $output (i32.const 1100) (i32.const 24)) (return (i32.const 0))))
    (if (i32.eq (local.get $mode) (i32.const 71)) (then (call $output (i32.const 1200) (i32.const 3)) (return (i32.const 0))))
    (if (i32.eq (local.get $mode) (i32.const 82)) (then (call $output (i32.const 1300) (i32.const 26)) (return (i32.const 2))))
    (if (i32.eq (local.get $mode) (i32.const 88)) (then (call $output (i32.const 1300) (i32.const 26)) (return (i32.const 1))))
    (if (i32.eq (local.get $mode) (i32.const 66)) (then (call $output (i32.const 1300) (i32.const 0)) (return (i32.const 7))))
    (memory.copy (i32.const 131076) (i32.const 1024) (i32.const 20))
    (i32.store8 (i32.const 131096) (i32.shr_u (local.get $len) (i32.const 8)))
    (i32.store8 (i32.const 131097) (i32.and (local.get $len) (i32.const 255)))
    (memory.copy (i32.const 131098) (local.get $payload) (local.get $len))
    (i32.store (i32.const 131072) (i32.add (local.get $len) (i32.const 22)))
    (i32.const 0)))
