//! Wire types of the blob exchange protocol (`/formic/blob/1.0.0`).
//!
//! Blobs travel point to point in chunks of at most [`CHUNK_SIZE`], never
//! over gossip. A fetcher first asks a provider for the blob's
//! [`BlobManifest`] (its size and the blake3 digest of every chunk), then
//! asks for chunks one by one and checks each against the manifest before it
//! keeps it; the whole blob is finally checked against its [`BlobRef`] id, so
//! a lying manifest is caught too. Every message is a versioned canonical
//! CBOR value with its own size cap, decoded with typed errors.

use serde::{Deserialize, Serialize};

use crate::codec::{self, DecodeError, EncodeError};
use crate::content_id::ContentId;
use crate::messages::BlobRef;

/// The libp2p protocol name of the blob exchange.
pub const BLOB_PROTOCOL: &str = "/formic/blob/1.0.0";

/// Largest chunk on the wire: one request-response message is read whole
/// into memory, so chunks keep each message small.
pub const CHUNK_SIZE: usize = 1024 * 1024;

/// Largest blob a peer stores, serves or fetches.
pub const MAX_BLOB_BYTES: u64 = 1024 * 1024 * 1024;

/// Largest encoded request (a tag, an id and an index).
pub const MAX_BLOB_REQUEST_BYTES: usize = 256;

/// Largest encoded response: a full chunk plus its CBOR framing, or the
/// manifest of a [`MAX_BLOB_BYTES`] blob (1024 digests, ~35 KiB).
pub const MAX_BLOB_RESPONSE_BYTES: usize = CHUNK_SIZE + 1024;

/// What a fetcher asks a provider for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlobRequest {
    /// The size and chunk digests of blob `id`.
    Manifest {
        /// The blob asked for.
        id: ContentId,
    },
    /// Chunk number `index` (from 0) of blob `id`.
    Chunk {
        /// The blob the chunk belongs to.
        id: ContentId,
        /// Which chunk, counted from 0.
        index: u32,
    },
}

/// A blob's size and the blake3 digest of each of its chunks, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobManifest {
    /// The blob's length in bytes.
    pub size: u64,
    /// The blake3 digest of each [`CHUNK_SIZE`] chunk, in order (the last
    /// chunk may be shorter).
    pub chunks: Vec<ContentId>,
}

/// Why a manifest cannot describe the blob asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// The manifest's size differs from the [`BlobRef`]'s.
    #[error("manifest says the blob is {found} bytes, the reference says {expected}")]
    WrongSize {
        /// The size in the [`BlobRef`].
        expected: u64,
        /// The size in the manifest.
        found: u64,
    },
    /// The manifest lists more or fewer chunks than the size implies.
    #[error("manifest lists {found} chunks, a blob of this size has {expected}")]
    WrongChunkCount {
        /// Chunks a blob of the referenced size has.
        expected: u64,
        /// Chunks the manifest lists.
        found: u64,
    },
    /// The referenced blob is over [`MAX_BLOB_BYTES`] (its size given).
    #[error("blob of {0} bytes is over the {MAX_BLOB_BYTES}-byte limit")]
    TooLarge(u64),
}

impl BlobManifest {
    /// The manifest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self {
            size: bytes.len() as u64,
            chunks: bytes.chunks(CHUNK_SIZE).map(ContentId::of).collect(),
        }
    }

    /// How many chunks a blob of `size` bytes has (an empty blob has none).
    pub fn chunk_count(size: u64) -> u64 {
        size.div_ceil(CHUNK_SIZE as u64)
    }

    /// Length of chunk `index` of a blob of `size` bytes.
    pub fn chunk_len(size: u64, index: u32) -> u64 {
        let start = u64::from(index) * CHUNK_SIZE as u64;
        size.saturating_sub(start).min(CHUNK_SIZE as u64)
    }

    /// Checks the manifest is consistent with `blob` (size and chunk count).
    /// The digests themselves can only be checked against the data.
    pub fn check(&self, blob: &BlobRef) -> Result<(), ManifestError> {
        if blob.size > MAX_BLOB_BYTES {
            return Err(ManifestError::TooLarge(blob.size));
        }
        if self.size != blob.size {
            return Err(ManifestError::WrongSize {
                expected: blob.size,
                found: self.size,
            });
        }
        let expected = Self::chunk_count(blob.size);
        let found = self.chunks.len() as u64;
        if found != expected {
            return Err(ManifestError::WrongChunkCount { expected, found });
        }
        Ok(())
    }
}

/// A provider's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlobResponse {
    /// The manifest asked for by [`BlobRequest::Manifest`].
    Manifest(BlobManifest),
    /// The chunk's bytes asked for by [`BlobRequest::Chunk`] (unchecked:
    /// the fetcher checks them against the manifest).
    Chunk(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The provider does not have that blob (or chunk index).
    NotFound,
    /// The request was refused (malformed, over a limit, provider busy).
    Refused(String),
}

impl BlobRequest {
    /// Encodes the request (versioned CBOR, at most
    /// [`MAX_BLOB_REQUEST_BYTES`]).
    pub fn to_bytes(&self) -> Result<Vec<u8>, EncodeError> {
        codec::encode_versioned(self, MAX_BLOB_REQUEST_BYTES)
    }

    /// Decodes a request, refusing one over [`MAX_BLOB_REQUEST_BYTES`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        codec::decode_versioned(bytes, MAX_BLOB_REQUEST_BYTES)
    }
}

impl BlobResponse {
    /// Encodes the response (versioned CBOR, at most
    /// [`MAX_BLOB_RESPONSE_BYTES`]).
    pub fn to_bytes(&self) -> Result<Vec<u8>, EncodeError> {
        codec::encode_versioned(self, MAX_BLOB_RESPONSE_BYTES)
    }

    /// Decodes a response, refusing one over [`MAX_BLOB_RESPONSE_BYTES`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        codec::decode_versioned(bytes, MAX_BLOB_RESPONSE_BYTES)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_matches_its_blob() {
        let bytes = vec![7u8; CHUNK_SIZE * 2 + 5];
        let m = BlobManifest::of(&bytes);
        assert_eq!(m.chunks.len(), 3);
        assert_eq!(BlobManifest::chunk_len(m.size, 2), 5);
        assert_eq!(m.check(&BlobRef::of(&bytes)), Ok(()));
        let other = BlobRef::of(&bytes[1..]);
        assert!(m.check(&other).is_err());
        assert_eq!(BlobManifest::chunk_count(0), 0);
    }

    #[test]
    fn full_chunk_response_fits_the_cap() {
        let r = BlobResponse::Chunk(vec![0xab; CHUNK_SIZE]);
        let bytes = r.to_bytes().unwrap();
        assert_eq!(BlobResponse::from_bytes(&bytes).unwrap(), r);
        let req = BlobRequest::Chunk {
            id: ContentId::of(b"x"),
            index: u32::MAX,
        };
        assert_eq!(
            BlobRequest::from_bytes(&req.to_bytes().unwrap()).unwrap(),
            req
        );
    }
}
