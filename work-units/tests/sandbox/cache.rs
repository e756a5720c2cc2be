//! The on-disk compiled-module cache: reuse, and recovery from corruption.

use formic_work_units::{Sandbox, SandboxConfig, SandboxLimits, apps};

fn cached_sandbox(dir: &std::path::Path) -> Sandbox {
    Sandbox::new(SandboxConfig {
        cache_dir: Some(dir.to_path_buf()),
        ..SandboxConfig::default()
    })
    .expect("sandbox")
}

fn primes_output(sandbox: &Sandbox, app: &formic_work_units::App) -> (Vec<u8>, u64) {
    let out = sandbox
        .run(app, b"0 100000", [0; 32], &SandboxLimits::default(), None)
        .expect("run");
    (out.output, out.fuel_used)
}

#[test]
fn compiled_once_then_loaded_from_cache() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = cached_sandbox(dir.path());
    let app = first.compile(apps::PRIMES_WAT.as_bytes()).expect("compile");
    assert!(!app.loaded_from_cache());
    let expected = primes_output(&first, &app);
    let file = first.cache_file(&app).expect("cache on");
    assert!(file.exists());

    let second = cached_sandbox(dir.path());
    let again = second
        .compile(apps::PRIMES_WAT.as_bytes())
        .expect("compile");
    assert!(again.loaded_from_cache());
    assert_eq!(again.id(), app.id());
    assert_eq!(primes_output(&second, &again), expected);
}

#[test]
fn corrupt_cache_file_is_discarded_and_recompiled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sandbox = cached_sandbox(dir.path());
    let app = sandbox
        .compile(apps::PRIMES_WAT.as_bytes())
        .expect("compile");
    let expected = primes_output(&sandbox, &app);
    let file = sandbox.cache_file(&app).expect("cache on");
    let pristine = std::fs::read(&file).expect("read cache");

    // A flipped bit anywhere (checksum or artifact), and a truncated file.
    for damage in [pristine.len() / 2, 5, pristine.len() - 1] {
        let mut bytes = pristine.clone();
        bytes[damage] ^= 0x40;
        std::fs::write(&file, &bytes).expect("write");
        let app = sandbox
            .compile(apps::PRIMES_WAT.as_bytes())
            .expect("recompile");
        assert!(
            !app.loaded_from_cache(),
            "flipped byte {damage} was accepted"
        );
        assert_eq!(primes_output(&sandbox, &app), expected);
        assert_eq!(std::fs::read(&file).expect("rewritten"), pristine);
    }
    std::fs::write(&file, &pristine[..40]).expect("truncate");
    assert!(
        !sandbox
            .compile(apps::PRIMES_WAT.as_bytes())
            .expect("recompile")
            .loaded_from_cache()
    );
    assert!(
        sandbox
            .compile(apps::PRIMES_WAT.as_bytes())
            .expect("cached")
            .loaded_from_cache()
    );
}

#[test]
fn app_id_is_the_hash_of_the_binary_in_either_form() {
    let sandbox = Sandbox::new(SandboxConfig::default()).expect("sandbox");
    let wasm = wat::parse_str(apps::MONTECARLO_PI_WAT).expect("wat");
    let from_text = sandbox
        .compile(apps::MONTECARLO_PI_WAT.as_bytes())
        .expect("compile");
    let from_binary = sandbox.compile(&wasm).expect("compile");
    assert_eq!(from_text.id(), *blake3::hash(&wasm).as_bytes());
    assert_eq!(from_binary.id(), from_text.id());
    assert_eq!(formic_work_units::app_id(&wasm), Some(from_text.id()));
}
