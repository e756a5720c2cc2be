//! Signed envelopes: a payload's canonical bytes, who signed them, and the
//! ed25519 signature.
//!
//! The signature covers a per-type domain tag followed by the payload bytes,
//! so a signature made for one kind of record (say a Commit) can never be
//! replayed as another (say a Reveal) even if their encodings collided. The
//! envelope keeps the exact signed bytes rather than re-encoding on verify:
//! what is checked is exactly what was signed.

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
    #[error("signing keys must be ed25519")]
    NotEd25519,
    #[error("could not encode the payload: {0}")]
    Encode(#[from] EncodeError),
    #[error("signing failed: {0}")]
    Signing(String),
}

/// Why a signed envelope was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the signer's public key is not a valid ed25519 key")]
    BadKey,
    #[error(
        "the signature does not match the payload and signer {signer}: the record was altered or forged"
    )]
    BadSignature { signer: String },
    #[error("the signed payload does not decode: {0}")]
    Payload(DecodeError),
}

/// A value of type `T` signed by `signer`.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub struct Signed<T> {
    /// `codec::encode_versioned(value)`: exactly the bytes signed.
    #[serde(with = "serde_bytes")]
    payload: Vec<u8>,
    signer: SignerKey,
    /// 64-byte ed25519 signature over `T::DOMAIN ‖ 0x00 ‖ payload`.
    #[serde(with = "serde_bytes")]
    signature: Vec<u8>,
    /// Set once the signature has been checked on this very value (its
    /// fields never change), so a record verified when it arrives is not
    /// verified again by each layer it passes through: ed25519 was most of
    /// the protocol's CPU. Never serialized: a decoded or reassembled
    /// envelope starts unchecked.
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
        let signer = SignerKey::of(keypair)?;
        let payload = codec::encode_versioned(value, T::MAX_PAYLOAD)?;
        let signature = keypair
            .sign(&signed_message(T::DOMAIN, &payload))
            .map_err(|e| SignError::Signing(e.to_string()))?;
        // Signed here, with the signer's own key: valid by construction.
        Ok(Self {
            payload,
            signer,
            signature,
            checked: OnceLock::from(()),
            _type: PhantomData,
        })
    }

    /// Checks the signature, then decodes the payload. Unauthenticated bytes
    /// are never parsed beyond the envelope.
    pub fn verify(&self) -> Result<T, VerifyError> {
        if self.checked.get().is_none() {
            let key = self.signer.public_key()?;
            if !key.verify(&signed_message(T::DOMAIN, &self.payload), &self.signature) {
                return Err(VerifyError::BadSignature {
                    signer: self.signer.to_string(),
                });
            }
            let _ = self.checked.set(());
        }
        codec::decode_versioned(&self.payload, T::MAX_PAYLOAD).map_err(VerifyError::Payload)
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
        codec::encode_versioned(self, T::MAX_PAYLOAD + 256)
    }

    /// Parses an envelope (not verified: call [`Signed::verify`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        codec::decode_versioned(bytes, T::MAX_PAYLOAD + 256)
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
            checked: OnceLock::new(),
            _type: PhantomData,
        }
    }
}
