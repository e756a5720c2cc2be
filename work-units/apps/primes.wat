;; primes.wat — count the primes in a half-open range [lo, hi).
;;
;; Input (stdin): two decimal numbers "lo hi", separated by whitespace,
;;   0 <= lo <= hi <= 10^12, at most 1023 bytes in all.
;; Output (stdout): the count in decimal, then "\n". Example: "1 100" -> "25\n".
;; Errors: bad input -> a message on stderr and proc_exit(2).
;;
;; Algorithm: segmented sieve of Eratosthenes. Base primes up to
;; sqrt(hi - 1) are sieved once, then [lo, hi) is sieved in 32 KiB segments,
;; so the cost is roughly proportional to hi - lo plus ~sqrt(hi) per segment
;; for walking the base primes: a number near 10^10 costs about twice one
;; near 10^8, so time "N-second units" where they lie, not at 0.
;; Memory: 1 page for I/O, 32 KiB segment at 65536, base sieve at 131072,
;; base primes after it; grown on demand (~5 MiB at hi = 10^12).
(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 3)

  ;; Layout: 0..16 iovec scratch; 512..1536 input; 1600..1632 number
  ;; formatting; 1664..2048 output; 2048.. messages.
  (global $pos (mut i32) (i32.const 512))
  (global $end (mut i32) (i32.const 512))
  (global $out (mut i32) (i32.const 1664))

  (data (i32.const 2048) "primes: input too large or unreadable\0a\00")
  (data (i32.const 2176) "primes: expected \22lo hi\22 in decimal with lo <= hi <= 10^12\0a\00")
  (data (i32.const 2304) "primes: out of memory\0a\00")

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

  (func $count_primes (param $lo i64) (param $hi i64) (result i64)
    (local $r i64) (local $r32 i32) (local $i i32) (local $j i32)
    (local $primes i32) (local $nprimes i32) (local $k i32)
    (local $seg_lo i64) (local $seg_hi i64) (local $len i32)
    (local $p i64) (local $start i64) (local $count i64) (local $i4 i32)
    (if (i64.lt_u (local.get $lo) (i64.const 2)) (then (local.set $lo (i64.const 2))))
    (if (i64.ge_u (local.get $lo) (local.get $hi)) (then (return (i64.const 0))))
    ;; r = floor(sqrt(hi - 1)); sqrt is correctly rounded, then fixed up.
    (local.set $r (i64.trunc_f64_u (f64.sqrt (f64.convert_i64_u (i64.sub (local.get $hi) (i64.const 1))))))
    (block $done (loop $l
      (br_if $done (i64.le_u (i64.mul (local.get $r) (local.get $r)) (i64.sub (local.get $hi) (i64.const 1))))
      (local.set $r (i64.sub (local.get $r) (i64.const 1)))
      (br $l)))
    (block $done (loop $l
      (br_if $done (i64.gt_u
        (i64.mul (i64.add (local.get $r) (i64.const 1)) (i64.add (local.get $r) (i64.const 1)))
        (i64.sub (local.get $hi) (i64.const 1))))
      (local.set $r (i64.add (local.get $r) (i64.const 1)))
      (br $l)))
    (local.set $r32 (i32.wrap_i64 (local.get $r)))
    ;; Base sieve over 0..=r at 131072, base primes (i32) after it.
    (local.set $primes (i32.and (i32.add (i32.add (i32.const 131072) (local.get $r32)) (i32.const 8)) (i32.const -4)))
    (call $ensure_memory (i32.add (local.get $primes) (i32.mul (i32.add (local.get $r32) (i32.const 1)) (i32.const 4))))
    (memory.fill (i32.const 131072) (i32.const 1) (i32.add (local.get $r32) (i32.const 1)))
    (local.set $i (i32.const 2))
    (block $done (loop $l
      (br_if $done (i32.gt_u (i32.mul (local.get $i) (local.get $i)) (local.get $r32)))
      (if (i32.load8_u offset=131072 (local.get $i))
        (then
          (local.set $j (i32.mul (local.get $i) (local.get $i)))
          (block $d2 (loop $l2
            (br_if $d2 (i32.gt_u (local.get $j) (local.get $r32)))
            (i32.store8 offset=131072 (local.get $j) (i32.const 0))
            (local.set $j (i32.add (local.get $j) (local.get $i)))
            (br $l2)))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $l)))
    (local.set $i (i32.const 2))
    (block $done (loop $l
      (br_if $done (i32.gt_u (local.get $i) (local.get $r32)))
      (if (i32.load8_u offset=131072 (local.get $i))
        (then
          (i32.store (i32.add (local.get $primes) (i32.shl (local.get $nprimes) (i32.const 2))) (local.get $i))
          (local.set $nprimes (i32.add (local.get $nprimes) (i32.const 1)))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $l)))
    ;; Segments of 32 KiB at 65536.
    (local.set $seg_lo (local.get $lo))
    (block $done (loop $seg
      (br_if $done (i64.ge_u (local.get $seg_lo) (local.get $hi)))
      (local.set $seg_hi (i64.add (local.get $seg_lo) (i64.const 32768)))
      (if (i64.gt_u (local.get $seg_hi) (local.get $hi)) (then (local.set $seg_hi (local.get $hi))))
      (local.set $len (i32.wrap_i64 (i64.sub (local.get $seg_hi) (local.get $seg_lo))))
      (memory.fill (i32.const 65536) (i32.const 1) (local.get $len))
      (memory.fill (i32.add (i32.const 65536) (local.get $len)) (i32.const 0) (i32.const 8))
      (local.set $k (i32.const 0))
      (block $pdone (loop $pl
        (br_if $pdone (i32.ge_u (local.get $k) (local.get $nprimes)))
        (local.set $p (i64.extend_i32_u (i32.load (i32.add (local.get $primes) (i32.shl (local.get $k) (i32.const 2))))))
        (br_if $pdone (i64.ge_u (i64.mul (local.get $p) (local.get $p)) (local.get $seg_hi)))
        ;; First multiple of p in the segment, but not below p*p.
        (local.set $start (i64.mul
          (i64.div_u (i64.add (local.get $seg_lo) (i64.sub (local.get $p) (i64.const 1))) (local.get $p))
          (local.get $p)))
        (if (i64.lt_u (local.get $start) (i64.mul (local.get $p) (local.get $p)))
          (then (local.set $start (i64.mul (local.get $p) (local.get $p)))))
        (local.set $j (i32.wrap_i64 (i64.sub (local.get $start) (local.get $seg_lo))))
        (local.set $i (i32.wrap_i64 (local.get $p)))
        ;; Four multiples per iteration while all four are in the segment
        ;; (what an optimizing compiler emits), then one at a time.
        (local.set $i4 (i32.mul (local.get $i) (i32.const 3)))
        (block $udone (loop $ul
          (br_if $udone (i32.ge_u (i32.add (local.get $j) (local.get $i4)) (local.get $len)))
          (i32.store8 offset=65536 (local.get $j) (i32.const 0))
          (local.set $j (i32.add (local.get $j) (local.get $i)))
          (i32.store8 offset=65536 (local.get $j) (i32.const 0))
          (local.set $j (i32.add (local.get $j) (local.get $i)))
          (i32.store8 offset=65536 (local.get $j) (i32.const 0))
          (local.set $j (i32.add (local.get $j) (local.get $i)))
          (i32.store8 offset=65536 (local.get $j) (i32.const 0))
          (local.set $j (i32.add (local.get $j) (local.get $i)))
          (br $ul)))
        (block $mdone (loop $ml
          (br_if $mdone (i32.ge_u (local.get $j) (local.get $len)))
          (i32.store8 offset=65536 (local.get $j) (i32.const 0))
          (local.set $j (i32.add (local.get $j) (local.get $i)))
          (br $ml)))
        (local.set $k (i32.add (local.get $k) (i32.const 1)))
        (br $pl)))
      ;; Count the 1 bytes eight at a time with popcnt; the flags are 0 or 1
      ;; and the 8 bytes after the segment were zeroed.
      (local.set $j (i32.const 0))
      (block $cdone (loop $cl
        (br_if $cdone (i32.ge_u (local.get $j) (local.get $len)))
        (local.set $count (i64.add (local.get $count)
          (i64.popcnt (i64.load offset=65536 (local.get $j)))))
        (local.set $j (i32.add (local.get $j) (i32.const 8)))
        (br $cl)))
      (local.set $seg_lo (local.get $seg_hi))
      (br $seg)))
    (local.get $count))

  (func (export "_start")
    (local $lo i64) (local $hi i64)
    (call $read_input)
    (local.set $lo (call $parse_u64))
    (local.set $hi (call $parse_u64))
    (call $skip_ws)
    (if (i32.or
          (i32.or (i64.lt_s (local.get $lo) (i64.const 0)) (i64.lt_s (local.get $hi) (i64.const 0)))
          (i32.or
            (i32.or (i64.gt_u (local.get $lo) (local.get $hi))
                    (i64.gt_u (local.get $hi) (i64.const 1000000000000)))
            (i32.lt_u (global.get $pos) (global.get $end))))
      (then (call $fail (i32.const 2176))))
    (call $put_u64 (call $count_primes (local.get $lo) (local.get $hi)))
    (call $put_byte (i32.const 10))
    (call $flush))
)
