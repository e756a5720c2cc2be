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
    pub manifest: Signed<ProjectManifest>,
    pub batches: Vec<Signed<Batch>>,
    pub records: Vec<Gossip>,
    /// The probation the collector validated with (0 = plain quorum).
    pub probation: u32,
}

/// One validated unit as listed in `results.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultEntry {
    pub index: u64,
    /// Content id of the unit's input.
    pub input: ContentId,
    /// blake3 of the output bytes in `outputs/<index>`.
    pub result_hash: ContentId,
    pub output_size: u64,
    pub fuel_used: u64,
    /// PeerIds of the agreeing workers.
    pub workers: Vec<String>,
}

/// Why a results folder does not check out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    #[error("the manifest is not validly signed: {0}")]
    Manifest(RecordError),
    #[error("the project is signed by {found}, not the expected owner {expected}")]
    WrongOwner { expected: String, found: String },
    #[error("batch {seq} in the evidence is invalid: {reason}")]
    Batch { seq: usize, reason: RecordError },
    #[error("record {position} in the evidence is invalid: {reason}")]
    Record {
        position: usize,
        reason: RecordError,
    },
    #[error("unit {0} is listed as a result but the evidence does not validate it")]
    NotValidated(u64),
    #[error("unit {index}: the listed result {listed} differs from the validated {validated}")]
    WrongResult {
        index: u64,
        listed: ContentId,
        validated: ContentId,
    },
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

    pub fn to_bytes(&self) -> Result<Vec<u8>, EncodeError> {
        codec::encode_versioned(self, MAX_BUNDLE_BYTES)
    }

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
