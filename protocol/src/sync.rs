//! Wire types of pull-sync (`/formic/sync/1.0.0`): how a peer that joins or
//! restarts gets a project's records from another peer.
//!
//! Gossip is for freshness, sync for completeness: a peer asks a neighbour
//! for the records it holds for a project, page by page. The cursor is
//! opaque to the asker and only meaningful to the peer that issued it (it is
//! a position in that peer's own record log). Every record in a page is a
//! gossip message's bytes, checked by the asker exactly like gossip
//! (decode, signature, project), so a syncing peer trusts nothing it is
//! handed.

use serde::{Deserialize, Serialize};

use crate::codec::{self, DecodeError, EncodeError};
use crate::messages::{MAX_GOSSIP_BYTES, ProjectId};

/// The libp2p protocol name of pull-sync.
pub const SYNC_PROTOCOL: &str = "/formic/sync/1.0.0";

/// Largest encoded request.
pub const MAX_SYNC_REQUEST_BYTES: usize = 256;

/// Largest encoded page: a server stops adding records before this.
pub const MAX_SYNC_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// Most records a page carries.
pub const MAX_RECORDS_PER_PAGE: u32 = 1024;

/// Asks for the records of `project` from position `cursor` on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRequest {
    /// The project whose records are wanted.
    pub project: ProjectId,
    /// 0 for the first page, then the `next` of the previous page.
    pub cursor: u64,
    /// Most records wanted (the server also caps it).
    pub limit: u32,
}

/// One record: the exact bytes of a gossip message (at most
/// [`MAX_GOSSIP_BYTES`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordBytes(#[serde(with = "serde_bytes")] pub Vec<u8>);

/// A page of records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncResponse {
    /// Records from the request's cursor on, in the server's order.
    Page {
        /// The records, each as it travels on gossip.
        records: Vec<RecordBytes>,
        /// Where the next page starts, or `None` when this was the last.
        next: Option<u64>,
    },
    /// The request was refused (malformed, over a limit, server busy).
    Refused(String),
}

impl SyncRequest {
    /// Encodes the request (versioned CBOR, at most
    /// [`MAX_SYNC_REQUEST_BYTES`]).
    pub fn to_bytes(&self) -> Result<Vec<u8>, EncodeError> {
        codec::encode_versioned(self, MAX_SYNC_REQUEST_BYTES)
    }

    /// Decodes a request, refusing one over [`MAX_SYNC_REQUEST_BYTES`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        codec::decode_versioned(bytes, MAX_SYNC_REQUEST_BYTES)
    }
}

impl SyncResponse {
    /// Encodes the response (versioned CBOR, at most
    /// [`MAX_SYNC_RESPONSE_BYTES`]).
    pub fn to_bytes(&self) -> Result<Vec<u8>, EncodeError> {
        codec::encode_versioned(self, MAX_SYNC_RESPONSE_BYTES)
    }

    /// Decodes a response, refusing one over [`MAX_SYNC_RESPONSE_BYTES`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        codec::decode_versioned(bytes, MAX_SYNC_RESPONSE_BYTES)
    }

    /// Whether a record is small enough to travel in a page at all.
    pub fn record_fits(record: &[u8]) -> bool {
        record.len() <= MAX_GOSSIP_BYTES
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ContentId;

    #[test]
    fn round_trips() {
        let req = SyncRequest {
            project: ContentId::of(b"p"),
            cursor: 3,
            limit: 10,
        };
        assert_eq!(
            SyncRequest::from_bytes(&req.to_bytes().unwrap()).unwrap(),
            req
        );
        let resp = SyncResponse::Page {
            records: vec![RecordBytes(vec![1, 2, 3])],
            next: Some(4),
        };
        assert_eq!(
            SyncResponse::from_bytes(&resp.to_bytes().unwrap()).unwrap(),
            resp
        );
        assert!(SyncRequest::from_bytes(&[0xff, 0x00]).is_err());
    }
}
