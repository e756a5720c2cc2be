//! Content ids: the blake3 digest of a blob or record's canonical bytes.
//!
//! Everything shared on the network is named by what it contains, so a peer
//! can check any byte it receives against the name it asked for. The text
//! form is always 64 lowercase hex digits (one form only, so ids compare as
//! strings in scripts and file names); in CBOR it is a 32-byte byte string.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A blake3-256 digest naming a blob or record by its content.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentId([u8; 32]);

impl ContentId {
    /// Length of the digest in bytes.
    pub const LEN: usize = 32;

    /// The id of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(*blake3::hash(bytes).as_bytes())
    }

    /// Wraps a digest computed elsewhere (e.g. by a streaming hasher).
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw digest.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The first 12 hex digits: enough to tell ids apart in logs, not to
    /// identify anything securely.
    pub fn short(&self) -> String {
        let mut s = self.to_string();
        s.truncate(12);
        s
    }
}

impl From<blake3::Hash> for ContentId {
    fn from(h: blake3::Hash) -> Self {
        Self(*h.as_bytes())
    }
}

impl fmt::Display for ContentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&data_encoding::HEXLOWER.encode(&self.0))
    }
}

impl fmt::Debug for ContentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentId({})", self.short())
    }
}

/// Why a string is not a content id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseContentIdError {
    /// The string is not 64 characters long (its length given).
    #[error("a content id is 64 hex digits, got {0} characters")]
    WrongLength(usize),
    /// The string has a character outside `0-9a-f`.
    #[error("a content id is lowercase hex (0-9, a-f); found other characters")]
    NotHex,
}

impl FromStr for ContentId {
    type Err = ParseContentIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 64 {
            return Err(ParseContentIdError::WrongLength(s.chars().count()));
        }
        let bytes = data_encoding::HEXLOWER
            .decode(s.as_bytes())
            .map_err(|_| ParseContentIdError::NotHex)?;
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| ParseContentIdError::WrongLength(s.len()))?;
        Ok(Self(arr))
    }
}

impl Serialize for ContentId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // JSON (results.json) gets the hex text users see everywhere else;
        // CBOR gets the compact 32-byte string.
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            serializer.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for ContentId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
            s.parse().map_err(serde::de::Error::custom)
        } else {
            let b = serde_bytes::ByteArray::<32>::deserialize(deserializer)?;
            Ok(Self(b.into_array()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_round_trips_and_is_lowercase_hex() {
        let id = ContentId::of(b"formic");
        let s = id.to_string();
        assert_eq!(s.len(), 64);
        assert!(
            s.chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        );
        assert_eq!(s.parse::<ContentId>(), Ok(id));
        assert_eq!(id.short(), s[..12]);
    }

    #[test]
    fn rejects_bad_text() {
        assert_eq!(
            "abc".parse::<ContentId>(),
            Err(ParseContentIdError::WrongLength(3))
        );
        let upper = ContentId::of(b"x").to_string().to_uppercase();
        assert_eq!(upper.parse::<ContentId>(), Err(ParseContentIdError::NotHex));
        let multibyte = "é".repeat(32);
        assert!(multibyte.parse::<ContentId>().is_err());
    }
}
