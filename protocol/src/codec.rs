//! Canonical CBOR: the one way Formic turns values into bytes and back.
//!
//! Signatures and content ids are computed over encoded bytes, so every value
//! must have exactly one encoding. cbor4ii's serde encoder is deterministic
//! for our types (structs as maps in declaration order, shortest integer
//! forms, definite lengths, no floats, no hash maps), and the decoder here
//! enforces the converse: it re-encodes what it decoded and rejects input that
//! was not already in that form. Decoding is bounded (size cap, nesting cap)
//! and returns a typed error for every malformed input; it never panics.
//!
//! Top-level messages (gossip, sync, blobs, signed payloads) are *versioned*:
//! a 2-element array `[PROTOCOL_VERSION, value]`, so a peer running a future
//! protocol is told "unknown version" instead of a confusing field error.

use std::convert::Infallible;

use cbor4ii::core::dec::{Read, Reference};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The version of the wire protocol spoken by this build.
///
/// 2: reveals carry the salt of their commit's seal, and a manifest names
/// its sandbox engine. A version-1 peer's records (unsalted seals) are
/// refused with [`DecodeError::UnknownVersion`], which says so, rather than
/// a confusing field error.
pub const PROTOCOL_VERSION: u16 = 2;

/// Nesting deeper than this is refused before it can exhaust the stack.
/// Our deepest message nests well under 16 levels.
const MAX_DEPTH: usize = 64;

/// CBOR initial byte of a definite array of two items.
const ARRAY_OF_TWO: u8 = 0x82;

/// Why a value could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// serde could not serialize the value.
    #[error("cannot encode value")]
    Serialize(#[source] cbor4ii::serde::EncodeError<std::collections::TryReserveError>),
    /// The encoding is over the caller's size cap.
    #[error("encoded value is {len} bytes, over the {max}-byte limit")]
    TooLarge {
        /// Length of the encoding.
        len: usize,
        /// The cap it was encoded under.
        max: usize,
    },
}

/// Why bytes could not be decoded. Each variant names the cause in words a
/// peer operator can act on; none is ever a panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input is over the caller's size cap (checked before decoding).
    #[error("message is {len} bytes, over the {max}-byte limit")]
    TooLarge {
        /// Length of the input.
        len: usize,
        /// The cap it was decoded under.
        max: usize,
    },
    /// The input ends inside a value (what was being read is named).
    #[error("message is truncated: it ends in the middle of {0}")]
    Truncated(&'static str),
    /// Bytes follow the one value a message holds (how many).
    #[error("message has {0} trailing bytes after the value")]
    TrailingBytes(usize),
    /// The `[version, body]` envelope carries a version this build does not
    /// speak.
    #[error("message uses protocol version {found}, this build speaks version {supported}")]
    UnknownVersion {
        /// The version in the message.
        found: u16,
        /// [`PROTOCOL_VERSION`], the one this build speaks.
        supported: u16,
    },
    /// The input is not a `[version, body]` envelope.
    #[error("message is not a versioned Formic message (expected a [version, body] array)")]
    NotVersioned,
    /// Well-formed CBOR of the wrong shape: a missing, unknown or mistyped
    /// field (serde's message).
    #[error("bad field: {0}")]
    BadField(String),
    /// Not well-formed CBOR (the decoder's message).
    #[error("malformed CBOR: {0}")]
    Malformed(String),
    /// Arrays and maps nest deeper than the decoder allows.
    #[error("message nests deeper than {MAX_DEPTH} levels")]
    TooDeep,
    /// The value decodes but is not in the one canonical encoding, so its
    /// content id or signature would not be reproducible.
    #[error("message is not in canonical form (re-encoding it gives different bytes)")]
    NonCanonical,
}

type CborDecodeError = cbor4ii::serde::DecodeError<Infallible>;

impl From<CborDecodeError> for DecodeError {
    fn from(err: CborDecodeError) -> Self {
        use cbor4ii::core::error::DecodeError as Core;
        match err {
            // serde's own messages: missing field, unknown variant, wrong
            // length of a fixed array, invalid value...
            cbor4ii::serde::DecodeError::Custom(msg) => DecodeError::BadField(msg.into()),
            cbor4ii::serde::DecodeError::Core(core) => match core {
                Core::Eof { name, .. } => DecodeError::Truncated(name),
                Core::DepthOverflow { .. } => DecodeError::TooDeep,
                Core::Mismatch { name, found } => {
                    DecodeError::Malformed(format!("expected {name}, found byte 0x{found:02x}"))
                }
                Core::Unsupported { name, found } => DecodeError::Malformed(format!(
                    "unsupported item 0x{found:02x} where {name} was expected"
                )),
                Core::RequireUtf8 { name } => {
                    DecodeError::Malformed(format!("{name} is not valid UTF-8"))
                }
                other => DecodeError::Malformed(format!("{other:?}")),
            },
        }
    }
}

/// A slice reader that knows how much it has left (cbor4ii's own does not
/// expose that, and we need it to reject trailing bytes) and caps nesting.
struct BoundedReader<'a> {
    buf: &'a [u8],
    depth_left: usize,
}

impl<'de> Read<'de> for BoundedReader<'de> {
    type Error = Infallible;

    fn fill<'short>(&'short mut self, want: usize) -> Result<Reference<'de, 'short>, Self::Error> {
        let len = want.min(self.buf.len());
        Ok(Reference::Long(&self.buf[..len]))
    }

    fn advance(&mut self, n: usize) {
        let n = n.min(self.buf.len());
        self.buf = &self.buf[n..];
    }

    fn step_in(&mut self) -> bool {
        match self.depth_left.checked_sub(1) {
            Some(d) => {
                self.depth_left = d;
                true
            }
            None => false,
        }
    }

    fn step_out(&mut self) {
        self.depth_left += 1;
    }
}

fn serialize_into<T: Serialize>(buf: Vec<u8>, value: &T) -> Result<Vec<u8>, EncodeError> {
    cbor4ii::serde::to_vec(buf, value).map_err(EncodeError::Serialize)
}

/// Encodes `value` canonically (unversioned: for values nested in others or
/// stored locally).
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, EncodeError> {
    serialize_into(Vec::new(), value)
}

/// Encodes `value` as a versioned top-level message, refusing results over
/// `max` bytes so a sender finds out before its peers drop the message.
pub fn encode_versioned<T: Serialize>(value: &T, max: usize) -> Result<Vec<u8>, EncodeError> {
    let buf = serialize_into(vec![ARRAY_OF_TWO], &PROTOCOL_VERSION)?;
    let buf = serialize_into(buf, value)?;
    if buf.len() > max {
        return Err(EncodeError::TooLarge {
            len: buf.len(),
            max,
        });
    }
    Ok(buf)
}

fn check_size(bytes: &[u8], max: usize) -> Result<(), DecodeError> {
    if bytes.len() > max {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            max,
        });
    }
    Ok(())
}

fn finish<T: DeserializeOwned>(
    de: cbor4ii::serde::Deserializer<BoundedReader<'_>>,
    value: T,
) -> Result<T, DecodeError> {
    let rest = de.into_inner().buf.len();
    if rest > 0 {
        return Err(DecodeError::TrailingBytes(rest));
    }
    Ok(value)
}

/// Decodes an unversioned value, at most `max` bytes, that must be in
/// canonical form and use every byte.
pub fn decode<T: Serialize + DeserializeOwned>(bytes: &[u8], max: usize) -> Result<T, DecodeError> {
    check_size(bytes, max)?;
    let mut de = cbor4ii::serde::Deserializer::new(BoundedReader {
        buf: bytes,
        depth_left: MAX_DEPTH,
    });
    let value = T::deserialize(&mut de)?;
    let value = finish(de, value)?;
    match encode(&value) {
        Ok(again) if again == bytes => Ok(value),
        _ => Err(DecodeError::NonCanonical),
    }
}

/// Decodes a versioned top-level message of at most `max` bytes.
pub fn decode_versioned<T: Serialize + DeserializeOwned>(
    bytes: &[u8],
    max: usize,
) -> Result<T, DecodeError> {
    let value = decode_versioned_canonical(bytes, max)?;
    match encode_versioned(&value, usize::MAX) {
        Ok(again) if again == bytes => Ok(value),
        _ => Err(DecodeError::NonCanonical),
    }
}

/// [`decode_versioned`] of bytes already known to be canonical, because
/// they decoded as canonical before or were encoded here: skips the
/// re-encoding that proves it, half the cost of a decode. Every other
/// check still runs. Crate-private: only an envelope that remembers how
/// its own, immutable payload decoded may vouch for it.
pub(crate) fn decode_versioned_canonical<T: DeserializeOwned>(
    bytes: &[u8],
    max: usize,
) -> Result<T, DecodeError> {
    check_size(bytes, max)?;
    match bytes.first() {
        Some(&ARRAY_OF_TWO) => {}
        Some(_) => return Err(DecodeError::NotVersioned),
        None => return Err(DecodeError::Truncated("the message header")),
    }
    let mut de = cbor4ii::serde::Deserializer::new(BoundedReader {
        buf: &bytes[1..],
        depth_left: MAX_DEPTH,
    });
    // The version is read before the body, so a message from a newer
    // protocol is reported as such even when its body no longer parses.
    let found = <u16 as serde::Deserialize>::deserialize(&mut de)?;
    if found != PROTOCOL_VERSION {
        return Err(DecodeError::UnknownVersion {
            found,
            supported: PROTOCOL_VERSION,
        });
    }
    let value = T::deserialize(&mut de)?;
    finish(de, value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Sample {
        a: u64,
        b: String,
    }

    #[test]
    fn versioned_round_trip() {
        let v = Sample {
            a: 7,
            b: "x".into(),
        };
        let bytes = encode_versioned(&v, 1024).unwrap();
        assert_eq!(decode_versioned::<Sample>(&bytes, 1024).unwrap(), v);
    }

    #[test]
    fn reports_each_cause() {
        let v = Sample {
            a: 300,
            b: "hello".into(),
        };
        let bytes = encode_versioned(&v, 1024).unwrap();
        assert!(matches!(
            decode_versioned::<Sample>(&bytes, 4),
            Err(DecodeError::TooLarge { .. })
        ));
        assert!(matches!(
            decode_versioned::<Sample>(&bytes[..bytes.len() - 2], 1024),
            Err(DecodeError::Truncated(_))
        ));
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert_eq!(
            decode_versioned::<Sample>(&trailing, 1024),
            Err(DecodeError::TrailingBytes(1))
        );
        let mut future = bytes.clone();
        future[1] = 0x09; // version 9
        assert_eq!(
            decode_versioned::<Sample>(&future, 1024),
            Err(DecodeError::UnknownVersion {
                found: 9,
                supported: PROTOCOL_VERSION
            })
        );
        assert_eq!(
            decode_versioned::<Sample>(&[0xa0], 1024),
            Err(DecodeError::NotVersioned)
        );
        assert!(matches!(
            decode_versioned::<Sample>(&[], 1024),
            Err(DecodeError::Truncated(_))
        ));
        // A map missing field `b`.
        let missing =
            encode_versioned(&std::collections::BTreeMap::from([("a", 1u8)]), 1024).unwrap();
        assert!(matches!(
            decode_versioned::<Sample>(&missing, 1024),
            Err(DecodeError::BadField(_))
        ));
    }

    #[test]
    fn rejects_non_canonical_integer() {
        // 300 as a 4-byte integer instead of the shortest 2-byte form.
        let canonical = encode(&300u64).unwrap();
        assert_eq!(canonical, vec![0x19, 0x01, 0x2c]);
        let long_form = vec![0x1a, 0x00, 0x00, 0x01, 0x2c];
        assert_eq!(
            decode::<u64>(&long_form, 16),
            Err(DecodeError::NonCanonical)
        );
        assert_eq!(decode::<u64>(&canonical, 16), Ok(300));
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        let mut bytes = vec![0x81; 100_000];
        bytes.push(0x00);
        assert!(decode::<serde_value_like::Any>(&bytes, usize::MAX).is_err());
    }

    mod serde_value_like {
        /// Accepts any CBOR shape, to exercise the nesting cap.
        #[derive(Debug, serde::Serialize, serde::Deserialize)]
        #[serde(untagged)]
        pub(super) enum Any {
            U(u64),
            L(Vec<Any>),
        }
    }
}
