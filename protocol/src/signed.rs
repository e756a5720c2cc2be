//! Signed envelopes: a payload's canonical bytes, who signed them, and the
//! ed25519 signature.
//!
//! The signature covers a per-type domain tag followed by the payload bytes,
//! so a signature made for one kind of record (say a Commit) can never be
//! replayed as another (say a Reveal) even if their encodings collided. The
//! envelope keeps the exact signed bytes rather than re-encoding on verify:
//! what is checked is exactly what was signed.
//!
//! **Batch signatures.** Checking ed25519 signatures was the largest cost
//! of the protocol's ceiling: every record is checked by every peer that
//! receives it. A node that sends several records at once (a gossip bundle)
//! signs them as one batch instead: the leaves of a Merkle tree are the
//! records' domain-tagged payloads, the one signature covers the root, and
//! each record carries its own path to the root ([`BatchProof`]). Each
//! record still stands alone as evidence, checkable by anyone with nothing
//! but its own bytes, while a receiver that meets the same root again (the
//! rest of the bundle, or a sync page) skips the curve arithmetic
//! ([`VerifiedRoots`]). Leaves and inner nodes are hashed with different
//! prefixes, so no inner node can pass for a record.

use std::collections::HashSet;
use std::fmt;
use std::marker::PhantomData;
use std::sync::OnceLock;

use libp2p_identity::{Keypair, PeerId, PublicKey, ed25519};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::codec::{self, DecodeError, EncodeError};
use crate::content_id::ContentId;

/// A record type that travels signed.
pub trait SignedPayload: Serialize + DeserializeOwned {
    /// Domain-separation tag mixed into the signature. Unique per type.
    const DOMAIN: &'static str;
    /// Largest encoded payload accepted for this type.
    const MAX_PAYLOAD: usize;
}

/// An ed25519 public key: the identity of an owner or a worker.
///
/// Workers are the same keys as their libp2p PeerIds, so a commit's signer
/// is the peer that gossiped it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SignerKey(#[serde(with = "serde_bytes")] [u8; 32]);

impl SignerKey {
    /// The raw 32-byte ed25519 public key.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The key whose raw ed25519 public key is `bytes` (not checked to be a
    /// valid curve point: see [`SignerKey::public_key`]).
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The key of `keypair`, which must be ed25519.
    pub fn of(keypair: &Keypair) -> Result<Self, SignError> {
        let ed = keypair
            .public()
            .try_into_ed25519()
            .map_err(|_| SignError::NotEd25519)?;
        Ok(Self(ed.to_bytes()))
    }

    /// The ed25519 key, if these 32 bytes are a valid curve point.
    pub fn public_key(&self) -> Result<PublicKey, VerifyError> {
        let ed = ed25519::PublicKey::try_from_bytes(&self.0).map_err(|_| VerifyError::BadKey)?;
        Ok(PublicKey::from(ed))
    }

    /// The libp2p PeerId of this key (as printed by `formic node`).
    pub fn peer_id(&self) -> Option<PeerId> {
        self.public_key().ok().map(|k| k.to_peer_id())
    }
}

impl fmt::Display for SignerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.peer_id() {
            Some(p) => write!(f, "{p}"),
            None => write!(f, "invalid-key:{}", data_encoding::HEXLOWER.encode(&self.0)),
        }
    }
}

impl fmt::Debug for SignerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SignerKey({self})")
    }
}

/// Why a value could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The keypair is not ed25519.
    #[error("signing keys must be ed25519")]
    NotEd25519,
    /// The payload does not encode (or is over its size cap).
    #[error("could not encode the payload: {0}")]
    Encode(#[from] EncodeError),
    /// The keypair refused to sign.
    #[error("signing failed")]
    Signing(#[source] libp2p_identity::SigningError),
    /// More than [`MAX_BATCH_RECORDS`] records given to sign as one batch.
    #[error("a batch signs at most {MAX_BATCH_RECORDS} records, not {0}")]
    BatchTooLarge(usize),
    /// A record given to sign as a batch names another signer.
    #[error("a batch may only hold records signed by its own key")]
    NotOwnRecord,
}

/// Why a signed envelope was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The signer's 32 bytes are not a valid ed25519 public key.
    #[error("the signer's public key is not a valid ed25519 key")]
    BadKey,
    /// The signature (or batch signature and proof) does not verify.
    #[error(
        "the signature does not match the payload and signer {signer}: the record was altered or forged"
    )]
    BadSignature {
        /// The claimed signer, as printed by [`SignerKey`]'s `Display`.
        signer: String,
    },
    /// The signature verifies but the payload does not decode.
    #[error("the signed payload does not decode: {0}")]
    Payload(DecodeError),
    /// The batch proof does not fit its count and index (what is wrong).
    #[error("the record's batch proof is malformed: {0}")]
    BadProof(&'static str),
}

/// Most records signed as one batch (a gossip bundle holds at most as many).
pub const MAX_BATCH_RECORDS: u32 = 1024;

/// Most bytes a batch proof adds to a record's encoding: the field names,
/// two integers and a path of at most log2(MAX_BATCH_RECORDS) = 10 hashes.
pub const MAX_BATCH_PROOF_BYTES: usize = 48 + 10 * 34;

/// Where a record signed as one of a batch sits in the batch's Merkle tree.
///
/// The tree over `count` leaves pairs nodes left to right level by level; a
/// node left without a partner moves up unchanged. `path` holds the partner
/// of each node from the leaf up, skipping the levels where it moved up
/// alone, so its length follows from `index` and `count`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchProof {
    /// How many records the batch signed.
    pub count: u32,
    /// This record's leaf, from 0.
    pub index: u32,
    /// The partner hashes from the leaf up (see above).
    pub path: Vec<ContentId>,
}

fn leaf_hash(domain: &str, payload: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(&[0]);
    h.update(domain.as_bytes());
    h.update(&[0]);
    h.update(payload);
    *h.finalize().as_bytes()
}

fn node_hash(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(&[1]);
    h.update(left);
    h.update(right);
    *h.finalize().as_bytes()
}

/// What a batch signature signs: the tree's root and size.
fn batch_message(root: &[u8; 32], count: u32) -> Vec<u8> {
    let mut msg = Vec::with_capacity(BATCH_DOMAIN.len() + 1 + 32 + 4);
    msg.extend_from_slice(BATCH_DOMAIN.as_bytes());
    msg.push(0);
    msg.extend_from_slice(root);
    msg.extend_from_slice(&count.to_be_bytes());
    msg
}

const BATCH_DOMAIN: &str = "formic/v1/batch-root";

impl BatchProof {
    /// The root reached from `leaf` along this path.
    fn root(&self, leaf: [u8; 32]) -> Result<[u8; 32], VerifyError> {
        if self.count == 0 || self.count > MAX_BATCH_RECORDS {
            return Err(VerifyError::BadProof("batch size out of range"));
        }
        if self.index >= self.count {
            return Err(VerifyError::BadProof("index past the end of the batch"));
        }
        let (mut h, mut i, mut n) = (leaf, self.index, self.count);
        let mut path = self.path.iter();
        while n > 1 {
            if i % 2 == 1 {
                let left = path.next().ok_or(VerifyError::BadProof("path too short"))?;
                h = node_hash(left.as_bytes(), &h);
            } else if i + 1 < n {
                let right = path.next().ok_or(VerifyError::BadProof("path too short"))?;
                h = node_hash(&h, right.as_bytes());
            }
            i /= 2;
            n = n.div_ceil(2);
        }
        if path.next().is_some() {
            return Err(VerifyError::BadProof("path too long"));
        }
        Ok(h)
    }

    /// The root over `leaves` and every leaf's proof (`leaves` is not empty
    /// and at most [`MAX_BATCH_RECORDS`] long).
    fn build(leaves: &[[u8; 32]]) -> ([u8; 32], Vec<BatchProof>) {
        let count = leaves.len() as u32;
        let mut proofs: Vec<BatchProof> = (0..count)
            .map(|index| BatchProof {
                count,
                index,
                path: Vec::new(),
            })
            .collect();
        let mut level = leaves.to_vec();
        // Which node of the current level each leaf's path runs through.
        let mut at: Vec<usize> = (0..leaves.len()).collect();
        while level.len() > 1 {
            for (proof, pos) in proofs.iter_mut().zip(&mut at) {
                let partner = *pos ^ 1;
                if partner < level.len() {
                    proof.path.push(ContentId::from_bytes(level[partner]));
                }
                *pos /= 2;
            }
            level = level
                .chunks(2)
                .filter_map(|pair| match *pair {
                    [l, r] => Some(node_hash(&l, &r)),
                    [alone] => Some(alone),
                    _ => None,
                })
                .collect();
        }
        (level[0], proofs)
    }
}

/// Batch roots whose signatures this node has already checked, so the
/// other records of a batch cost a few hashes instead of a signature check.
/// Bounded: when full it starts over (a miss only costs a check).
#[derive(Debug, Default)]
pub struct VerifiedRoots {
    seen: HashSet<[u8; 32]>,
}

impl VerifiedRoots {
    const MAX: usize = 16 * 1024;

    /// One key per (signer, root, size, signature): a hit means exactly
    /// this signature over exactly this root was found valid before.
    fn key(signer: &SignerKey, root: &[u8; 32], count: u32, signature: &[u8]) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        h.update(signer.as_bytes());
        h.update(root);
        h.update(&count.to_be_bytes());
        h.update(signature);
        *h.finalize().as_bytes()
    }

    fn remember(&mut self, key: [u8; 32]) {
        if self.seen.len() >= Self::MAX {
            self.seen.clear();
        }
        self.seen.insert(key);
    }
}

/// A signed record whose envelope can be re-signed as part of a batch; the
/// gossip enum dispatches to it (see `Gossip::sign_batch`).
pub trait BatchSignable {
    /// The record's leaf in a batch tree.
    fn batch_leaf(&self) -> [u8; 32];
    /// Replaces the signature by a batch signature and this record's proof.
    fn set_batch_signature(&mut self, signature: Vec<u8>, proof: BatchProof);
    /// The key the record claims as its signer.
    fn signer_key(&self) -> SignerKey;
}

/// Signs `records` as one batch with `keypair`: one signature over the
/// Merkle root of their leaves, one proof per record. Every record must be
/// `keypair`'s own (the caller vouches for each payload); an empty slice is
/// left alone.
pub fn sign_batch(
    keypair: &Keypair,
    records: &mut [&mut dyn BatchSignable],
) -> Result<(), SignError> {
    if records.is_empty() {
        return Ok(());
    }
    if records.len() > MAX_BATCH_RECORDS as usize {
        return Err(SignError::BatchTooLarge(records.len()));
    }
    let me = SignerKey::of(keypair)?;
    if records.iter().any(|r| r.signer_key() != me) {
        return Err(SignError::NotOwnRecord);
    }
    let leaves: Vec<[u8; 32]> = records.iter().map(|r| r.batch_leaf()).collect();
    let (root, proofs) = BatchProof::build(&leaves);
    let signature = keypair
        .sign(&batch_message(&root, leaves.len() as u32))
        .map_err(SignError::Signing)?;
    for (record, proof) in records.iter_mut().zip(proofs) {
        record.set_batch_signature(signature.clone(), proof);
    }
    Ok(())
}

/// Signs two records made together by one signer (a commit and its
/// reveal) as a batch of two: one signature instead of two, the signer's
/// largest protocol cost after the receivers' checks. Each record still
/// stands alone as evidence, with a one-hash proof. The proof shows each
/// record's leaf hash to whoever holds the other. A copier holding the
/// commit could already test guessed outputs against its seal; the
/// reveal's leaf adds only a check of the fuel figure once the output is
/// guessed, and validation never compares fuel.
pub fn sign_pair<A: SignedPayload, B: SignedPayload>(
    keypair: &Keypair,
    a: &A,
    b: &B,
) -> Result<(Signed<A>, Signed<B>), SignError> {
    let mut a = Signed::unsigned(keypair, a)?;
    let mut b = Signed::unsigned(keypair, b)?;
    sign_batch(keypair, &mut [&mut a, &mut b])?;
    // Encoded and signed here, with the signer's own key: valid and
    // canonical by construction.
    let _ = a.checked.set(());
    let _ = b.checked.set(());
    Ok((a, b))
}

/// Records signed here are marked checked without a decode, on the ground
/// that an encoding made here is canonical. That holds only for payload
/// types whose encoding round-trips (no hash maps, no floats); debug builds
/// (every test) check it for each record signed.
fn debug_assert_canonical<T: SignedPayload>(payload: &[u8]) {
    debug_assert!(
        codec::decode_versioned::<T>(payload, T::MAX_PAYLOAD).is_ok(),
        "{} does not decode canonically from its own encoding",
        T::DOMAIN
    );
}

/// A value of type `T` signed by `signer`.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub struct Signed<T> {
    /// `codec::encode_versioned(value)`: exactly the bytes signed.
    #[serde(with = "serde_bytes")]
    payload: Vec<u8>,
    signer: SignerKey,
    /// 64-byte ed25519 signature over `T::DOMAIN ‖ 0x00 ‖ payload`, or,
    /// with `batch`, over the batch's root (see the module docs).
    #[serde(with = "serde_bytes")]
    signature: Vec<u8>,
    /// Set when the record was signed as one of a batch. Left out of the
    /// encoding when absent, so a record signed alone encodes as before.
    /// Boxed: most records are signed alone, and records travel in enums
    /// and channels by value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    batch: Option<Box<BatchProof>>,
    /// Set once the signature has been checked on this very value (its
    /// fields never change) and its payload has decoded in canonical form,
    /// so a record verified when it arrives is not verified again by each
    /// layer it passes through: ed25519 was most of the protocol's CPU, and
    /// proving a payload canonical (encoding it again) half of each decode.
    /// Never serialized: a decoded or reassembled envelope starts unchecked.
    #[serde(skip)]
    checked: OnceLock<()>,
    #[serde(skip)]
    _type: PhantomData<fn() -> T>,
}

// Manual impls: derives would demand `T: Clone` etc., which the envelope
// does not need since it holds bytes, not a `T`.
impl<T> Clone for Signed<T> {
    fn clone(&self) -> Self {
        Self {
            payload: self.payload.clone(),
            signer: self.signer,
            signature: self.signature.clone(),
            batch: self.batch.clone(),
            checked: self.checked.clone(),
            _type: PhantomData,
        }
    }
}

impl<T> PartialEq for Signed<T> {
    fn eq(&self, other: &Self) -> bool {
        self.payload == other.payload
            && self.signer == other.signer
            && self.signature == other.signature
            && self.batch == other.batch
    }
}

impl<T> Eq for Signed<T> {}

impl<T> fmt::Debug for Signed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signed")
            .field("type", &std::any::type_name::<T>())
            .field("signer", &self.signer)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

fn signed_message(domain: &str, payload: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(domain.len() + 1 + payload.len());
    msg.extend_from_slice(domain.as_bytes());
    msg.push(0);
    msg.extend_from_slice(payload);
    msg
}

impl<T: SignedPayload> Signed<T> {
    /// Signs `value` with `keypair` (ed25519).
    pub fn sign(keypair: &Keypair, value: &T) -> Result<Self, SignError> {
        let mut signed = Self::unsigned(keypair, value)?;
        signed.signature = keypair
            .sign(&signed_message(T::DOMAIN, &signed.payload))
            .map_err(SignError::Signing)?;
        // Signed here, with the signer's own key, over a payload just
        // encoded here: valid and canonical by construction.
        let _ = signed.checked.set(());
        Ok(signed)
    }

    /// `value`'s envelope with no signature yet, for [`Signed::sign`] or
    /// [`sign_batch`] to sign.
    fn unsigned(keypair: &Keypair, value: &T) -> Result<Self, SignError> {
        let payload = codec::encode_versioned(value, T::MAX_PAYLOAD)?;
        debug_assert_canonical::<T>(&payload);
        Ok(Self {
            payload,
            signer: SignerKey::of(keypair)?,
            signature: Vec::new(),
            batch: None,
            checked: OnceLock::new(),
            _type: PhantomData,
        })
    }

    /// Checks the signature, then decodes the payload. Unauthenticated bytes
    /// are never parsed beyond the envelope.
    pub fn verify(&self) -> Result<T, VerifyError> {
        self.verify_in(&mut VerifiedRoots::default())
    }

    /// [`Signed::verify`], skipping the signature check of a batch whose
    /// root `roots` has seen checked, and remembering it when checked here.
    pub fn verify_in(&self, roots: &mut VerifiedRoots) -> Result<T, VerifyError> {
        if self.checked.get().is_some() {
            return codec::decode_versioned_canonical(&self.payload, T::MAX_PAYLOAD)
                .map_err(VerifyError::Payload);
        }
        let forged = || VerifyError::BadSignature {
            signer: self.signer.to_string(),
        };
        match &self.batch {
            None => {
                let key = self.signer.public_key()?;
                if !key.verify(&signed_message(T::DOMAIN, &self.payload), &self.signature) {
                    return Err(forged());
                }
            }
            Some(proof) => {
                let root = proof.root(leaf_hash(T::DOMAIN, &self.payload))?;
                let seen = VerifiedRoots::key(&self.signer, &root, proof.count, &self.signature);
                if !roots.seen.contains(&seen) {
                    let key = self.signer.public_key()?;
                    if !key.verify(&batch_message(&root, proof.count), &self.signature) {
                        return Err(forged());
                    }
                    roots.remember(seen);
                }
            }
        }
        let value =
            codec::decode_versioned(&self.payload, T::MAX_PAYLOAD).map_err(VerifyError::Payload)?;
        let _ = self.checked.set(());
        Ok(value)
    }

    /// Whether this record was signed as one of a batch.
    pub fn is_batch_signed(&self) -> bool {
        self.batch.is_some()
    }

    /// Who signed it (not yet verified: call [`Signed::verify`]).
    pub fn signer(&self) -> SignerKey {
        self.signer
    }

    /// The exact signed payload bytes.
    pub fn payload_bytes(&self) -> &[u8] {
        &self.payload
    }

    /// The content id of the whole envelope's canonical encoding. For a
    /// signed manifest this is the ProjectId.
    pub fn id(&self) -> ContentId {
        // Encoding a struct of three byte strings cannot fail, and with no
        // size cap nothing else can make it fail either.
        ContentId::of(&codec::encode_versioned(self, usize::MAX).unwrap_or_default())
    }

    /// Canonical bytes of the envelope, as stored and sent.
    pub fn to_bytes(&self) -> Result<Vec<u8>, EncodeError> {
        codec::encode_versioned(self, Self::MAX_ENVELOPE)
    }

    /// Parses an envelope (not verified: call [`Signed::verify`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        codec::decode_versioned(bytes, Self::MAX_ENVELOPE)
    }

    /// The payload's cap plus the signer, the signature and a batch proof.
    const MAX_ENVELOPE: usize = T::MAX_PAYLOAD + 256 + MAX_BATCH_PROOF_BYTES;

    /// Test and fault-injection hook: the batch proof, to alter on purpose.
    #[doc(hidden)]
    pub fn batch_proof_mut(&mut self) -> Option<&mut BatchProof> {
        self.checked = OnceLock::new();
        self.batch.as_deref_mut()
    }

    /// Test and fault-injection hook: the parts, to alter one on purpose.
    #[doc(hidden)]
    pub fn into_parts(self) -> (Vec<u8>, SignerKey, Vec<u8>) {
        (self.payload, self.signer, self.signature)
    }

    /// Test and fault-injection hook: reassemble possibly altered parts.
    #[doc(hidden)]
    pub fn from_parts(payload: Vec<u8>, signer: SignerKey, signature: Vec<u8>) -> Self {
        Self {
            payload,
            signer,
            signature,
            batch: None,
            checked: OnceLock::new(),
            _type: PhantomData,
        }
    }
}

impl<T: SignedPayload> BatchSignable for Signed<T> {
    fn batch_leaf(&self) -> [u8; 32] {
        leaf_hash(T::DOMAIN, &self.payload)
    }

    fn set_batch_signature(&mut self, signature: Vec<u8>, proof: BatchProof) {
        self.signature = signature;
        self.batch = Some(Box::new(proof));
        // The new signature is valid by construction (signed here, by the
        // record's own signer), and the payload is unchanged: whether it
        // was proven canonical stays as it was.
    }

    fn signer_key(&self) -> SignerKey {
        self.signer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_leaf_of_every_tree_size_reaches_the_root() {
        for n in 1..=70u32 {
            let leaves: Vec<[u8; 32]> = (0..n).map(|i| leaf_hash("t", &i.to_be_bytes())).collect();
            let (root, proofs) = BatchProof::build(&leaves);
            for (leaf, proof) in leaves.iter().zip(&proofs) {
                assert_eq!(proof.count, n);
                assert!(proof.path.len() <= 7, "n {n}: path of {}", proof.path.len());
                assert_eq!(proof.root(*leaf), Ok(root), "n {n}, leaf {}", proof.index);
                // Another leaf's proof does not lead this leaf to the root.
                if n > 1 {
                    let other = &proofs[((proof.index + 1) % n) as usize];
                    assert_ne!(other.root(*leaf), Ok(root));
                }
            }
        }
    }

    #[test]
    fn malformed_proofs_are_refused_by_name() {
        let leaf = leaf_hash("t", b"x");
        let bad = |count, index, path: usize| BatchProof {
            count,
            index,
            path: vec![ContentId::of(b"s"); path],
        };
        assert!(matches!(
            bad(0, 0, 0).root(leaf),
            Err(VerifyError::BadProof(_))
        ));
        assert!(matches!(
            bad(MAX_BATCH_RECORDS + 1, 0, 11).root(leaf),
            Err(VerifyError::BadProof(_))
        ));
        assert!(matches!(
            bad(4, 4, 2).root(leaf),
            Err(VerifyError::BadProof(_))
        ));
        assert!(matches!(
            bad(4, 1, 1).root(leaf),
            Err(VerifyError::BadProof(_))
        ));
        assert!(matches!(
            bad(4, 1, 3).root(leaf),
            Err(VerifyError::BadProof(_))
        ));
        assert!(bad(4, 1, 2).root(leaf).is_ok());
    }

    #[test]
    fn a_batch_holds_only_its_signers_records() {
        let me = Keypair::generate_ed25519();
        let other = Keypair::generate_ed25519();
        let mut mine = Signed::sign(&me, &Probe(1)).expect("sign");
        let mut theirs = Signed::sign(&other, &Probe(2)).expect("sign");
        let mut batch: Vec<&mut dyn BatchSignable> = vec![&mut mine, &mut theirs];
        assert!(matches!(
            sign_batch(&me, &mut batch),
            Err(SignError::NotOwnRecord)
        ));
        // Nothing was changed.
        assert!(!mine.is_batch_signed() && !theirs.is_batch_signed());
        let mut second = Signed::sign(&me, &Probe(3)).expect("sign");
        let mut batch: Vec<&mut dyn BatchSignable> = vec![&mut mine, &mut second];
        sign_batch(&me, &mut batch).expect("own records");
        let mut roots = VerifiedRoots::default();
        for s in [&mine, &second] {
            let fresh =
                Signed::<Probe>::from_bytes(&s.to_bytes().expect("encode")).expect("decode");
            assert!(fresh.is_batch_signed());
            assert_eq!(
                fresh.verify_in(&mut roots).map(|p| p.0),
                s.verify().map(|p| p.0)
            );
        }
        assert_eq!(roots.seen.len(), 1, "one root checked for the two records");
    }

    #[test]
    fn a_pair_shares_one_signature_and_each_stands_alone() {
        let me = Keypair::generate_ed25519();
        let (a, b) = sign_pair(&me, &Probe(7), &Other(8)).expect("sign");
        assert!(a.is_batch_signed() && b.is_batch_signed());
        assert_eq!(a.signature, b.signature, "one signature for both");
        let mut roots = VerifiedRoots::default();
        let fresh_a = Signed::<Probe>::from_bytes(&a.to_bytes().expect("encode")).expect("decode");
        let fresh_b = Signed::<Other>::from_bytes(&b.to_bytes().expect("encode")).expect("decode");
        assert_eq!(fresh_a.verify_in(&mut roots).map(|p| p.0), Ok(7));
        assert_eq!(fresh_b.verify_in(&mut roots).map(|p| p.0), Ok(8));
        assert_eq!(roots.seen.len(), 1, "one root checked for the two records");
        // A payload swapped under the pair's signature is refused.
        let (_, signer, signature) = fresh_a.into_parts();
        let mut forged = Signed::<Probe>::from_parts(
            codec::encode_versioned(&Probe(9), 64).expect("encode"),
            signer,
            signature,
        );
        forged.batch = b.batch.clone();
        assert!(matches!(
            forged.verify(),
            Err(VerifyError::BadSignature { .. })
        ));
    }

    #[test]
    fn a_checked_record_decodes_again_without_a_second_check() {
        let me = Keypair::generate_ed25519();
        let fresh = Signed::<Probe>::from_bytes(
            &Signed::sign(&me, &Probe(3))
                .expect("sign")
                .to_bytes()
                .expect("encode"),
        )
        .expect("decode");
        assert!(fresh.checked.get().is_none());
        assert_eq!(fresh.verify().map(|p| p.0), Ok(3));
        assert!(fresh.checked.get().is_some(), "checked once verified");
        assert_eq!(fresh.clone().verify().map(|p| p.0), Ok(3));
        // A signed but non-canonical payload is refused every time, and
        // never marked checked.
        let mut payload = codec::encode_versioned(&Probe(3), 64).expect("encode");
        // cbor: 3 as a one-byte-argument integer (0x18 0x03) instead of 0x03.
        let last = payload.pop().expect("a payload");
        assert_eq!(last, 0x03);
        payload.extend_from_slice(&[0x18, 0x03]);
        let signature = me
            .sign(&signed_message(Probe::DOMAIN, &payload))
            .expect("sign");
        let odd =
            Signed::<Probe>::from_parts(payload, SignerKey::of(&me).expect("ed25519"), signature);
        for _ in 0..2 {
            assert!(matches!(odd.verify(), Err(VerifyError::Payload(_))));
            assert!(odd.checked.get().is_none());
        }
    }

    #[derive(Serialize, Deserialize)]
    struct Other(u32);

    impl SignedPayload for Other {
        const DOMAIN: &'static str = "formic/test/other";
        const MAX_PAYLOAD: usize = 64;
    }

    #[derive(Serialize, Deserialize)]
    struct Probe(u32);

    impl SignedPayload for Probe {
        const DOMAIN: &'static str = "formic/test/probe";
        const MAX_PAYLOAD: usize = 64;
    }
}
