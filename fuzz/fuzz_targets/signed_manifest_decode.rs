//! Fuzzes the decoder of signed project manifests (fetched as blobs from
//! untrusted peers): errors, never panics.
#![no_main]

use formic_protocol::Signed;
use formic_protocol::messages::ProjectManifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = Signed::<ProjectManifest>::from_bytes(data) {
        let _ = env.verify();
    }
});
