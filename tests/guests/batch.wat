;; A test guest implementing the ebbtide ABI v2 (docs/abi.md): `ebbtide_handle` and `ebbtide_handle_batch`
;; give each message the same outcome. The output is the payload itself (not MessagePack: the runtime
;; tests read raw outputs), with a status picked by the first payload byte:
;;   T trap (unreachable)    L runaway loop (time limit)    R status REJECT    X an unknown status (7)
;;   S status OK, and the batch call ends after this message (the host sends the rest in another call)
;;   anything else: status OK
;; Buffers: input [65536, +65536), output [131072, +65540): every batch the host packs fits the output.
(module
  (memory (export "memory") 4)
  (func (export "ebbtide_abi_version") (result i32) (i32.const 2))
  (func (export "ebbtide_input_ptr") (result i32) (i32.const 65536))
  (func (export "ebbtide_input_capacity") (result i32) (i32.const 65536))
  (func (export "ebbtide_output_ptr") (result i32) (i32.const 131072))
  (func (export "ebbtide_output_capacity") (result i32) (i32.const 65540))
  (func (export "ebbtide_init") (param $config_len i32) (result i32)
    (i32.store (i32.const 131072) (i32.const 0))
    (i32.const 0))
  ;; One message: copies the payload [$p, +$n) to $out and returns its status.
  (func $one (param $p i32) (param $n i32) (param $out i32) (result i32)
    (local $mode i32)
    (memory.copy (local.get $out) (local.get $p) (local.get $n))
    (if (local.get $n) (then (local.set $mode (i32.load8_u (local.get $p)))))
    (if (i32.eq (local.get $mode) (i32.const 84)) (then unreachable))                   ;; T
    (if (i32.eq (local.get $mode) (i32.const 76)) (then (loop $spin (br $spin))))       ;; L
    (if (i32.eq (local.get $mode) (i32.const 82)) (then (return (i32.const 1))))        ;; R
    (if (i32.eq (local.get $mode) (i32.const 88)) (then (return (i32.const 7))))        ;; X
    (i32.const 0))
  (func (export "ebbtide_handle") (param $subject_len i32) (param $len i32) (result i32)
    (i32.store (i32.const 131072) (local.get $len))
    (call $one (i32.add (i32.const 65536) (local.get $subject_len)) (local.get $len) (i32.const 131076)))
  (func (export "ebbtide_handle_batch") (param $count i32) (result i32)
    (local $done i32) (local $in i32) (local $out i32) (local $subject_len i32) (local $len i32) (local $mode i32)
    (i32.store (i32.const 131072) (i32.const 0))
    (local.set $in (i32.const 65536))
    (local.set $out (i32.const 131076))
    (block $end
      (loop $next
        (br_if $end (i32.ge_u (local.get $done) (local.get $count)))
        (local.set $subject_len (i32.load (local.get $in)))
        (local.set $len (i32.load offset=4 (local.get $in)))
        (local.set $in (i32.add (i32.add (local.get $in) (i32.const 8)) (local.get $subject_len)))
        (local.set $mode (if (result i32) (local.get $len) (then (i32.load8_u (local.get $in))) (else (i32.const 0))))
        ;; record: status, length, output; then the progress counter
        (i32.store (local.get $out) (call $one (local.get $in) (local.get $len) (i32.add (local.get $out) (i32.const 8))))
        (i32.store offset=4 (local.get $out) (local.get $len))
        (local.set $out (i32.add (i32.add (local.get $out) (i32.const 8)) (local.get $len)))
        (local.set $in (i32.add (local.get $in) (local.get $len)))
        (local.set $done (i32.add (local.get $done) (i32.const 1)))
        (i32.store (i32.const 131072) (local.get $done))
        (br_if $end (i32.eq (local.get $mode) (i32.const 83)))                            ;; S
        (br $next)))
    (local.get $done)))
