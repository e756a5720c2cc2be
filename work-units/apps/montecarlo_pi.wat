;; montecarlo_pi.wat — estimate pi by sampling random points.
;;
;; Input (stdin): the sample count N in decimal (0 <= N <= 10^12).
;; Randomness: `random_get`, which the sandbox makes a deterministic stream
;;   from the unit seed. Sample i uses stream bytes [8i, 8i+8): two u32 LE,
;;   each shifted right by 1 -> x, y in [0, 2^31). A hit is x^2 + y^2 < 2^62
;;   (inside the quarter circle of radius 2^31).
;; Output (stdout): "<hits> <N> <pi>\n", where pi = floor(4e6 * hits / N)
;;   printed with six decimals (0.000000 when N = 0).
;; Errors: bad input -> stderr message, exit 2.
(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "random_get" (func $random_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)

  (global $pos (mut i32) (i32.const 512))
  (global $end (mut i32) (i32.const 512))
  (global $out (mut i32) (i32.const 1664))

  (data (i32.const 2048) "montecarlo_pi: input too large or unreadable\0a\00")
  (data (i32.const 2176) "montecarlo_pi: expected the sample count in decimal, at most 10^12\0a\00")
  (data (i32.const 2304) "montecarlo_pi: out of memory\0a\00")
  (data (i32.const 2432) "montecarlo_pi: random_get failed\0a\00")

  (func $fail (param $msg i32)
    (local $len i32)
    (block $done (loop $l
      (br_if $done (i32.eqz (i32.load8_u (i32.add (local.get $msg) (local.get $len)))))
      (local.set $len (i32.add (local.get $len) (i32.const 1)))
      (br $l)))
    (i32.store (i32.const 0) (local.get $msg))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (i32.const 2) (i32.const 0) (i32.const 1) (i32.const 8)))
    (call $proc_exit (i32.const 2))
    (unreachable))

  (func $read_input
    (local $n i32)
    (block $done (loop $l
      (if (i32.ge_u (global.get $end) (i32.const 1536)) (then (call $fail (i32.const 2048))))
      (i32.store (i32.const 0) (global.get $end))
      (i32.store (i32.const 4) (i32.sub (i32.const 1536) (global.get $end)))
      (if (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8))
        (then (call $fail (i32.const 2048))))
      (local.set $n (i32.load (i32.const 8)))
      (br_if $done (i32.eqz (local.get $n)))
      (global.set $end (i32.add (global.get $end) (local.get $n)))
      (br $l))))

  (func $skip_ws
    (block $done (loop $l
      (br_if $done (i32.ge_u (global.get $pos) (global.get $end)))
      (br_if $done (i32.gt_u (i32.load8_u (global.get $pos)) (i32.const 32)))
      (global.set $pos (i32.add (global.get $pos) (i32.const 1)))
      (br $l))))

  ;; A decimal number at $pos, or -1 when there is none or it is too large.
  (func $parse_u64 (result i64)
    (local $v i64) (local $c i32) (local $n i32)
    (call $skip_ws)
    (block $done (loop $l
      (br_if $done (i32.ge_u (global.get $pos) (global.get $end)))
      (local.set $c (i32.sub (i32.load8_u (global.get $pos)) (i32.const 48)))
      (br_if $done (i32.gt_u (local.get $c) (i32.const 9)))
      (if (i64.gt_u (local.get $v) (i64.const 100000000000000000))
        (then (return (i64.const -1))))
      (local.set $v (i64.add (i64.mul (local.get $v) (i64.const 10)) (i64.extend_i32_u (local.get $c))))
      (local.set $n (i32.add (local.get $n) (i32.const 1)))
      (global.set $pos (i32.add (global.get $pos) (i32.const 1)))
      (br $l)))
    (if (i32.eqz (local.get $n)) (then (return (i64.const -1))))
    (local.get $v))

  (func $put_byte (param $b i32)
    (i32.store8 (global.get $out) (local.get $b))
    (global.set $out (i32.add (global.get $out) (i32.const 1))))

  (func $put_u64 (param $v i64)
    (local $p i32)
    (local.set $p (i32.const 1632))
    (loop $l
      (local.set $p (i32.sub (local.get $p) (i32.const 1)))
      (i32.store8 (local.get $p) (i32.add (i32.const 48) (i32.wrap_i64 (i64.rem_u (local.get $v) (i64.const 10)))))
      (local.set $v (i64.div_u (local.get $v) (i64.const 10)))
      (br_if $l (i64.ne (local.get $v) (i64.const 0))))
    (block $done (loop $c
      (br_if $done (i32.ge_u (local.get $p) (i32.const 1632)))
      (call $put_byte (i32.load8_u (local.get $p)))
      (local.set $p (i32.add (local.get $p) (i32.const 1)))
      (br $c))))

  (func $flush
    (local $ptr i32) (local $len i32)
    (local.set $ptr (i32.const 1664))
    (local.set $len (i32.sub (global.get $out) (i32.const 1664)))
    (block $done (loop $l
      (br_if $done (i32.eqz (local.get $len)))
      (i32.store (i32.const 0) (local.get $ptr))
      (i32.store (i32.const 4) (local.get $len))
      (if (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))
        (then (call $proc_exit (i32.const 1)) (unreachable)))
      (local.set $ptr (i32.add (local.get $ptr) (i32.load (i32.const 8))))
      (local.set $len (i32.sub (local.get $len) (i32.load (i32.const 8))))
      (br $l)))
    (global.set $out (i32.const 1664)))

  ;; Grows memory so that addresses below $end_addr exist.
  (func $ensure_memory (param $end_addr i32)
    (local $pages i32)
    (local.set $pages (i32.shr_u (i32.add (local.get $end_addr) (i32.const 65535)) (i32.const 16)))
    (if (i32.gt_u (local.get $pages) (memory.size))
      (then
        (if (i32.eq (memory.grow (i32.sub (local.get $pages) (memory.size))) (i32.const -1))
          (then (call $fail (i32.const 2304)))))))


  ;; Samples in batches of 512 (4096 random bytes at 4096..8192).
  (func $hits (param $n i64) (result i64)
    (local $hits i64) (local $batch i32) (local $i i32) (local $x i64) (local $y i64) (local $p i32)
    (block $done (loop $l
      (br_if $done (i64.eqz (local.get $n)))
      (local.set $batch (i32.const 512))
      (if (i64.lt_u (local.get $n) (i64.const 512)) (then (local.set $batch (i32.wrap_i64 (local.get $n)))))
      (if (call $random_get (i32.const 4096) (i32.shl (local.get $batch) (i32.const 3)))
        (then (call $fail (i32.const 2432))))
      (local.set $i (i32.const 0))
      (local.set $p (i32.const 4096))
      (block $bdone (loop $bl
        (br_if $bdone (i32.ge_u (local.get $i) (local.get $batch)))
        (local.set $x (i64.extend_i32_u (i32.shr_u (i32.load (local.get $p)) (i32.const 1))))
        (local.set $y (i64.extend_i32_u (i32.shr_u (i32.load offset=4 (local.get $p)) (i32.const 1))))
        (if (i64.lt_u (i64.add (i64.mul (local.get $x) (local.get $x)) (i64.mul (local.get $y) (local.get $y)))
                      (i64.const 4611686018427387904))
          (then (local.set $hits (i64.add (local.get $hits) (i64.const 1)))))
        (local.set $p (i32.add (local.get $p) (i32.const 8)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $bl)))
      (local.set $n (i64.sub (local.get $n) (i64.extend_i32_u (local.get $batch))))
      (br $l)))
    (local.get $hits))

  (func (export "_start")
    (local $n i64) (local $hits i64) (local $micro i64) (local $d i64)
    (call $read_input)
    (local.set $n (call $parse_u64))
    (call $skip_ws)
    (if (i32.or (i32.or (i64.lt_s (local.get $n) (i64.const 0))
                        (i64.gt_u (local.get $n) (i64.const 1000000000000)))
                (i32.lt_u (global.get $pos) (global.get $end)))
      (then (call $fail (i32.const 2176))))
    (local.set $hits (call $hits (local.get $n)))
    (if (i64.ne (local.get $n) (i64.const 0))
      (then (local.set $micro (i64.div_u (i64.mul (local.get $hits) (i64.const 4000000)) (local.get $n)))))
    (call $put_u64 (local.get $hits))
    (call $put_byte (i32.const 32))
    (call $put_u64 (local.get $n))
    (call $put_byte (i32.const 32))
    (call $put_u64 (i64.div_u (local.get $micro) (i64.const 1000000)))
    (call $put_byte (i32.const 46))
    (local.set $d (i64.const 100000))
    (block $done (loop $l
      (br_if $done (i64.eqz (local.get $d)))
      (call $put_byte (i32.add (i32.const 48)
        (i32.wrap_i64 (i64.rem_u (i64.div_u (local.get $micro) (local.get $d)) (i64.const 10)))))
      (local.set $d (i64.div_u (local.get $d) (i64.const 10)))
      (br $l)))
    (call $put_byte (i32.const 10))
    (call $flush))
)
