//! The NaN rewrite reads an untrusted app's bytes at compile time: on any
//! input it returns a module or an error, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = formic_work_units::nan_rewrite::rewrite(data);
});
