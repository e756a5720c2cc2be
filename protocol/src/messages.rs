//! The records of the Formic protocol and the gossip message that carries
//! them. Field meanings are part of the protocol: changing one means a new
//! [`PROTOCOL_VERSION`](crate::PROTOCOL_VERSION).
//!
//! Flow (docs/ARCHITECTURE.md): an owner signs a [`ProjectManifest`] and one
//! or more [`Batch`]es and gossips an [`Announce`]; workers [`Claim`] replica
//! slots, compute, gossip a [`Commit`] (a seal hiding their result), and once
//! a quorum of commits exists, a [`Reveal`]. The signed records together are
//! the *evidence* anyone can validate.
//!
//! No floats appear on the wire (fractions are parts per million), so every
//! record has one canonical encoding.

use serde::{Deserialize, Serialize};

use crate::codec::{self, DecodeError, EncodeError};
use crate::content_id::ContentId;
use crate::signed::{
    BatchSignable, SignError, Signed, SignedPayload, SignerKey, VerifiedRoots, sign_batch,
};

/// Largest gossip message any peer sends or accepts. Set explicitly, and the
/// same on every peer (gossipsub's own default is 64 KiB too): gossip carries
/// ids and small signed records, never payloads.
pub const MAX_GOSSIP_BYTES: usize = 64 * 1024;

/// Largest input or output carried inline in a record instead of as a blob.
pub const MAX_INLINE_BYTES: usize = 1024;

/// Largest batch blob: the list of units of one batch.
pub const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;

/// A blob by content id and exact size (the size lets a fetcher refuse
/// oversized transfers before they start).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BlobRef {
    /// blake3 of the blob's bytes.
    pub id: ContentId,
    /// The blob's exact length in bytes.
    pub size: u64,
}

impl BlobRef {
    /// The reference to `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self {
            id: ContentId::of(bytes),
            size: bytes.len() as u64,
        }
    }
}

/// Bytes carried either inline (small) or as a blob (anything else).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Data {
    /// At most [`MAX_INLINE_BYTES`].
    Inline(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A blob fetched separately (over [`MAX_INLINE_BYTES`]).
    Blob(BlobRef),
}

impl Data {
    /// Inline when small enough, otherwise a reference to the blob of `bytes`
    /// (which the caller must then store and provide).
    pub fn for_bytes(bytes: &[u8]) -> Self {
        if bytes.len() <= MAX_INLINE_BYTES {
            Data::Inline(bytes.to_vec())
        } else {
            Data::Blob(BlobRef::of(bytes))
        }
    }

    /// The content id of the bytes this refers to.
    pub fn content_id(&self) -> ContentId {
        match self {
            Data::Inline(b) => ContentId::of(b),
            Data::Blob(r) => r.id,
        }
    }

    /// The length of the bytes this refers to.
    pub fn len(&self) -> u64 {
        match self {
            Data::Inline(b) => b.len() as u64,
            Data::Blob(r) => r.size,
        }
    }

    /// Whether the bytes this refers to are empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Resource limits for every unit of a project. The sandbox enforces them;
/// a unit that exceeds one ends in an error, never a comparable result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Fuel (wasmtime's deterministic instruction-cost measure) per unit.
    pub fuel_per_unit: u64,
    /// Linear-memory cap in bytes.
    pub memory_bytes: u64,
    /// Largest output a unit may write to stdout.
    pub max_output_bytes: u64,
    /// Wall-clock ceiling per unit in milliseconds: a safety net only, since
    /// hosts differ in speed; fuel is the real, deterministic bound.
    pub wall_clock_ms: u64,
}

/// How much redundancy and validation a project asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Matching results from distinct, independent workers needed to
    /// validate a unit.
    pub quorum: u16,
    /// Most replicas ever assigned for one unit, re-tries included.
    pub max_replicas: u16,
    /// How long a claim holds a replica slot, in milliseconds.
    pub lease_ms: u64,
    /// Probability, in parts per million, that a unit silently gets an extra
    /// audit replica that no worker can see before it commits.
    pub audit_rate_ppm: u32,
}

/// What an owner publishes about a project. Signed by the owner; the
/// ProjectId is the content id of the signed envelope, so it names the owner,
/// the app and every limit at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectManifest {
    /// Human-readable name (at most 128 bytes by convention; not unique).
    pub name: String,
    /// The app: a WASI preview 1 command module.
    pub app: BlobRef,
    /// The sandbox engine every unit runs on (the publishing node's
    /// `formic_work_units::ENGINE_VERSION`). Fuel and results are
    /// comparable only within one engine, so a reveal computed on any other
    /// is not evidence for this project.
    pub engine: String,
    /// Resource limits for every unit.
    pub limits: Limits,
    /// Redundancy and validation asked for.
    pub policy: Policy,
    /// When the owner created it, in ms since the Unix epoch (informational;
    /// handed in by the caller since this crate reads no clock).
    pub created_at_ms: u64,
}

impl SignedPayload for ProjectManifest {
    const DOMAIN: &'static str = "formic/v1/manifest";
    const MAX_PAYLOAD: usize = 16 * 1024;
}

/// The id of a project: the content id of its signed manifest.
pub type ProjectId = ContentId;

/// One unit of work: its index within the project and its input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitSpec {
    /// The unit's index within the project (its [`UnitRef::index`]).
    pub index: u64,
    /// What the app reads on stdin for this unit.
    pub input: Data,
}

/// A list of units, owner-signed and stored as a blob; only its id and unit
/// count travel by gossip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// The project the units belong to.
    pub project: ProjectId,
    /// Sequence number of this batch within the project, from 0.
    pub seq: u32,
    /// Per-batch randomness for assignment (rendezvous hashing), chosen by
    /// the owner when signing; workers cannot choose it.
    #[serde(with = "serde_bytes")]
    pub seed: [u8; 32],
    /// The batch's units.
    pub units: Vec<UnitSpec>,
}

impl SignedPayload for Batch {
    const DOMAIN: &'static str = "formic/v1/batch";
    const MAX_PAYLOAD: usize = MAX_BATCH_BYTES;
}

/// Names one unit of one project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct UnitRef {
    /// The project.
    pub project: ProjectId,
    /// The unit's index within the project.
    pub index: u64,
}

impl UnitRef {
    /// A stable id for the unit, used in seals and as the sandbox's random
    /// seed: blake3("formic/v1/unit" ‖ project ‖ index as big-endian u64).
    pub fn id(&self) -> ContentId {
        let mut h = blake3::Hasher::new();
        h.update(b"formic/v1/unit");
        h.update(self.project.as_bytes());
        h.update(&self.index.to_be_bytes());
        h.finalize().into()
    }
}

/// The owner tells the network a batch exists. Small by design.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announce {
    /// The project the batch belongs to.
    pub project: ProjectId,
    /// The blob holding the signed manifest (its id equals `project`).
    pub manifest: BlobRef,
    /// The blob holding the signed batch.
    pub batch: BlobRef,
    /// The batch's [`Batch::seq`].
    pub batch_seq: u32,
    /// How many units the batch holds.
    pub units: u64,
}

impl SignedPayload for Announce {
    const DOMAIN: &'static str = "formic/v1/announce";
    const MAX_PAYLOAD: usize = 1024;
}

/// A worker takes a replica slot of a unit until `lease_until_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The unit claimed.
    pub unit: UnitRef,
    /// The replica slot taken: how many workers the claimer already knew on
    /// the unit when it claimed.
    pub slot: u16,
    /// When the lease ends, in ms since the Unix epoch (the claimer's clock
    /// plus [`Policy::lease_ms`]).
    pub lease_until_ms: u64,
}

impl SignedPayload for Claim {
    const DOMAIN: &'static str = "formic/v1/claim";
    const MAX_PAYLOAD: usize = 1024;
}

/// A worker binds itself to a result without showing it: the seal is
/// blake3(result_hash ‖ salt ‖ worker key ‖ unit id) with a secret 32-byte
/// salt revealed only with the result, so it differs per worker, and a lazy
/// worker can neither copy it nor recover the result by trying every
/// possible output against it (as it could for a small output space without
/// the salt).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    /// The unit computed.
    pub unit: UnitRef,
    /// The seal ([`seal`]) of the result the worker computed.
    pub seal: ContentId,
}

impl SignedPayload for Commit {
    const DOMAIN: &'static str = "formic/v1/commit";
    const MAX_PAYLOAD: usize = 1024;
}

/// The secret that makes a seal unguessable: 32 bytes the worker draws (or
/// derives from a secret of its own) per result, and reveals with it.
pub type Salt = [u8; 32];

/// The seal a worker commits to for `result_hash` on `unit`, salted with
/// `salt`.
pub fn seal(result_hash: &ContentId, salt: &Salt, worker: &SignerKey, unit: &UnitRef) -> ContentId {
    let mut h = blake3::Hasher::new();
    h.update(b"formic/v2/seal");
    h.update(result_hash.as_bytes());
    h.update(salt);
    h.update(worker.as_bytes());
    h.update(unit.id().as_bytes());
    h.finalize().into()
}

/// A worker opens its commit: the result it computed and where to get it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reveal {
    /// The unit computed.
    pub unit: UnitRef,
    /// blake3 of the output bytes.
    pub result_hash: ContentId,
    /// The output itself, inline or as a blob the worker provides.
    pub output: Data,
    /// Fuel the unit's `_start` consumed: deterministic, so it must match
    /// between honest replicas on the same engine.
    pub fuel_used: u64,
    /// Sandbox engine and version (fuel is comparable only within one).
    pub engine: String,
    /// The salt of the commit's seal ([`seal`]), secret until now.
    #[serde(with = "serde_bytes")]
    pub salt: Salt,
}

impl SignedPayload for Reveal {
    const DOMAIN: &'static str = "formic/v1/reveal";
    const MAX_PAYLOAD: usize = 4 * 1024;
}

/// The owner discloses, after a batch settles, which units were spot checks
/// and their known answers, so anyone can check workers against them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpotCheckKey {
    /// The project.
    pub project: ProjectId,
    /// The settled batch the key is for ([`Batch::seq`]).
    pub batch_seq: u32,
    /// (unit index, expected result hash).
    pub answers: Vec<(u64, ContentId)>,
}

impl SignedPayload for SpotCheckKey {
    const DOMAIN: &'static str = "formic/v1/spot-check-key";
    const MAX_PAYLOAD: usize = MAX_GOSSIP_BYTES - 512;
}

/// Most records one [`GossipBundle`] may carry. Far above what fits in
/// [`MAX_GOSSIP_BYTES`] of real records; it bounds the work an empty-record
/// flood could cause.
pub const MAX_BUNDLE_RECORDS: usize = 1024;

/// Several records sent as one gossip message.
///
/// A busy worker produces hundreds of small records a second (claims,
/// commits, reveals). Sent one per message, each paid gossipsub's per-message
/// costs at every hop: a message id, a duplicate-cache entry, a send-queue
/// slot and a timer per peer, a write and a wake-up. Those, not the records,
/// were most of the protocol ceiling's CPU. A node gathers what it publishes
/// on a topic within a few milliseconds into one bundle.
///
/// Each entry is a record's own wire bytes ([`Gossip::to_bytes`]), exactly
/// what a one-record message carries, so a receiver stores and serves the
/// same bytes whichever way a record arrived, and every record keeps its own
/// signature: a bundle adds no trust of its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipBundle {
    /// Each record's own wire bytes, in the order they were gathered.
    pub bundle: Vec<serde_bytes::ByteBuf>,
}

/// How every bundle's encoding begins: the versioned envelope
/// `[PROTOCOL_VERSION, {"bundle": ...}]`. No record type is named
/// "bundle", so a receiver tells the two kinds of message apart by these
/// bytes without decoding twice.
const BUNDLE_PREFIX: [u8; 10] = [
    0x82, // array of two: [version, body]
    crate::codec::PROTOCOL_VERSION as u8,
    0xa1, // map of one entry
    0x66, // text of six bytes
    b'b',
    b'u',
    b'n',
    b'd',
    b'l',
    b'e',
];

impl GossipBundle {
    /// Canonical wire bytes, refused locally if over [`MAX_GOSSIP_BYTES`].
    pub fn to_bytes(&self) -> Result<Vec<u8>, EncodeError> {
        codec::encode_versioned(self, MAX_GOSSIP_BYTES)
    }

    /// Whether a gossip message is a bundle rather than one record.
    pub fn is_bundle(bytes: &[u8]) -> bool {
        bytes.starts_with(&BUNDLE_PREFIX)
    }

    /// Decodes a bundle from an untrusted peer: at least one and at most
    /// [`MAX_BUNDLE_RECORDS`] entries. The records inside are decoded and
    /// verified one by one by the caller ([`Gossip::from_bytes`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let bundle: Self = codec::decode_versioned(bytes, MAX_GOSSIP_BYTES)?;
        if bundle.bundle.is_empty() || bundle.bundle.len() > MAX_BUNDLE_RECORDS {
            return Err(DecodeError::BadField(format!(
                "a bundle holds 1 to {MAX_BUNDLE_RECORDS} records, not {}",
                bundle.bundle.len()
            )));
        }
        Ok(bundle)
    }

    /// Bytes a bundle adds to its records' own: the prefix and, per record,
    /// a byte-string header (at most 5 bytes below 4 GiB) plus the array's.
    pub const fn overhead(records: usize) -> usize {
        BUNDLE_PREFIX.len() + 5 + 5 * records
    }
}

/// Everything that travels over gossipsub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Gossip {
    /// An owner's announcement of a batch.
    Announce(Signed<Announce>),
    /// A worker's claim on a replica slot.
    Claim(Signed<Claim>),
    /// A worker's sealed commitment to a result.
    Commit(Signed<Commit>),
    /// A worker's opened result.
    Reveal(Signed<Reveal>),
    /// An owner's disclosure of a settled batch's spot checks.
    SpotCheckKey(Signed<SpotCheckKey>),
}

impl Gossip {
    /// Canonical wire bytes, refused locally if over [`MAX_GOSSIP_BYTES`].
    pub fn to_bytes(&self) -> Result<Vec<u8>, EncodeError> {
        codec::encode_versioned(self, MAX_GOSSIP_BYTES)
    }

    /// Decodes a gossip message from an untrusted peer. Signatures are
    /// checked separately (see [`Gossip::verify`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        codec::decode_versioned(bytes, MAX_GOSSIP_BYTES)
    }

    /// Verifies the signature of the carried record and checks its payload
    /// decodes; returns the signer.
    pub fn verify(&self) -> Result<SignerKey, crate::signed::VerifyError> {
        self.verify_in(&mut VerifiedRoots::default())
            .map(|(signer, _)| signer)
    }

    /// [`Gossip::verify`] with a cache of checked batch roots; returns the
    /// signer and the project the record belongs to.
    pub fn verify_in(
        &self,
        roots: &mut VerifiedRoots,
    ) -> Result<(SignerKey, ProjectId), crate::signed::VerifyError> {
        Ok(match self {
            Gossip::Announce(s) => (s.signer(), s.verify_in(roots)?.project),
            Gossip::Claim(s) => (s.signer(), s.verify_in(roots)?.unit.project),
            Gossip::Commit(s) => (s.signer(), s.verify_in(roots)?.unit.project),
            Gossip::Reveal(s) => (s.signer(), s.verify_in(roots)?.unit.project),
            Gossip::SpotCheckKey(s) => (s.signer(), s.verify_in(roots)?.project),
        })
    }

    /// What the record says and who says it, whatever its envelope: the
    /// same record signed alone and signed with a batch has one id (the
    /// content id of the bytes differs). Not verified.
    pub fn record_id(&self) -> crate::ContentId {
        let s = self.signable();
        let mut h = blake3::Hasher::new();
        h.update(b"formic/v1/record-id");
        h.update(s.signer_key().as_bytes());
        h.update(&s.batch_leaf());
        h.finalize().into()
    }

    /// Who signed the carried record (not verified).
    pub fn signer(&self) -> SignerKey {
        self.signable().signer_key()
    }

    /// For a claim, the worker and the unit it claims; None otherwise.
    pub fn claimed(&self) -> Option<(SignerKey, UnitRef)> {
        match self {
            Gossip::Claim(c) => c.verify().ok().map(|v| (c.signer(), v.unit)),
            _ => None,
        }
    }

    /// For a commit, the worker and unit whose claim it makes redundant.
    /// Receivers count a worker's commit in place of its claim (a slot
    /// committed to is taken, whatever the lease), so a claim that has not
    /// left its sender when the same worker's commit for the unit is ready
    /// tells nobody anything: short units need not gossip their claims.
    pub fn supersedes_claim(&self) -> Option<(SignerKey, UnitRef)> {
        match self {
            Gossip::Commit(c) => c.verify().ok().map(|v| (c.signer(), v.unit)),
            _ => None,
        }
    }

    fn signable(&self) -> &dyn BatchSignable {
        match self {
            Gossip::Announce(s) => s,
            Gossip::Claim(s) => s,
            Gossip::Commit(s) => s,
            Gossip::Reveal(s) => s,
            Gossip::SpotCheckKey(s) => s,
        }
    }

    fn signable_mut(&mut self) -> &mut dyn BatchSignable {
        match self {
            Gossip::Announce(s) => s,
            Gossip::Claim(s) => s,
            Gossip::Commit(s) => s,
            Gossip::Reveal(s) => s,
            Gossip::SpotCheckKey(s) => s,
        }
    }

    /// Signs `records`, all `keypair`'s own, again as one batch (see
    /// [`crate::signed`]): one signature for all instead of one each, so
    /// every receiver checks one signature per batch. The payloads do not
    /// change, only the envelopes.
    pub fn sign_batch(
        keypair: &libp2p_identity::Keypair,
        records: &mut [Gossip],
    ) -> Result<(), SignError> {
        let mut signable: Vec<&mut dyn BatchSignable> =
            records.iter_mut().map(Gossip::signable_mut).collect();
        sign_batch(keypair, &mut signable)
    }
}
