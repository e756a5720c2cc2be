//! Fuzzes the decoder every gossip message from an untrusted peer goes
//! through: it must return an error, never panic, on any bytes, and anything
//! it accepts must be canonical (re-encode to the same bytes).
#![no_main]

use formic_protocol::messages::Gossip;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = Gossip::from_bytes(data) {
        let _ = msg.verify();
        let again = msg.to_bytes().expect("a decoded message re-encodes");
        assert_eq!(again, data, "decoder accepted a non-canonical encoding");
    }
});
