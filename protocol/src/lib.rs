//! Formic's protocol: the wire types every peer agrees on, and nothing else.
//!
//! This crate is *sans-IO*: no sockets, files, clocks, threads or ambient
//! randomness. Time and randomness are handed in by the caller. That is what
//! lets the very same logic run inside a node and inside a deterministic
//! simulator of thousands of peers (see docs/ARCHITECTURE.md).
//!
//! - [`ContentId`]: blake3 content addresses for blobs and records.
//! - [`codec`]: the one canonical CBOR encoding, with size caps and typed,
//!   never-panicking decoding.
//! - [`Signed`]: ed25519-signed envelopes with per-type domain separation.
//! - [`messages`]: manifests, batches, claims, commits, reveals, announcements.

#![warn(missing_docs)]

pub mod assignment;
pub mod blob_transfer;
pub mod codec;
pub mod content_id;
pub mod messages;
pub mod project;
pub mod results;
pub mod signed;
pub mod sync;
pub mod validation;

pub use codec::{DecodeError, EncodeError, PROTOCOL_VERSION};
pub use content_id::{ContentId, ParseContentIdError};
pub use signed::{Signed, SignedPayload, SignerKey, VerifyError};
