//! Fuzzes the bundle decoder and the record decoder behind it, the path
//! every multi-record gossip message from an untrusted peer takes: errors
//! only, never a panic, and what is accepted is canonical.
#![no_main]

use formic_protocol::messages::{Gossip, GossipBundle};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(bundle) = GossipBundle::from_bytes(data) {
        let again = bundle.to_bytes().expect("a decoded bundle re-encodes");
        assert_eq!(again, data, "decoder accepted a non-canonical bundle");
        for record in &bundle.bundle {
            if let Ok(g) = Gossip::from_bytes(record) {
                let _ = g.verify();
            }
        }
    }
});
