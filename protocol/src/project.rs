//! The per-project state machine every node runs, sans-IO.
//!
//! A node feeds it the records it hears (gossip or pull-sync) and asks it
//! what to do: which unit to compute next, when a commit may be opened, what
//! is validated. Time (`now_ms`) and private randomness (`draw`) are handed
//! in, so the same code runs in a node, in tests and in a simulator.
//!
//! Commit-reveal: a worker gossips a Commit (seal) when it has computed, and
//! the Reveal only once `quorum` distinct workers have committed to the unit,
//! so nobody can copy a result it has not seen. Hidden audits claim nothing:
//! an auditor picks, with private randomness, a unit that already has
//! commits, so the worker being audited has committed before any sign of the
//! audit exists.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use libp2p_identity::Keypair;

use crate::assignment;
use crate::content_id::ContentId;
use crate::messages::{
    Batch, Claim, Commit, Data, Gossip, ProjectId, ProjectManifest, Reveal, Salt, SpotCheckKey,
    UnitRef, UnitSpec, seal,
};
use crate::signed::{SignError, Signed, SignerKey, VerifyError, sign_pair};
use crate::validation::{
    Evidence, Need, Outcome, RevealEvidence, ValidationPolicy, Verdict, validate,
};

/// At most this many workers' records are kept per unit, so a flood of
/// claims from Sybils cannot grow memory without bound.
pub const MAX_WORKERS_PER_UNIT: usize = 64;

/// Why a record was not applied to a project.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The record names another project.
    #[error("record is for project {found}, not {expected}")]
    WrongProject {
        /// This project's id.
        expected: ContentId,
        /// The project the record names.
        found: ContentId,
    },
    /// A batch or spot-check key signed by someone other than the owner.
    #[error("record must be signed by the project owner")]
    NotOwner,
    /// The signed envelope does not verify.
    #[error("bad signature: {0}")]
    Signature(#[from] VerifyError),
    /// A worker record for a unit index no batch received so far holds.
    #[error("unit {0} is not in any batch of this project (yet)")]
    UnknownUnit(u64),
    /// A second, different batch with the same sequence number.
    #[error("batch {0} was already received with different contents")]
    ConflictingBatch(u32),
    /// A batch repeats a unit index, or reuses one of an earlier batch.
    #[error("batch lists unit {0} twice or it is already in another batch")]
    DuplicateUnit(u64),
    /// The reveal's result does not match the seal the worker committed to.
    #[error("the reveal does not open this worker's commit: the result changed after committing")]
    SealMismatch,
    /// The revealed output (its bytes' hash, or its blob's id) is not the
    /// revealed result hash.
    #[error("the revealed output does not hash to the revealed result")]
    OutputMismatch,
    /// A new worker on a unit that already has [`MAX_WORKERS_PER_UNIT`].
    #[error("unit {0} already has records from {MAX_WORKERS_PER_UNIT} workers")]
    UnitFull(u64),
    /// An announcement was given to the project state.
    #[error("announcements are handled by the node, not the project state")]
    NotAProjectRecord,
    /// The reveal was computed on another sandbox engine than the project
    /// names: its result is not comparable, so it is not evidence.
    #[error("the reveal was computed on engine {found:?}, but the project runs on {expected:?}")]
    WrongEngine {
        /// The manifest's engine.
        expected: String,
        /// The reveal's engine.
        found: String,
    },
}

/// Whether a record was new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The record was not known before and is now applied.
    New,
    /// The record was already known; nothing changed.
    Duplicate,
}

/// A unit the evidence validates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatedUnit {
    /// The unit's index within the project.
    pub index: u64,
    /// blake3 of the validated output.
    pub result_hash: ContentId,
    /// The output, inline or as a blob reference.
    pub output: Data,
    /// Fuel the unit's run used (the same for every honest replica).
    pub fuel_used: u64,
    /// The agreeing workers, in key order.
    pub workers: Vec<SignerKey>,
}

/// Something for this worker to compute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkOrder {
    /// The unit to compute.
    pub unit: UnitRef,
    /// Its input (stdin of the app).
    pub input: Data,
    /// A hidden audit: computed like any replica, but claimed by nobody.
    pub audit: bool,
    /// The sandbox's deterministic random seed for this unit.
    pub seed: ContentId,
}

#[derive(Debug, Clone, Default)]
struct UnitRecords {
    claims: BTreeMap<SignerKey, Signed<Claim>>,
    claim_expiry: BTreeMap<SignerKey, u64>,
    commits: BTreeMap<SignerKey, Signed<Commit>>,
    reveals: BTreeMap<SignerKey, Signed<Reveal>>,
    /// Decoded copies of the verified records above, so signatures are
    /// checked once, on arrival, and never again.
    seals: BTreeMap<SignerKey, ContentId>,
    opened: BTreeMap<SignerKey, Reveal>,
}

impl UnitRecords {
    fn workers(&self) -> usize {
        let mut n = self.claims.len();
        n += self
            .commits
            .keys()
            .filter(|w| !self.claims.contains_key(w))
            .count();
        n
    }

    fn involves(&self, w: &SignerKey) -> bool {
        self.claims.contains_key(w) || self.commits.contains_key(w)
    }
}

/// One project as this node knows it.
#[derive(Debug, Clone)]
pub struct ProjectState {
    id: ProjectId,
    owner: SignerKey,
    manifest: ProjectManifest,
    policy: ValidationPolicy,
    batches: BTreeMap<u32, Signed<Batch>>,
    seeds: BTreeMap<u32, [u8; 32]>,
    specs: BTreeMap<u64, (u32, UnitSpec)>,
    units: BTreeMap<u64, UnitRecords>,
    spot_check_keys: Vec<Signed<SpotCheckKey>>,
    /// Verified evidence, kept up to date as records arrive.
    evidence: Evidence,
    outcome: Option<Outcome>,
    /// Preference order cache: (worker, unit indices in rank order).
    order: Option<(SignerKey, Vec<u64>)>,
    /// Every unit before this position in `order` is started (has a
    /// claim, commit or reveal), so `next_work`'s search for a fresh unit
    /// starts there instead of rescanning the order on every call. Started
    /// units never become fresh again (records are never removed), so it
    /// goes back to 0 only when the order itself is rebuilt.
    order_start: usize,
    /// Each unit's position in `order`, to rank started units without
    /// walking the order.
    order_pos: HashMap<u64, usize>,
    /// Units with records that were not settled when last looked at: the
    /// candidates for joining a started unit. Units leave it once
    /// validated with an output and come back when a record of theirs
    /// arrives, or all at once (rebuilt from `units`) when validation was
    /// recomputed in full, which may re-open any unit. Without it
    /// `next_work` walked the whole order looking for a started unit, so a
    /// 4,000-unit project spent a fifth of the swarm's CPU there.
    unsettled: BTreeSet<u64>,
    /// `unsettled` must be rebuilt before its next use.
    unsettled_stale: bool,
    /// How many units `unsettled` held after `next_work` last checked every
    /// one of them for a verdict (see there).
    unsettled_pruned: usize,
    /// Bumped whenever the verdicts may have changed (see
    /// [`ProjectState::verdicts_revision`]).
    verdicts_revision: u64,
    /// Every worker with a claim, commit or reveal in the project, and the
    /// value of `activity_clock` at its latest: who may be designated to
    /// join a started unit, while recently active (see [`JOIN_GRACE_MS`]).
    workers_seen: BTreeMap<SignerKey, u64>,
    /// Counts the new claims, commits and reveals applied: a clock that
    /// runs at the project's own pace, so "recently" means the same for
    /// second-long and hour-long units.
    activity_clock: u64,
    /// When `next_work` first found each started unit open to join, by
    /// the clock it is given: anyone may join it once [`JOIN_GRACE_MS`]
    /// have passed.
    open_since: HashMap<u64, u64>,
}

/// How long a started unit that wants more replicas is left to its
/// designated joiners before any worker may join it.
///
/// Workers prefer joining a started unit to opening a fresh one (see
/// `next_work`), and each sees the others' picks only a gossip round
/// later: up to a bundle window (25 ms) plus delivery. With short units a
/// worker runs many in that time, so every worker joined every unit it saw
/// open: the protocol-ceiling run made 3.6 executions per validated unit
/// where 2 were wanted. Now a started unit wanting k more replicas is
/// joined at first only by the k workers that rank first for it among
/// those not yet involved (rendezvous hashing over the workers seen in the
/// project, so all workers agree without talking); everyone else opens
/// fresh units meanwhile. If those k do not come (busy with long units,
/// or gone), anyone may join after this grace. Long units lose little:
/// their workers are rarely free at the same moment.
pub const JOIN_GRACE_MS: u64 = 100;

/// A worker counts as active for designation while it has a record among
/// the project's latest this many per worker seen (about five units' worth
/// of claims, commits and reveals each)...
const ACTIVE_RECORDS_PER_WORKER: u64 = 16;
/// ...and never fewer than this many.
const ACTIVE_RECORDS_MIN: u64 = 256;

impl ProjectState {
    /// Starts tracking the project whose signed manifest is `manifest`.
    pub fn new(manifest: &Signed<ProjectManifest>, probation: u32) -> Result<Self, RecordError> {
        let m = manifest.verify()?;
        let policy = ValidationPolicy {
            quorum: m.policy.quorum.max(1),
            probation,
            ..ValidationPolicy::default()
        };
        Ok(Self {
            id: manifest.id(),
            owner: manifest.signer(),
            manifest: m,
            policy,
            batches: BTreeMap::new(),
            seeds: BTreeMap::new(),
            specs: BTreeMap::new(),
            units: BTreeMap::new(),
            spot_check_keys: Vec::new(),
            evidence: Evidence::new(),
            outcome: None,
            order: None,
            order_start: 0,
            order_pos: HashMap::new(),
            unsettled: BTreeSet::new(),
            unsettled_stale: false,
            unsettled_pruned: 0,
            verdicts_revision: 0,
            workers_seen: BTreeMap::new(),
            activity_clock: 0,
            open_since: HashMap::new(),
        })
    }

    /// The project's id (the content id of its signed manifest).
    pub fn id(&self) -> ProjectId {
        self.id
    }

    /// The key that signed the manifest.
    pub fn owner(&self) -> SignerKey {
        self.owner
    }

    /// The verified manifest.
    pub fn manifest(&self) -> &ProjectManifest {
        &self.manifest
    }

    /// The validation policy: the manifest's quorum and this node's
    /// probation.
    pub fn policy(&self) -> &ValidationPolicy {
        &self.policy
    }

    /// Number of units across all batches received.
    pub fn unit_count(&self) -> usize {
        self.specs.len()
    }

    /// The unit spec of `index`, if its batch has been received.
    pub fn unit(&self, index: u64) -> Option<&UnitSpec> {
        self.specs.get(&index).map(|(_, s)| s)
    }

    /// Adds an owner-signed batch of units.
    pub fn add_batch(&mut self, batch: &Signed<Batch>) -> Result<Applied, RecordError> {
        if batch.signer() != self.owner {
            return Err(RecordError::NotOwner);
        }
        let b = batch.verify()?;
        if b.project != self.id {
            return Err(RecordError::WrongProject {
                expected: self.id,
                found: b.project,
            });
        }
        if let Some(existing) = self.batches.get(&b.seq) {
            return if existing == batch {
                Ok(Applied::Duplicate)
            } else {
                Err(RecordError::ConflictingBatch(b.seq))
            };
        }
        let mut seen = std::collections::BTreeSet::new();
        for u in &b.units {
            if !seen.insert(u.index) || self.specs.contains_key(&u.index) {
                return Err(RecordError::DuplicateUnit(u.index));
            }
        }
        for u in b.units {
            self.specs.insert(u.index, (b.seq, u));
        }
        self.seeds.insert(b.seq, b.seed);
        self.batches.insert(b.seq, batch.clone());
        self.order = None;
        self.unsettled_stale = true;
        self.forget_outcome();
        Ok(Applied::New)
    }

    /// Notes a new record of worker `w` (fields passed apart: callers hold a
    /// unit's records borrowed).
    fn saw(clock: &mut u64, seen: &mut BTreeMap<SignerKey, u64>, w: SignerKey) {
        *clock += 1;
        seen.insert(w, *clock);
    }

    /// Whether a worker whose latest record came at `last` on the activity
    /// clock is still active: within the last [`ACTIVE_RECORDS_PER_WORKER`]
    /// records per worker seen (at least [`ACTIVE_RECORDS_MIN`]). One that
    /// left, or a throwaway identity that made one claim, stops being
    /// designated once the others have each done a few units.
    fn is_active(&self, last: u64) -> bool {
        let window = (self.workers_seen.len() as u64)
            .saturating_mul(ACTIVE_RECORDS_PER_WORKER)
            .max(ACTIVE_RECORDS_MIN);
        self.activity_clock.saturating_sub(last) <= window
    }

    fn check_unit(&self, unit: &UnitRef) -> Result<(), RecordError> {
        if unit.project != self.id {
            return Err(RecordError::WrongProject {
                expected: self.id,
                found: unit.project,
            });
        }
        if !self.specs.contains_key(&unit.index) {
            return Err(RecordError::UnknownUnit(unit.index));
        }
        Ok(())
    }

    /// The records of `unit`, refusing a new worker once the unit is full.
    /// Takes the map, not `self`, so callers can update other fields while
    /// holding it.
    fn records_mut<'a>(
        units: &'a mut BTreeMap<u64, UnitRecords>,
        unit: &UnitRef,
        worker: &SignerKey,
    ) -> Result<&'a mut UnitRecords, RecordError> {
        let recs = units.entry(unit.index).or_default();
        if !recs.involves(worker) && recs.workers() >= MAX_WORKERS_PER_UNIT {
            return Err(RecordError::UnitFull(unit.index));
        }
        Ok(recs)
    }

    /// Applies a gossiped or synced record: verifies its signature and that
    /// it fits this project, then stores it. Idempotent.
    pub fn apply(&mut self, record: &Gossip) -> Result<Applied, RecordError> {
        match record {
            Gossip::Announce(_) => Err(RecordError::NotAProjectRecord),
            Gossip::Claim(s) => {
                let c = s.verify()?;
                self.check_unit(&c.unit)?;
                let w = s.signer();
                let recs = Self::records_mut(&mut self.units, &c.unit, &w)?;
                let newer = recs
                    .claim_expiry
                    .get(&w)
                    .is_none_or(|e| c.lease_until_ms > *e);
                if !newer {
                    return Ok(Applied::Duplicate);
                }
                recs.claims.insert(w, s.clone());
                recs.claim_expiry.insert(w, c.lease_until_ms);
                Self::saw(&mut self.activity_clock, &mut self.workers_seen, w);
                self.unsettled.insert(c.unit.index);
                Ok(Applied::New)
            }
            Gossip::Commit(s) => {
                let c = s.verify()?;
                self.check_unit(&c.unit)?;
                let w = s.signer();
                let recs = Self::records_mut(&mut self.units, &c.unit, &w)?;
                if recs.commits.contains_key(&w) {
                    // A second, different commit is equivocation; the first
                    // one stands and the reveal must open it.
                    return Ok(Applied::Duplicate);
                }
                Self::saw(&mut self.activity_clock, &mut self.workers_seen, w);
                recs.commits.insert(w, s.clone());
                recs.seals.insert(w, c.seal);
                self.unsettled.insert(c.unit.index);
                // A reveal that arrived first becomes evidence now, if the
                // commit's seal matches it.
                let opened = recs
                    .opened
                    .get(&w)
                    .filter(|r| seal(&r.result_hash, &r.salt, &w, &r.unit) == c.seal)
                    .map(|r| RevealEvidence {
                        worker: w,
                        unit: r.unit,
                        result_hash: r.result_hash,
                        fuel_used: r.fuel_used,
                    });
                if let Some(r) = opened {
                    self.add_evidence(r);
                }
                Ok(Applied::New)
            }
            Gossip::Reveal(s) => {
                let r = s.verify()?;
                self.check_unit(&r.unit)?;
                // Results of two engines never meet in one quorum: an older
                // engine's NaN bits or fuel would differ from this one's
                // without anyone being wrong.
                if r.engine != self.manifest.engine {
                    return Err(RecordError::WrongEngine {
                        expected: self.manifest.engine.clone(),
                        found: r.engine,
                    });
                }
                let w = s.signer();
                let recs = Self::records_mut(&mut self.units, &r.unit, &w)?;
                let committed = match recs.seals.get(&w) {
                    Some(sealed) if seal(&r.result_hash, &r.salt, &w, &r.unit) != *sealed => {
                        return Err(RecordError::SealMismatch);
                    }
                    Some(_) => true,
                    None => false,
                };
                if r.output.content_id() != r.result_hash {
                    return Err(RecordError::OutputMismatch);
                }
                if recs.reveals.contains_key(&w) {
                    return Ok(Applied::Duplicate);
                }
                recs.reveals.insert(w, s.clone());
                Self::saw(&mut self.activity_clock, &mut self.workers_seen, w);
                self.unsettled.insert(r.unit.index);
                let evidence = RevealEvidence {
                    worker: w,
                    unit: r.unit,
                    result_hash: r.result_hash,
                    fuel_used: r.fuel_used,
                };
                recs.opened.insert(w, r);
                if committed {
                    self.add_evidence(evidence);
                }
                Ok(Applied::New)
            }
            Gossip::SpotCheckKey(s) => {
                if s.signer() != self.owner {
                    return Err(RecordError::NotOwner);
                }
                let k = s.verify()?;
                if k.project != self.id {
                    return Err(RecordError::WrongProject {
                        expected: self.id,
                        found: k.project,
                    });
                }
                if self.spot_check_keys.contains(s) {
                    return Ok(Applied::Duplicate);
                }
                self.spot_check_keys.push(s.clone());
                for (index, hash) in k.answers {
                    self.evidence.add_known_answer(
                        UnitRef {
                            project: self.id,
                            index,
                        },
                        hash,
                    );
                }
                self.forget_outcome();
                // Known answers may prove workers faulty, re-opening the
                // units they helped validate.
                self.unsettled_stale = true;
                Ok(Applied::New)
            }
        }
    }

    /// Every record held, for pull-sync and results bundles: batches first,
    /// then per unit claims, commits, reveals; then spot-check keys.
    pub fn records(&self) -> Vec<Gossip> {
        let mut out = Vec::new();
        for recs in self.units.values() {
            out.extend(recs.claims.values().cloned().map(Gossip::Claim));
            out.extend(recs.commits.values().cloned().map(Gossip::Commit));
            out.extend(recs.reveals.values().cloned().map(Gossip::Reveal));
        }
        out.extend(
            self.spot_check_keys
                .iter()
                .cloned()
                .map(Gossip::SpotCheckKey),
        );
        out
    }

    /// Whether batch `seq` has been received.
    pub fn has_batch(&self, seq: u32) -> bool {
        self.batches.contains_key(&seq)
    }

    /// The signed batches, by sequence number.
    pub fn batches(&self) -> impl Iterator<Item = &Signed<Batch>> {
        self.batches.values()
    }

    /// The evidence: every commit/reveal pair that opens correctly, plus the
    /// owner's spot-check answers.
    pub fn evidence(&self) -> &Evidence {
        &self.evidence
    }

    /// The current verdicts (recomputed only when records changed).
    pub fn outcome(&mut self) -> &Outcome {
        if self.outcome.is_none() {
            self.outcome = Some(validate(&self.evidence, &self.policy));
        }
        // Just set above when missing.
        self.outcome.get_or_insert_with(Outcome::default)
    }

    /// Adds a verified, committed reveal to the evidence and keeps the cached
    /// outcome current: decided for its unit alone when validation allows
    /// it ([`validation::revalidate_unit`]), otherwise recomputed in full at
    /// the next read. Deciding every unit again after each reveal made a
    /// project's validation cost grow with the square of its size.
    fn add_evidence(&mut self, r: RevealEvidence) {
        // Whether decided again for this unit alone or all at once below.
        self.verdicts_revision += 1;
        let unit = r.unit;
        let before = self
            .outcome
            .as_ref()
            .map(|o| crate::validation::unit_credit(&self.evidence, o, &unit));
        self.evidence.add_reveal(r);
        let kept = match (self.outcome.as_mut(), before) {
            (Some(o), Some(before)) => {
                crate::validation::revalidate_unit(&self.evidence, &self.policy, o, &unit, &before)
            }
            _ => false,
        };
        if !kept {
            // Any unit may have re-opened. When only this unit was decided
            // again, the Commit or Reveal that brought the evidence has
            // already put it back among the unsettled ones.
            self.forget_outcome();
            self.unsettled_stale = true;
        }
    }

    /// Drops the cached verdicts, to be decided again in full at the next
    /// read.
    fn forget_outcome(&mut self) {
        self.outcome = None;
        self.verdicts_revision += 1;
    }

    /// A number that changes whenever the verdicts may have changed, so a
    /// caller that derives figures from them (a progress count walked over
    /// every unit) can skip the walk while it stays the same.
    pub fn verdicts_revision(&self) -> u64 {
        self.verdicts_revision
    }

    /// Whether unit `index` is validated with an output to collect (a spot
    /// check validated by its known answer alone still wants a replica).
    pub fn is_settled(&mut self, index: u64) -> bool {
        let unit = UnitRef {
            project: self.id,
            index,
        };
        self.outcome().is_settled(&unit)
    }

    /// Whether every unit received so far is validated with an output to
    /// collect (a spot check validated by its known answer alone has none
    /// until an agreeing worker reveals it).
    pub fn is_complete(&mut self) -> bool {
        let indices: Vec<u64> = self.specs.keys().copied().collect();
        !indices.is_empty() && indices.iter().all(|i| self.is_settled(*i))
    }

    /// How many more replicas `index` needs right now, counting live claims
    /// and commits still waiting to be revealed as in flight.
    fn open_slots(&self, index: u64, outcome: &Outcome, now_ms: u64) -> usize {
        let quorum = usize::from(self.policy.quorum);
        let recs = self.units.get(&index);
        let in_flight = recs.map_or(0, |r| {
            let live_claims = r
                .claim_expiry
                .iter()
                .filter(|(w, exp)| **exp > now_ms && !r.commits.contains_key(*w))
                .count();
            let unrevealed = r
                .commits
                .keys()
                .filter(|w| !r.reveals.contains_key(*w))
                .count();
            live_claims + unrevealed
        });
        let wanted = match outcome.verdicts.get(&UnitRef {
            project: self.id,
            index,
        }) {
            None => quorum,
            // A spot check settled by its known answer before any worker
            // agreed with it: one honest replica supplies the output.
            Some(Verdict::Validated { workers, .. }) if workers.is_empty() => 1,
            Some(Verdict::Validated { .. }) => 0,
            Some(Verdict::Pending {
                need: Need::MoreReplicas,
                have,
            }) => quorum.saturating_sub(*have).max(1),
            Some(Verdict::Pending { .. }) => 1,
        };
        let total = recs.map_or(0, |r| r.workers());
        if total >= usize::from(self.manifest.policy.max_replicas.max(self.policy.quorum)) {
            return 0;
        }
        wanted.saturating_sub(in_flight)
    }

    /// The next unit `me` should compute, if any, skipping the units in
    /// `busy` (already being computed here: audits leave no claim to show
    /// it). `draw` is fresh private randomness (it decides hidden audits and
    /// must not be derived from anything public).
    pub fn next_work(
        &mut self,
        me: &SignerKey,
        now_ms: u64,
        draw: u32,
        busy: &BTreeSet<u64>,
    ) -> Option<WorkOrder> {
        if self.order.as_ref().is_none_or(|(w, _)| w != me) {
            let order = self.rendezvous_order(me);
            self.order_pos = order.iter().enumerate().map(|(p, i)| (*i, p)).collect();
            self.order = Some((*me, order));
            self.order_start = 0;
        }
        if self.unsettled_stale {
            self.unsettled = self.units.keys().copied().collect();
            self.unsettled_stale = false;
            self.unsettled_pruned = 0;
        }
        // Compute (or reuse) the verdicts, then only borrow from here on:
        // this runs for every scheduling decision and must not copy state.
        self.outcome();
        let outcome = self.outcome.as_ref()?;
        let veteran = outcome.is_veteran(me, &self.policy);
        let order = self
            .order
            .as_ref()
            .map(|(_, o)| o.as_slice())
            .unwrap_or_default();
        let unit_ref = |index: u64| UnitRef {
            project: self.id,
            index,
        };
        let settled = |index: u64| outcome.is_settled(&unit_ref(index));
        let is_started = |recs: Option<&UnitRecords>| {
            recs.is_some_and(|r| r.workers() > 0 || !r.reveals.is_empty())
        };
        // Skip the started prefix: the search for a fresh unit below never
        // takes a started one.
        let mut start = self.order_start.min(order.len());
        while order
            .get(start)
            .is_some_and(|index| is_started(self.units.get(index)))
        {
            start += 1;
        }
        self.order_start = start;
        // Whether `me` may take `index` at all: not already running it
        // here or involved in it, and a veteran where only one will do.
        let may_take = |index: u64, recs: Option<&UnitRecords>| {
            if busy.contains(&index) || recs.is_some_and(|r| r.involves(me)) {
                return false;
            }
            veteran || !outcome.needs_veteran(&unit_ref(index))
        };
        // How many more replicas `index` wants from `me`.
        let open = |index: u64, recs: Option<&UnitRecords>| -> usize {
            if may_take(index, recs) {
                self.open_slots(index, outcome, now_ms)
            } else {
                0
            }
        };
        if assignment::should_audit(draw, self.manifest.policy.audit_rate_ppm) {
            // A hidden audit may re-check any unit with commits, settled or
            // not; otherwise the same preference as below, over the whole
            // order.
            let mut fresh: Option<u64> = None;
            for index in order {
                let recs = self.units.get(index);
                let slots = open(*index, recs);
                let auditable =
                    recs.is_some_and(|r| !r.commits.is_empty()) && may_take(*index, recs);
                if auditable || (slots > 0 && is_started(recs)) {
                    return self.work_order(*index, slots == 0);
                }
                if slots > 0 && fresh.is_none() {
                    fresh = Some(*index);
                }
            }
            return fresh.and_then(|i| self.work_order(i, false));
        }
        // A unit that already has a replica under way or revealed is taken
        // before a fresh one, so a unit's replicas run side by side and it
        // validates as soon as they finish, instead of every worker opening
        // a new unit and validations trailing by a whole unit's time. Among
        // started units, the first in this worker's own order.
        //
        // Rank first: only a unit ahead of the best so far is worth a
        // look, and in a random order few are. Settled units are dropped
        // from `unsettled` when met ahead; those behind stay until the set
        // has doubled since every unit in it was last checked, so pruning
        // costs O(1) per unit however long a unit waits behind others.
        let prune_all = self.unsettled.len() >= (2 * self.unsettled_pruned).max(64);
        let mut best: Option<(usize, u64)> = None;
        let mut done: Vec<u64> = Vec::new();
        // Started units first found open to join now, and ones found
        // wanting no more replicas (their grace starts again if they do).
        let (mut opened, mut closed): (Vec<u64>, Vec<u64>) = (Vec::new(), Vec::new());
        // The first started unit open to join that `me` is not designated
        // for: taken only when there is no fresh unit to open instead, as
        // at the end of a project, where holding back would only idle.
        let mut fallback: Option<(usize, u64)> = None;
        for index in &self.unsettled {
            let pos = self.order_pos.get(index);
            let ahead = pos.is_some_and(|pos| best.is_none_or(|(p, _)| *pos < p));
            if !ahead && !prune_all {
                continue;
            }
            if settled(*index) {
                done.push(*index);
                continue;
            }
            let (true, Some(pos)) = (ahead, pos) else {
                continue;
            };
            let recs = self.units.get(index);
            if !is_started(recs) {
                continue;
            }
            let slots = open(*index, recs);
            if slots == 0 {
                closed.push(*index);
                continue;
            }
            // Its designated joiners first, anyone after the grace (see
            // JOIN_GRACE_MS).
            let since = self.open_since.get(index).copied();
            if since.is_none() {
                opened.push(*index);
            }
            // A clock stepped back counts as aged, not as hours to wait.
            let aged = since.is_some_and(|t| now_ms < t || now_ms - t >= JOIN_GRACE_MS);
            if aged || self.designated_joiner(me, *index, recs, slots, outcome) {
                best = Some((*pos, *index));
            } else if fallback.is_none_or(|(p, _)| *pos < p) {
                fallback = Some((*pos, *index));
            }
        }
        let fresh = match best {
            Some(_) => None,
            None => order[start..].iter().copied().find(|index| {
                let recs = self.units.get(index);
                !is_started(recs) && open(*index, recs) > 0
            }),
        };
        for index in done {
            self.unsettled.remove(&index);
            self.open_since.remove(&index);
        }
        // Still unsettled (a lease may lapse, a dispute may want more), but
        // no longer open: its grace starts again when it is.
        for index in closed {
            self.open_since.remove(&index);
        }
        for index in opened {
            self.open_since.insert(index, now_ms);
        }
        if prune_all {
            self.unsettled_pruned = self.unsettled.len();
        }
        best.map(|(_, i)| i)
            .or(fresh)
            .or(fallback.map(|(_, i)| i))
            .and_then(|i| self.work_order(i, false))
    }

    /// Whether `me` is among the `k` workers, of those seen in the project
    /// and not yet involved in unit `index`, that rank first for it: the
    /// ones meant to join it (see [`JOIN_GRACE_MS`]). Every worker computes
    /// the same ranks, so they agree on who that is without talking.
    fn designated_joiner(
        &self,
        me: &SignerKey,
        index: u64,
        recs: Option<&UnitRecords>,
        k: usize,
        outcome: &Outcome,
    ) -> bool {
        let Some(seed) = self
            .specs
            .get(&index)
            .and_then(|(seq, _)| self.seeds.get(seq))
        else {
            return true;
        };
        let unit = UnitRef {
            project: self.id,
            index,
        };
        // Only workers that may take the unit: not proven faulty, and
        // veterans where only a veteran will do.
        let needs_veteran = outcome.needs_veteran(&unit);
        let eligible = |w: &SignerKey| {
            !outcome.faulty.contains_key(w)
                && (!needs_veteran || outcome.is_veteran(w, &self.policy))
        };
        let mine = assignment::rank(seed, &unit, me);
        let ahead = self
            .workers_seen
            .iter()
            .filter(|(w, last)| {
                *w != me
                    && self.is_active(**last)
                    && !recs.is_some_and(|r| r.involves(w))
                    && eligible(w)
            })
            .filter(|(w, _)| assignment::rank(seed, &unit, w) < mine)
            .take(k)
            .count();
        ahead < k
    }

    /// Every unit `me` knows of, in `me`'s rendezvous order (its own
    /// preference, which no worker can steer).
    fn rendezvous_order(&self, me: &SignerKey) -> Vec<u64> {
        let mut ranked: Vec<(u64, u64)> = self
            .specs
            .iter()
            .filter_map(|(i, (seq, _))| {
                let seed = self.seeds.get(seq)?;
                let unit = UnitRef {
                    project: self.id,
                    index: *i,
                };
                Some((assignment::rank(seed, &unit, me), *i))
            })
            .collect();
        ranked.sort_unstable();
        ranked.into_iter().map(|(_, i)| i).collect()
    }

    /// Whether `me` has claimed or committed to unit `index` (then
    /// `next_work` never offers it to `me` again).
    pub fn involves(&self, me: &SignerKey, index: u64) -> bool {
        self.units.get(&index).is_some_and(|r| r.involves(me))
    }

    /// Whether `me` has committed to unit `index`.
    pub fn committed_by(&self, me: &SignerKey, index: u64) -> bool {
        self.units
            .get(&index)
            .is_some_and(|r| r.commits.contains_key(me))
    }

    /// Whether `me` left unit `index` unfinished: committed to it but not
    /// revealed (always: the commit is public and only its reveal completes
    /// the result), or claimed it with a lease still running at `now_ms`
    /// and not committed. After a restart these are the units to re-run;
    /// execution is deterministic, so a re-run yields the same result and
    /// seal.
    pub fn is_unfinished_by(&self, me: &SignerKey, index: u64, now_ms: u64) -> bool {
        self.units.get(&index).is_some_and(|r| {
            !r.reveals.contains_key(me)
                && (r.commits.contains_key(me)
                    || r.claim_expiry.get(me).is_some_and(|exp| *exp > now_ms))
        })
    }

    /// The work order for unit `index` (None if no batch holds it).
    pub fn work_order(&self, index: u64, audit: bool) -> Option<WorkOrder> {
        let (_, spec) = self.specs.get(&index)?;
        let unit = UnitRef {
            project: self.id,
            index,
        };
        Some(WorkOrder {
            unit,
            input: spec.input.clone(),
            audit,
            seed: assignment::unit_seed(&unit),
        })
    }

    /// A signed claim on `order`'s unit for one lease, to apply and gossip.
    /// Audits are never claimed.
    pub fn claim(
        &self,
        keypair: &Keypair,
        order: &WorkOrder,
        now_ms: u64,
    ) -> Result<Option<Signed<Claim>>, SignError> {
        if order.audit {
            return Ok(None);
        }
        let slot = self.units.get(&order.unit.index).map_or(0, |r| r.workers()) as u16;
        let claim = Claim {
            unit: order.unit,
            slot,
            lease_until_ms: now_ms.saturating_add(self.manifest.policy.lease_ms),
        };
        Signed::sign(keypair, &claim).map(Some)
    }

    /// The commit for a computed output, and the reveal to hold back until
    /// [`ProjectState::may_reveal`] says so. `salt` must be secret and
    /// unpredictable to others (fresh randomness, or a keyed hash of the
    /// unit under a secret of the worker's, so a re-run after a restart
    /// seals the same way); this crate draws no randomness itself.
    pub fn commit(
        &self,
        keypair: &Keypair,
        unit: UnitRef,
        output: Data,
        fuel_used: u64,
        engine: &str,
        salt: Salt,
    ) -> Result<(Signed<Commit>, Signed<Reveal>), SignError> {
        let me = SignerKey::of(keypair)?;
        let result_hash = output.content_id();
        let commit = Commit {
            unit,
            seal: seal(&result_hash, &salt, &me, &unit),
        };
        let reveal = Reveal {
            unit,
            result_hash,
            output,
            fuel_used,
            engine: engine.to_owned(),
            salt,
        };
        sign_pair(keypair, &commit, &reveal)
    }

    /// Whether a commit on `unit` may now be opened: `quorum` distinct
    /// workers have committed, so every visible replica is bound.
    pub fn may_reveal(&self, unit: &UnitRef) -> bool {
        self.units
            .get(&unit.index)
            .is_some_and(|r| r.commits.len() >= usize::from(self.policy.quorum))
    }

    /// Every validated unit, with the output and fuel as revealed by the
    /// first agreeing worker.
    pub fn validated(&mut self) -> Vec<ValidatedUnit> {
        let id = self.id;
        let verdicts = self.outcome().verdicts.clone();
        let mut out = Vec::new();
        for (unit, v) in verdicts {
            if unit.project != id {
                continue;
            }
            if let Verdict::Validated {
                result_hash,
                workers,
            } = v
            {
                let reveal = self
                    .units
                    .get(&unit.index)
                    .and_then(|r| workers.iter().find_map(|w| r.opened.get(w)).cloned());
                if let Some(rv) = reveal {
                    out.push(ValidatedUnit {
                        index: unit.index,
                        result_hash,
                        output: rv.output,
                        fuel_used: rv.fuel_used,
                        workers,
                    });
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    //! `next_work` keeps indexes (a cursor past the started prefix of the
    //! order, the set of unsettled units with records) so that it does not
    //! walk the whole order on every call. These tests drive several
    //! workers through random claims, commits, reveals, lapsed leases,
    //! spot-check keys, an honest-then-defecting worker and hidden audits,
    //! and check after every step that it picks exactly what the plain
    //! definition picks: the first started unit with an open slot in the
    //! worker's order, else the first fresh one (any unit with commits on
    //! an audit draw).
    use super::*;
    use crate::messages::{BlobRef, Limits, Policy, SpotCheckKey};
    use proptest::prelude::*;

    const LEASE: u64 = 1_000;

    /// The definition, walking the whole order each time.
    fn reference(
        state: &mut ProjectState,
        me: &SignerKey,
        now_ms: u64,
        draw: u32,
        busy: &BTreeSet<u64>,
    ) -> Option<WorkOrder> {
        let order = state.rendezvous_order(me);
        let outcome = state.outcome().clone();
        let veteran = outcome.is_veteran(me, &state.policy);
        let audit = assignment::should_audit(draw, state.manifest.policy.audit_rate_ppm);
        let mut fresh = None;
        let mut not_designated = None;
        for index in order {
            let recs = state.units.get(&index);
            if busy.contains(&index) || recs.is_some_and(|r| r.involves(me)) {
                continue;
            }
            let unit = UnitRef {
                project: state.id,
                index,
            };
            let settled = matches!(outcome.verdicts.get(&unit),
                Some(Verdict::Validated { workers, .. }) if !workers.is_empty());
            if settled && !audit {
                continue;
            }
            let needs_veteran = matches!(
                outcome.verdicts.get(&unit),
                Some(Verdict::Pending {
                    need: Need::VeteranReplica,
                    ..
                })
            );
            if needs_veteran && !veteran {
                continue;
            }
            let slots = state.open_slots(index, &outcome, now_ms);
            let started = recs.is_some_and(|r| r.workers() > 0 || !r.reveals.is_empty());
            let auditable = audit && recs.is_some_and(|r| !r.commits.is_empty());
            // Outside audits a started unit is joined first by the `slots`
            // workers ranking first for it among those seen and not
            // involved, by anyone once it has been open for the grace.
            let joinable = || {
                let aged = state
                    .open_since
                    .get(&index)
                    .is_some_and(|t| now_ms < *t || now_ms - *t >= JOIN_GRACE_MS);
                let seed = state.seeds[&state.specs[&index].0];
                let mine = assignment::rank(&seed, &unit, me);
                let ahead = state
                    .workers_seen
                    .iter()
                    .filter(|(w, last)| {
                        *w != me && state.is_active(**last) && !recs.is_some_and(|r| r.involves(w))
                    })
                    .filter(|(w, _)| {
                        !outcome.faulty.contains_key(*w)
                            && (!needs_veteran || outcome.is_veteran(w, &state.policy))
                    })
                    .filter(|(w, _)| assignment::rank(&seed, &unit, w) < mine)
                    .count();
                aged || ahead < slots
            };
            if started && slots > 0 && !audit && !joinable() {
                if not_designated.is_none() {
                    not_designated = Some(index);
                }
                continue;
            }
            if slots > 0 || auditable {
                if started || auditable {
                    return state.work_order(index, slots == 0);
                }
                if fresh.is_none() {
                    fresh = Some(index);
                }
            }
        }
        fresh
            .or(not_designated)
            .and_then(|i| state.work_order(i, false))
    }

    struct Worker {
        key: Keypair,
        me: SignerKey,
        state: ProjectState,
        /// Claimed or audited here, not yet committed.
        running: BTreeSet<u64>,
        held: Vec<(UnitRef, Signed<Reveal>)>,
        commits: usize,
    }

    fn owner() -> Keypair {
        Keypair::ed25519_from_bytes([200; 32]).expect("key")
    }

    /// What an honest worker outputs for unit `index`.
    fn honest(index: u64) -> Data {
        Data::Inline(vec![index as u8, 1])
    }

    fn workers(n: u8, units: u64, audit_rate_ppm: u32, probation: u32) -> Vec<Worker> {
        let owner = owner();
        let manifest = ProjectManifest {
            name: "next_work".into(),
            app: BlobRef::of(b"app"),
            engine: "test".into(),
            limits: Limits {
                fuel_per_unit: 1_000,
                memory_bytes: 1 << 20,
                max_output_bytes: 64,
                wall_clock_ms: 1_000,
            },
            policy: Policy {
                quorum: 2,
                max_replicas: 4,
                lease_ms: LEASE,
                audit_rate_ppm,
            },
            created_at_ms: 0,
        };
        let m = Signed::sign(&owner, &manifest).expect("sign");
        let batch = Batch {
            project: m.id(),
            seq: 0,
            seed: [7; 32],
            units: (0..units)
                .map(|index| UnitSpec {
                    index,
                    input: Data::Inline(vec![index as u8]),
                })
                .collect(),
        };
        let b = Signed::sign(&owner, &batch).expect("sign");
        (0..n)
            .map(|i| {
                let key = Keypair::ed25519_from_bytes([i + 1; 32]).expect("key");
                let mut state = ProjectState::new(&m, probation).expect("manifest");
                state.add_batch(&b).expect("batch");
                Worker {
                    me: SignerKey::of(&key).expect("ed25519"),
                    key,
                    state,
                    running: BTreeSet::new(),
                    held: Vec::new(),
                    commits: 0,
                }
            })
            .collect()
    }

    fn broadcast(workers: &mut [Worker], record: &Gossip) {
        for w in workers.iter_mut() {
            let _ = w.state.apply(record);
        }
    }

    /// One step: (worker, what it does, milliseconds that pass, a draw).
    /// What: 0-3 = ask for work and claim it, 4-6 = finish one running
    /// unit, 7-9 = reveal what may be revealed, 10 = the owner reveals the
    /// known answers of the units the draw picks (spot checks).
    fn step() -> impl Strategy<Value = (usize, u8, u64, u32)> {
        (0usize..5, 0u8..11, 0u64..400, any::<u32>())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn next_work_picks_what_the_definition_picks(
            steps in proptest::collection::vec(step(), 1..600),
            audits in prop_oneof![Just(0u32), Just(300_000u32)],
            probation in prop_oneof![Just(0u32), Just(2u32)],
        ) {
            let mut ws = workers(5, 8, audits, probation);
            let project = ws[0].state.id;
            let mut now = 0;
            for (i, what, dt, draw) in steps {
                now += dt;
                match what {
                    0..=3 => {
                        let w = &mut ws[i];
                        let expect = reference(&mut w.state.clone(), &w.me, now, draw, &w.running);
                        let got = w.state.next_work(&w.me, now, draw, &w.running);
                        prop_assert_eq!(&got, &expect);
                        if let Some(order) = got {
                            w.running.insert(order.unit.index);
                            if let Some(claim) = w.state.claim(&w.key, &order, now).expect("claim") {
                                broadcast(&mut ws, &Gossip::Claim(claim));
                            }
                        }
                    }
                    4..=6 => {
                        let Some(index) = ws[i].running.pop_first() else { continue };
                        let unit = UnitRef { project: ws[i].state.id, index };
                        // Worker 4 is honest for its first two units, then
                        // defects: proven faulty (by a spot check or by
                        // enough honest replicas), it re-opens the units it
                        // helped validate.
                        ws[i].commits += 1;
                        let output = if i == 4 && ws[i].commits > 2 {
                            Data::Inline(vec![0xff])
                        } else {
                            honest(index)
                        };
                        let (commit, reveal) = ws[i]
                            .state
                            .commit(&ws[i].key, unit, output, 10, "test", [i as u8; 32])
                            .expect("commit");
                        ws[i].held.push((unit, reveal));
                        broadcast(&mut ws, &Gossip::Commit(commit));
                    }
                    10 => {
                        let answers = (0..8u64)
                            .filter(|index| draw & (1 << index) != 0)
                            .map(|index| (index, honest(index).content_id()))
                            .collect();
                        let key = SpotCheckKey { project, batch_seq: 0, answers };
                        let signed = Signed::sign(&owner(), &key).expect("sign");
                        broadcast(&mut ws, &Gossip::SpotCheckKey(signed));
                    }
                    _ => {
                        let held = std::mem::take(&mut ws[i].held);
                        for (unit, reveal) in held {
                            if ws[i].state.may_reveal(&unit) {
                                broadcast(&mut ws, &Gossip::Reveal(reveal));
                            } else {
                                ws[i].held.push((unit, reveal));
                            }
                        }
                    }
                }
            }
        }
    }

    /// A worker that went quiet stops holding the designated place on the
    /// units it ranks first for, once the others have done enough since.
    #[test]
    fn a_worker_gone_quiet_is_no_longer_designated() {
        let mut ws = workers(3, 40, 0, 0);
        let (a, b, d) = (0, 1, 2);
        let claim = |ws: &mut Vec<Worker>, w: usize, index: u64, at: u64| {
            let order = ws[w].state.work_order(index, false).expect("unit");
            let c = ws[w].state.claim(&ws[w].key, &order, at).expect("claim");
            broadcast(ws, &Gossip::Claim(c.expect("not an audit")));
        };
        // All three claim unit 39 (full from then on): d's only record.
        for w in [d, a, b] {
            claim(&mut ws, w, 39, 0);
        }
        // A unit `a` starts for which d, not b, is the designated joiner.
        let project = ws[0].state.id;
        let rank = |w: usize, index: u64| {
            assignment::rank(&[7; 32], &UnitRef { project, index }, &ws[w].me)
        };
        let y = (0..39u64)
            .find(|i| rank(d, *i) < rank(b, *i))
            .expect("d outranks b somewhere");
        claim(&mut ws, a, y, 0);
        let me_b = ws[b].me;
        let pick = |ws: &Vec<Worker>| {
            ws[b]
                .state
                .clone()
                .next_work(&me_b, 10, 0, &BTreeSet::new())
                .map(|o| o.unit.index)
        };
        // d active: b leaves y to it and opens a fresh unit.
        let first = pick(&ws).expect("work");
        assert_ne!(first, y);
        assert_ne!(first, 39);
        // a and b go on (later leases are new records); d stays quiet.
        for t in 1..=200u64 {
            claim(&mut ws, a, y, t);
            claim(&mut ws, b, 39, t);
        }
        assert_eq!(pick(&ws), Some(y), "b joins y once d counts as gone");
    }

    /// A unit validated with a worker later proven faulty re-opens; a
    /// worker whose `next_work` had already dropped it as settled must see
    /// it again, whether the proof arrives with the owner's known answer
    /// or with the faulty worker's own reveal after it.
    #[test]
    fn a_unit_reopened_by_a_proven_fault_is_offered_again() {
        for key_first in [false, true] {
            reopened_unit_is_offered_again(key_first);
        }
    }

    fn reopened_unit_is_offered_again(key_first: bool) {
        let mut ws = workers(4, 2, 0, 0);
        let (a, b, c, d) = (0, 1, 2, 3);
        let project = ws[0].state.id;
        let now = 10;
        // Worker `w` takes its next unit, claims it and commits its output
        // (wrong if asked); returns the unit.
        let take = |ws: &mut Vec<Worker>, w: usize, wrong: bool| -> u64 {
            let me = ws[w].me;
            let order = ws[w]
                .state
                .next_work(&me, now, 0, &BTreeSet::new())
                .expect("work");
            let claim = ws[w].state.claim(&ws[w].key, &order, now).expect("claim");
            broadcast(ws, &Gossip::Claim(claim.expect("not an audit")));
            let index = order.unit.index;
            let output = if wrong {
                Data::Inline(vec![0xff])
            } else {
                honest(index)
            };
            let (commit, reveal) = ws[w]
                .state
                .commit(&ws[w].key, order.unit, output, 10, "test", [w as u8; 32])
                .expect("commit");
            broadcast(ws, &Gossip::Commit(commit));
            ws[w].held.push((order.unit, reveal));
            index
        };
        let reveal = |ws: &mut Vec<Worker>, w: usize| {
            for (_, r) in std::mem::take(&mut ws[w].held) {
                broadcast(ws, &Gossip::Reveal(r));
            }
        };
        let first = take(&mut ws, a, false);
        assert_eq!(take(&mut ws, d, false), first, "d joins the started unit");
        reveal(&mut ws, a);
        reveal(&mut ws, d);
        let second = 1 - first;
        // b looks for work while `first` is settled, which drops it from
        // b's candidates; b does not take what it is offered.
        let me_b = ws[b].me;
        let offered = ws[b].state.next_work(&me_b, now, 0, &BTreeSet::new());
        assert_eq!(offered.map(|o| o.unit.index), Some(second));
        assert_eq!(take(&mut ws, c, false), second);
        assert_eq!(take(&mut ws, d, true), second, "d defects");
        reveal(&mut ws, c);
        if !key_first {
            reveal(&mut ws, d);
        }
        // The owner's known answer for `second` proves d faulty (at once,
        // or when d's wrong reveal follows), so `first` rests on a alone.
        let key = SpotCheckKey {
            project,
            batch_seq: 0,
            answers: vec![(second, honest(second).content_id())],
        };
        let key = Signed::sign(&owner(), &key).expect("sign");
        broadcast(&mut ws, &Gossip::SpotCheckKey(key));
        if key_first {
            // b looks again before d's reveal: nothing is open yet.
            assert_eq!(ws[b].state.next_work(&me_b, now, 0, &BTreeSet::new()), None);
            reveal(&mut ws, d);
        }
        assert_eq!(ws[b].state.outcome().faulty.len(), 1, "d proven faulty");
        let busy = BTreeSet::new();
        // Re-opened, `first` goes to b: as its designated joiner, or, with
        // no fresh unit left to open instead, as the fallback; and after
        // the grace in any case.
        let expect = reference(&mut ws[b].state.clone(), &me_b, now, 0, &busy);
        assert_eq!(expect.as_ref().map(|o| o.unit.index), Some(first));
        assert_eq!(ws[b].state.next_work(&me_b, now, 0, &busy), expect);
        let later = now + JOIN_GRACE_MS;
        let expect = reference(&mut ws[b].state.clone(), &me_b, later, 0, &busy);
        assert_eq!(expect.as_ref().map(|o| o.unit.index), Some(first));
        assert_eq!(ws[b].state.next_work(&me_b, later, 0, &busy), expect);
    }
}
