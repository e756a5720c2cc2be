;; mandelbrot.wat — iteration counts of one Mandelbrot tile, in f64.
;;
;; Input (stdin, 36 bytes, little-endian):
;;   f64 x0, f64 y0   — the point of pixel (0, 0)
;;   f64 step         — distance between neighbouring pixels
;;   u32 width, u32 height, u32 max_iter
;;   (width * height at most 16,777,216)
;; Pixel (x, y) is c = (x0 + x*step) + (y0 + y*step)i.
;; Output (stdout): width*height u32 little-endian iteration counts, row by
;;   row (y outer, x inner). The count is the number of iterations
;;   z <- z^2 + c done before |z|^2 > 4, at most max_iter.
;; Errors: wrong input length or tile too large -> stderr message, exit 2.
;;
;; The float operations are spelled out in a fixed order (no fused
;; multiply-add) so a native implementation doing the same gets the same
;; bits; NaN canonicalization in the sandbox keeps it so on every CPU.
(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)

  (global $pos (mut i32) (i32.const 512))
  (global $end (mut i32) (i32.const 512))
  (global $out (mut i32) (i32.const 1664))

  (data (i32.const 2048) "mandelbrot: input too large or unreadable\0a\00")
  (data (i32.const 2176) "mandelbrot: expected 36 bytes: f64 x0, y0, step; u32 width, height, max_iter (LE)\0a\00")
  (data (i32.const 2304) "mandelbrot: out of memory\0a\00")
  (data (i32.const 2432) "mandelbrot: tile larger than 16777216 pixels\0a\00")

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


  (func $write_all (param $ptr i32) (param $len i32)
    (block $done (loop $l
      (br_if $done (i32.eqz (local.get $len)))
      (i32.store (i32.const 0) (local.get $ptr))
      (i32.store (i32.const 4) (local.get $len))
      (if (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))
        (then (call $proc_exit (i32.const 1)) (unreachable)))
      (local.set $ptr (i32.add (local.get $ptr) (i32.load (i32.const 8))))
      (local.set $len (i32.sub (local.get $len) (i32.load (i32.const 8))))
      (br $l))))

  (func $tile (param $x0 f64) (param $y0 f64) (param $step f64)
              (param $w i32) (param $h i32) (param $max i32) (param $dst i32)
    (local $x i32) (local $y i32) (local $n i32)
    (local $cx f64) (local $cy f64) (local $zx f64) (local $zy f64) (local $zx2 f64) (local $zy2 f64)
    (block $ydone (loop $yl
      (br_if $ydone (i32.ge_u (local.get $y) (local.get $h)))
      (local.set $cy (f64.add (local.get $y0) (f64.mul (f64.convert_i32_u (local.get $y)) (local.get $step))))
      (local.set $x (i32.const 0))
      (block $xdone (loop $xl
        (br_if $xdone (i32.ge_u (local.get $x) (local.get $w)))
        (local.set $cx (f64.add (local.get $x0) (f64.mul (f64.convert_i32_u (local.get $x)) (local.get $step))))
        (local.set $zx (f64.const 0))
        (local.set $zy (f64.const 0))
        (local.set $n (i32.const 0))
        (block $idone (loop $il
          (br_if $idone (i32.ge_u (local.get $n) (local.get $max)))
          (local.set $zx2 (f64.mul (local.get $zx) (local.get $zx)))
          (local.set $zy2 (f64.mul (local.get $zy) (local.get $zy)))
          (br_if $idone (f64.gt (f64.add (local.get $zx2) (local.get $zy2)) (f64.const 4)))
          (local.set $zy (f64.add (f64.mul (f64.mul (f64.const 2) (local.get $zx)) (local.get $zy)) (local.get $cy)))
          (local.set $zx (f64.add (f64.sub (local.get $zx2) (local.get $zy2)) (local.get $cx)))
          (local.set $n (i32.add (local.get $n) (i32.const 1)))
          (br $il)))
        (i32.store (local.get $dst) (local.get $n))
        (local.set $dst (i32.add (local.get $dst) (i32.const 4)))
        (local.set $x (i32.add (local.get $x) (i32.const 1)))
        (br $xl)))
      (local.set $y (i32.add (local.get $y) (i32.const 1)))
      (br $yl))))

  (func (export "_start")
    (local $w i32) (local $h i32) (local $pixels i64) (local $bytes i32)
    (call $read_input)
    (if (i32.ne (i32.sub (global.get $end) (i32.const 512)) (i32.const 36))
      (then (call $fail (i32.const 2176))))
    (local.set $w (i32.load (i32.const 536)))
    (local.set $h (i32.load (i32.const 540)))
    (local.set $pixels (i64.mul (i64.extend_i32_u (local.get $w)) (i64.extend_i32_u (local.get $h))))
    (if (i64.gt_u (local.get $pixels) (i64.const 16777216))
      (then (call $fail (i32.const 2432))))
    (local.set $bytes (i32.wrap_i64 (i64.mul (local.get $pixels) (i64.const 4))))
    (call $ensure_memory (i32.add (i32.const 65536) (local.get $bytes)))
    (call $tile
      (f64.load (i32.const 512)) (f64.load (i32.const 520)) (f64.load (i32.const 528))
      (local.get $w) (local.get $h) (i32.load (i32.const 544)) (i32.const 65536))
    (call $write_all (i32.const 65536) (local.get $bytes)))
)
