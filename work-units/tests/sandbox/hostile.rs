//! Hostile and misbehaving guests: each must end with the typed error
//! naming the limit, in bounded time, with the host unharmed.

use std::time::{Duration, Instant};

use formic_work_units::{CompileError, SandboxLimits, UnitError};

use super::{compile, run_wat, sandbox, small_limits};

const WASI: &str = r#"
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
"#;

fn module(body: &str) -> String {
    format!("(module {WASI} (memory (export \"memory\") 1) {body})")
}

#[test]
fn infinite_loop_exhausts_fuel() {
    let t = Instant::now();
    let limits = SandboxLimits {
        fuel: 1_000_000,
        ..small_limits()
    };
    let err = run_wat(
        &module(r#"(func (export "_start") (loop $l (br $l)))"#),
        b"",
        &limits,
    )
    .expect_err("must not finish");
    assert_eq!(err, UnitError::FuelExhausted { budget: 1_000_000 });
    assert!(t.elapsed() < Duration::from_secs(10));
}

#[test]
fn infinite_loop_with_huge_fuel_hits_wall_clock() {
    let limits = SandboxLimits {
        fuel: u64::MAX / 2,
        wall_clock: Duration::from_millis(300),
        ..small_limits()
    };
    let t = Instant::now();
    let err = run_wat(
        &module(r#"(func (export "_start") (loop $l (br $l)))"#),
        b"",
        &limits,
    )
    .expect_err("must not finish");
    assert_eq!(
        err,
        UnitError::Timeout {
            limit: Duration::from_millis(300)
        }
    );
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(10),
        "took {took:?}"
    );
}

#[test]
fn slow_host_calls_still_hit_wall_clock() {
    // Each `random_get` fills 15 MiB (milliseconds of host work) for a few
    // units of fuel, so fuel yields alone would come far too late; the
    // check after every host call must stop it.
    let limits = SandboxLimits {
        fuel: u64::MAX / 2,
        wall_clock: Duration::from_millis(300),
        ..small_limits()
    };
    let wat = r#"
(module
  (import "wasi_snapshot_preview1" "random_get" (func $random_get (param i32 i32) (result i32)))
  (memory (export "memory") 240)
  (func (export "_start")
    (loop $l
      (drop (call $random_get (i32.const 0) (i32.const 15728640)))
      (br $l))))
"#;
    let t = Instant::now();
    let err = run_wat(wat, b"", &limits).expect_err("must not finish");
    assert_eq!(
        err,
        UnitError::Timeout {
            limit: Duration::from_millis(300)
        }
    );
    let took = t.elapsed();
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[test]
fn infinite_loop_in_start_section_is_bounded() {
    let limits = SandboxLimits {
        fuel: 1_000_000,
        ..small_limits()
    };
    let wat = module(r#"(func $s (loop $l (br $l))) (start $s) (func (export "_start"))"#);
    assert_eq!(
        run_wat(&wat, b"", &limits),
        Err(UnitError::FuelExhausted { budget: 1_000_000 })
    );
}

#[test]
fn memory_bomb_hits_memory_limit() {
    let wat = module(
        r#"(func (export "_start")
             (loop $l (drop (memory.grow (i32.const 16))) (br $l)))"#,
    );
    let limits = small_limits();
    assert_eq!(
        run_wat(&wat, b"", &limits),
        Err(UnitError::MemoryLimit {
            limit: limits.memory_bytes
        })
    );
    // Declaring a huge initial memory fails at instantiation the same way.
    let wat =
        format!("(module {WASI} (memory (export \"memory\") 2000) (func (export \"_start\")))");
    assert_eq!(
        run_wat(&wat, b"", &limits),
        Err(UnitError::MemoryLimit {
            limit: limits.memory_bytes
        })
    );
}

#[test]
fn memory_bomb_with_default_limits_leaves_host_alive() {
    // 256 MiB default: the guest is stopped at the limit and the host goes on.
    let wat = module(
        r#"(func (export "_start")
             (loop $l (drop (memory.grow (i32.const 256))) (br $l)))"#,
    );
    let limits = SandboxLimits::default();
    assert_eq!(
        run_wat(&wat, b"", &limits),
        Err(UnitError::MemoryLimit {
            limit: limits.memory_bytes
        })
    );
}

#[test]
fn stack_overflow_is_a_trap() {
    let wat = module(
        r#"(func $f (param i64) (result i64)
             (i64.add (call $f (i64.add (local.get 0) (i64.const 1))) (i64.const 1)))
           (func (export "_start") (drop (call $f (i64.const 0))))"#,
    );
    match run_wat(&wat, b"", &small_limits()) {
        Err(UnitError::Trap { message }) => assert!(message.contains("stack"), "{message}"),
        other => panic!("expected a stack trap, got {other:?}"),
    }
}

#[test]
fn other_traps_are_errors() {
    let wat = module(r#"(func (export "_start") unreachable)"#);
    assert!(matches!(
        run_wat(&wat, b"", &small_limits()),
        Err(UnitError::Trap { .. })
    ));
    let wat = module(r#"(func (export "_start") (drop (i32.load (i32.const 70000))))"#);
    assert!(matches!(
        run_wat(&wat, b"", &small_limits()),
        Err(UnitError::Trap { .. })
    ));
}

#[test]
fn endless_output_hits_output_limit() {
    // Writes 1 KiB blocks forever, ignoring errors.
    let wat = module(
        r#"(func (export "_start")
             (i32.store (i32.const 0) (i32.const 1024))
             (i32.store (i32.const 4) (i32.const 1024))
             (loop $l
               (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
               (br $l)))"#,
    );
    let limits = small_limits();
    assert_eq!(
        run_wat(&wat, b"", &limits),
        Err(UnitError::OutputTooLarge {
            limit: limits.max_output_bytes
        })
    );
}

#[test]
fn endless_stderr_is_truncated_not_fatal() {
    // 100 KiB to stderr, then "ok" to stdout.
    let wat = module(
        r#"(data (i32.const 64) "ok")
           (func (export "_start") (local $i i32)
             (i32.store (i32.const 0) (i32.const 1024))
             (i32.store (i32.const 4) (i32.const 1024))
             (loop $l
               (drop (call $fd_write (i32.const 2) (i32.const 0) (i32.const 1) (i32.const 8)))
               (local.set $i (i32.add (local.get $i) (i32.const 1)))
               (br_if $l (i32.lt_u (local.get $i) (i32.const 100))))
             (i32.store (i32.const 0) (i32.const 64))
             (i32.store (i32.const 4) (i32.const 2))
             (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))"#,
    );
    let out = run_wat(&wat, b"", &small_limits()).expect("run");
    assert_eq!(out.output, b"ok");
    assert_eq!(out.stderr.len(), formic_work_units::STDERR_CAP);
}

/// Probes the file system, environment and arguments; writes the errnos and
/// counts it got as bytes: [prestat(3), path_open(3), prestat(4),
/// environ count, argc].
const PROBE: &str = r#"
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_prestat_get" (func $prestat (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $env_sizes (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 200) "etc/passwd")
  (func (export "_start")
    (i32.store8 (i32.const 100) (call $prestat (i32.const 3) (i32.const 300)))
    (i32.store8 (i32.const 101)
      (call $path_open (i32.const 3) (i32.const 0) (i32.const 200) (i32.const 10) (i32.const 0)
        (i64.const 0) (i64.const 0) (i32.const 0) (i32.const 320)))
    (i32.store8 (i32.const 102) (call $prestat (i32.const 4) (i32.const 300)))
    (drop (call $env_sizes (i32.const 340) (i32.const 344)))
    (i32.store8 (i32.const 103) (i32.load (i32.const 340)))
    (drop (call $args_sizes (i32.const 340) (i32.const 344)))
    (i32.store8 (i32.const 104) (i32.load (i32.const 340)))
    (i32.store (i32.const 0) (i32.const 100))
    (i32.store (i32.const 4) (i32.const 5))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
"#;

#[test]
fn no_preopened_dirs_no_env_one_arg() {
    let out = run_wat(PROBE, b"", &small_limits()).expect("run");
    const EBADF: u8 = 8;
    assert_eq!(out.output, [EBADF, EBADF, EBADF, 0, 1]);
}

#[test]
fn clocks_are_fixed() {
    let wat = r#"
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_time_get" (func $now (param i32 i64 i32) (result i32)))
  (memory (export "memory") 1)
  (func $burn (local $i i32)
    (loop $l (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const 2000000)))))
  (func (export "_start")
    (drop (call $now (i32.const 0) (i64.const 1) (i32.const 104)))
    (drop (call $now (i32.const 1) (i64.const 1) (i32.const 112)))
    (call $burn)
    (drop (call $now (i32.const 0) (i64.const 1) (i32.const 120)))
    (drop (call $now (i32.const 1) (i64.const 1) (i32.const 128)))
    (i32.store (i32.const 0) (i32.const 104))
    (i32.store (i32.const 4) (i32.const 32))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
"#;
    let out = run_wat(wat, b"", &small_limits()).expect("run");
    let words: Vec<u64> = out
        .output
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect();
    let wall = formic_work_units::FIXED_WALL_CLOCK_SECS * 1_000_000_000;
    let mono = formic_work_units::FIXED_MONOTONIC_NANOS;
    assert_eq!(words, [wall, mono, wall, mono]);
}

#[test]
fn poll_oneoff_does_not_sleep() {
    // One clock subscription for 60 s (relative); must return at once.
    let wat = r#"
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (i64.store (i32.const 1000) (i64.const 42))        ;; userdata
    (i32.store8 (i32.const 1008) (i32.const 0))        ;; tag: clock
    (i32.store (i32.const 1016) (i32.const 1))         ;; monotonic
    (i64.store (i32.const 1024) (i64.const 60000000000))
    (i32.store8 (i32.const 100) (call $poll (i32.const 1000) (i32.const 2000) (i32.const 1) (i32.const 3000)))
    (i32.store8 (i32.const 101) (i32.load (i32.const 3000)))
    (i32.store8 (i32.const 102) (i32.wrap_i64 (i64.load (i32.const 2000))))
    (i32.store (i32.const 0) (i32.const 100))
    (i32.store (i32.const 4) (i32.const 3))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
"#;
    let t = Instant::now();
    let out = run_wat(wat, b"", &small_limits()).expect("run");
    assert!(t.elapsed() < Duration::from_secs(10));
    assert_eq!(out.output, [0, 1, 42]);
}

#[test]
fn proc_exit_zero_is_success_nonzero_is_error() {
    let wat = module(
        r#"(data (i32.const 64) "hi")
           (func (export "_start")
             (i32.store (i32.const 0) (i32.const 64))
             (i32.store (i32.const 4) (i32.const 2))
             (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
             (call $proc_exit (i32.const 0)))"#,
    );
    assert_eq!(
        run_wat(&wat, b"", &small_limits()).expect("exit 0").output,
        b"hi"
    );
    let wat = module(r#"(func (export "_start") (call $proc_exit (i32.const 3)))"#);
    assert_eq!(
        run_wat(&wat, b"", &small_limits()),
        Err(UnitError::Exit { code: 3 })
    );
}

#[test]
fn stdin_is_the_input() {
    // cat: copies stdin to stdout.
    let wat = r#"
(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (loop $l
      (i32.store (i32.const 0) (i32.const 1024))
      (i32.store (i32.const 4) (i32.const 4096))
      (drop (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
      (if (i32.load (i32.const 8))
        (then
          (i32.store (i32.const 4) (i32.load (i32.const 8)))
          (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
          (br $l))))))
"#;
    let input: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(
        run_wat(wat, &input, &small_limits()).expect("cat").output,
        input
    );
}

#[test]
fn only_wasi_preview1_imports_are_allowed() {
    let sandbox = sandbox();
    let err = sandbox
        .compile(br#"(module (import "env" "getpid" (func)) (func (export "_start")))"#)
        .expect_err("foreign import");
    assert_eq!(
        err,
        CompileError::ForbiddenImport {
            module: "env".into(),
            name: "getpid".into()
        }
    );
    let err = sandbox
        .compile(br#"(module (import "wasi_snapshot_preview1" "sock_open_everything" (func)))"#)
        .expect_err("unknown wasi import");
    assert_eq!(
        err,
        CompileError::ForbiddenImport {
            module: "wasi_snapshot_preview1".into(),
            name: "sock_open_everything".into()
        }
    );
    // Right name, wrong type.
    let err = sandbox
        .compile(br#"(module (import "wasi_snapshot_preview1" "proc_exit" (func (param i64))))"#)
        .expect_err("wrong type");
    assert!(matches!(err, CompileError::InvalidModule { .. }), "{err:?}");
}

#[test]
fn invalid_modules_and_missing_start() {
    let sandbox = sandbox();
    for bytes in [&b"not wasm at all ("[..], b"\0asm\x01\0\0\0\xff\xff", b""] {
        assert!(matches!(
            sandbox.compile(bytes),
            Err(CompileError::InvalidModule { .. })
        ));
    }
    // Disabled proposals are rejected: threads (shared memory), memory64.
    for wat in [
        "(module (memory 1 1 shared))",
        "(module (memory i64 1))",
        "(module (memory 1) (memory 1))",
    ] {
        assert!(
            matches!(
                sandbox.compile(wat.as_bytes()),
                Err(CompileError::InvalidModule { .. })
            ),
            "{wat}"
        );
    }
    let app = compile(&sandbox, "(module (memory (export \"memory\") 1))");
    assert_eq!(
        sandbox.run(&app, b"", [0; 32], &small_limits(), None),
        Err(UnitError::MissingExport {
            name: "_start".into()
        })
    );
}

#[test]
fn app_from_another_sandbox_is_refused_not_a_panic() {
    let (a, b) = (sandbox(), sandbox());
    let app = compile(
        &a,
        "(module (memory (export \"memory\") 1) (func (export \"_start\")))",
    );
    assert!(matches!(
        b.run(&app, b"", [0; 32], &small_limits(), None),
        Err(UnitError::InvalidModule { .. })
    ));
    assert!(a.run(&app, b"", [0; 32], &small_limits(), None).is_ok());
}
