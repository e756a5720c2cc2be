//! Results with proof: the evidence bundle a researcher keeps beside the
//! outputs, and the offline check that re-derives every verdict from it.
//!
//! A results folder is believed because of signatures, not because of who
//! produced it: `verify` replays every signed record through the same
//! [`ProjectState`] and [`validate`](crate::validation::validate) a node
//! runs, with the owner's key (from the signed manifest, optionally pinned
//! by the caller) as the trust anchor, and checks each claimed result
//! against the verdict.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::codec::{self, DecodeError, EncodeError};
use crate::content_id::ContentId;
use crate::messages::{Batch, Gossip, ProjectManifest};
use crate::project::{ProjectState, RecordError};
use crate::signed::{Signed, SignerKey};

/// Largest evidence bundle accepted (it holds every record of a project).
pub const MAX_BUNDLE_BYTES: usize = 1 << 30;

/// Everything needed to re-check a project's results offline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvidenceBundle {
    /// The owner-signed manifest (its id is the project's).
    pub manifest: Signed<ProjectManifest>,
    /// Every batch received, owner-signed.
    pub batches: Vec<Signed<Batch>>,
    /// Every worker and owner record of the project, each signed.
    pub records: Vec<Gossip>,
    /// The probation the collector validated with (0 = plain quorum).
    pub probation: u32,
}

/// One validated unit as listed in `results.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultEntry {
    /// The unit's index within the project.
    pub index: u64,
    /// Content id of the unit's input.
    pub input: ContentId,
    /// blake3 of the output bytes in `outputs/<index>`.
    pub result_hash: ContentId,
    /// Length of the output in bytes.
    pub output_size: u64,
    /// Fuel the unit's run used (the same for every agreeing worker).
    pub fuel_used: u64,
    /// PeerIds of the agreeing workers.
    pub workers: Vec<String>,
}

/// Why a results folder does not check out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    /// The bundle's manifest does not verify.
    #[error("the manifest is not validly signed: {0}")]
    Manifest(RecordError),
    /// The manifest is signed by another key than the one expected.
    #[error("the project is signed by {found}, not the expected owner {expected}")]
    WrongOwner {
        /// The owner the caller expected.
        expected: String,
        /// The key that signed the manifest.
        found: String,
    },
    /// A batch in the bundle is refused.
    #[error("batch {seq} in the evidence is invalid: {reason}")]
    Batch {
        /// Its position in [`EvidenceBundle::batches`], from 0.
        seq: usize,
        /// Why the project state refused it.
        reason: RecordError,
    },
    /// A record in the bundle is refused.
    #[error("record {position} in the evidence is invalid: {reason}")]
    Record {
        /// Its position in [`EvidenceBundle::records`], from 0.
        position: usize,
        /// Why the project state refused it.
        reason: RecordError,
    },
    /// A listed unit that the evidence does not validate.
    #[error("unit {0} is listed as a result but the evidence does not validate it")]
    NotValidated(u64),
    /// A listed result that differs from the one the evidence validates.
    #[error("unit {index}: the listed result {listed} differs from the validated {validated}")]
    WrongResult {
        /// The unit's index.
        index: u64,
        /// The result hash listed.
        listed: ContentId,
        /// The result hash the evidence validates.
        validated: ContentId,
    },
    /// A unit listed more than once.
    #[error("unit {0} is listed twice")]
    Duplicate(u64),
}

impl EvidenceBundle {
    /// Collects the bundle from a node's view of a project.
    pub fn from_state(manifest: Signed<ProjectManifest>, state: &ProjectState) -> Self {
        Self {
            manifest,
            batches: state.batches().cloned().collect(),
            records: state.records(),
            probation: state.policy().probation,
        }
    }

    /// Encodes the bundle (versioned CBOR, at most [`MAX_BUNDLE_BYTES`]).
    pub fn to_bytes(&self) -> Result<Vec<u8>, EncodeError> {
        codec::encode_versioned(self, MAX_BUNDLE_BYTES)
    }

    /// Decodes a bundle, refusing one over [`MAX_BUNDLE_BYTES`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        codec::decode_versioned(bytes, MAX_BUNDLE_BYTES)
    }

    /// Rebuilds the project state from the signed records. Any record that
    /// does not verify is an error: a bundle is either intact or tampered.
    pub fn replay(&self, expected_owner: Option<&SignerKey>) -> Result<ProjectState, CheckError> {
        let mut state =
            ProjectState::new(&self.manifest, self.probation).map_err(CheckError::Manifest)?;
        if let Some(owner) = expected_owner
            && *owner != state.owner()
        {
            return Err(CheckError::WrongOwner {
                expected: owner.to_string(),
                found: state.owner().to_string(),
            });
        }
        for (seq, b) in self.batches.iter().enumerate() {
            state
                .add_batch(b)
                .map_err(|reason| CheckError::Batch { seq, reason })?;
        }
        for (position, r) in self.records.iter().enumerate() {
            state
                .apply(r)
                .map_err(|reason| CheckError::Record { position, reason })?;
        }
        Ok(state)
    }

    /// Checks `listed` results against the verdicts the evidence supports.
    /// Returns how many units the evidence validates in all.
    pub fn check(
        &self,
        listed: &[ResultEntry],
        expected_owner: Option<&SignerKey>,
    ) -> Result<usize, CheckError> {
        let mut state = self.replay(expected_owner)?;
        let validated: BTreeMap<u64, ContentId> = state
            .validated()
            .into_iter()
            .map(|v| (v.index, v.result_hash))
            .collect();
        let mut seen = std::collections::BTreeSet::new();
        for e in listed {
            if !seen.insert(e.index) {
                return Err(CheckError::Duplicate(e.index));
            }
            match validated.get(&e.index) {
                None => return Err(CheckError::NotValidated(e.index)),
                Some(h) if *h != e.result_hash => {
                    return Err(CheckError::WrongResult {
                        index: e.index,
                        listed: e.result_hash,
                        validated: *h,
                    });
                }
                Some(_) => {}
            }
        }
        Ok(validated.len())
    }
}
