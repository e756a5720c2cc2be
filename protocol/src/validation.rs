//! `validate(evidence, policy) -> verdicts`: the pure function every peer
//! runs to decide which results to believe.
//!
//! Nothing here trusts a node's say-so. Evidence is a set of verified records
//! (worker-signed commit+reveal pairs, and the owner's spot-check answers as
//! the trust anchor); the verdict follows from them alone, deterministically,
//! so a researcher re-running it on the same evidence gets the same answer.
//!
//! Rules (reasoning in docs/VALIDATION.md):
//! - Execution is deterministic, so two different results for one unit prove
//!   that someone is wrong. A worker is *proven faulty* when it equivocates
//!   (reveals two results for one unit), contradicts a spot-check answer, or
//!   is outvoted when a dispute settles.
//! - A faulty worker's every result is discarded and every unit it helped
//!   validate is re-evaluated (backtracking). The rules are re-applied until
//!   no new fault appears.
//! - *Standing* is the number of a worker's results corroborated by another
//!   non-faulty worker (or a spot-check answer). A worker with at least
//!   `probation` corroborated results is a *veteran*.
//! - A unit with one result is validated when at least `quorum` non-faulty
//!   workers revealed it and at least one of them is a veteran: new
//!   identities are on probation until veterans have confirmed their work.
//! - A unit with several results is disputed until one result has at least
//!   one veteran and leads every other by `dispute_margin` workers, or has
//!   two veterans while no other has any; the minority is then proven faulty.

use std::collections::BTreeMap;

use crate::content_id::ContentId;
use crate::messages::{Commit, Reveal, SpotCheckKey, UnitRef, seal};
use crate::signed::{Signed, SignerKey, VerifyError};

/// The knobs of validation, from the project's policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidationPolicy {
    /// Matching results needed (at least 1).
    pub quorum: u16,
    /// Corroborated results a worker needs before its word counts as a
    /// veteran's. 0 makes everyone a veteran (plain quorum voting).
    pub probation: u32,
    /// In a dispute, how many more agreeing workers the winning result needs
    /// than the runner-up. Colluders win a dispute against an honest worker
    /// with probability about f^m / (f^m + (1-f)^m): 6% at m = 2, f = 0.2,
    /// 1.5% at m = 3, and the loser is blacklisted, so it is kept at 3.
    pub dispute_margin: u16,
}

impl ValidationPolicy {
    /// Plain quorum voting with the default dispute margin.
    pub const fn quorum(quorum: u16) -> Self {
        Self {
            quorum,
            probation: 0,
            dispute_margin: 3,
        }
    }
}

impl Default for ValidationPolicy {
    fn default() -> Self {
        Self::quorum(2)
    }
}

/// One worker's verified result for one unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RevealEvidence {
    /// The worker that revealed it.
    pub worker: SignerKey,
    /// The unit computed.
    pub unit: UnitRef,
    /// blake3 of the output.
    pub result_hash: ContentId,
    /// Fuel the run used, as revealed.
    pub fuel_used: u64,
}

/// Why signed records could not be taken as evidence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvidenceError {
    /// A record's signature does not verify.
    #[error("invalid signature on a {record}: {source}")]
    Signature {
        /// Which record ("commit", "reveal", ...).
        record: &'static str,
        /// Why it does not verify.
        source: VerifyError,
    },
    /// The commit and the reveal name different signers.
    #[error("commit and reveal are signed by different workers")]
    SignerMismatch,
    /// The commit and the reveal name different units.
    #[error("commit and reveal are for different units")]
    UnitMismatch,
    /// The reveal's result does not match the commit's seal.
    #[error("the reveal does not open the commit's seal: the result was changed after committing")]
    SealMismatch,
    /// A spot-check key signed by someone other than the owner.
    #[error("the spot-check key is not signed by the project owner")]
    NotOwner,
}

/// Why a worker is proven faulty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Revealed two different results for one unit.
    Equivocated(UnitRef),
    /// Contradicted the owner's known answer to a spot check.
    FailedSpotCheck(UnitRef),
    /// Was on the losing side when a dispute settled.
    Outvoted(UnitRef),
}

/// The verified records validation works on.
#[derive(Debug, Clone, Default)]
pub struct Evidence {
    reveals: BTreeMap<UnitRef, BTreeMap<SignerKey, RevealEvidence>>,
    equivocations: BTreeMap<SignerKey, UnitRef>,
    known: BTreeMap<UnitRef, ContentId>,
    prior_standing: BTreeMap<SignerKey, u32>,
}

impl Evidence {
    /// No evidence yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a result that was already verified (or, in the simulator, is
    /// true by construction). A second, different result from the same
    /// worker for the same unit is itself proof of a fault.
    pub fn add_reveal(&mut self, r: RevealEvidence) {
        let per_unit = self.reveals.entry(r.unit).or_default();
        match per_unit.get(&r.worker) {
            Some(prev) if prev.result_hash != r.result_hash => {
                self.equivocations.entry(r.worker).or_insert(r.unit);
            }
            Some(_) => {}
            None => {
                per_unit.insert(r.worker, r);
            }
        }
    }

    /// Verifies a commit/reveal pair and adds it.
    pub fn add_signed(
        &mut self,
        commit: &Signed<Commit>,
        reveal: &Signed<Reveal>,
    ) -> Result<(), EvidenceError> {
        let c = commit.verify().map_err(|source| EvidenceError::Signature {
            record: "commit",
            source,
        })?;
        let r = reveal.verify().map_err(|source| EvidenceError::Signature {
            record: "reveal",
            source,
        })?;
        if commit.signer() != reveal.signer() {
            return Err(EvidenceError::SignerMismatch);
        }
        if c.unit != r.unit {
            return Err(EvidenceError::UnitMismatch);
        }
        let worker = reveal.signer();
        if seal(&r.result_hash, &r.salt, &worker, &r.unit) != c.seal {
            return Err(EvidenceError::SealMismatch);
        }
        self.add_reveal(RevealEvidence {
            worker,
            unit: r.unit,
            result_hash: r.result_hash,
            fuel_used: r.fuel_used,
        });
        Ok(())
    }

    /// Adds the owner's answers to planted spot checks, after checking they
    /// are signed by `owner` (the trust anchor).
    pub fn add_spot_check_key(
        &mut self,
        key: &Signed<SpotCheckKey>,
        owner: &SignerKey,
    ) -> Result<(), EvidenceError> {
        if key.signer() != *owner {
            return Err(EvidenceError::NotOwner);
        }
        let k = key.verify().map_err(|source| EvidenceError::Signature {
            record: "spot-check key",
            source,
        })?;
        for (index, hash) in k.answers {
            self.known.insert(
                UnitRef {
                    project: k.project,
                    index,
                },
                hash,
            );
        }
        Ok(())
    }

    /// Adds a known answer directly (trusted input, e.g. the simulator's
    /// owner or a researcher's own re-execution).
    pub fn add_known_answer(&mut self, unit: UnitRef, result_hash: ContentId) {
        self.known.insert(unit, result_hash);
    }

    /// Credits `worker` with standing earned on earlier evidence that the
    /// caller validated itself (a persistent network carries credibility
    /// across projects). Never taken from peers' say-so.
    pub fn add_prior_standing(&mut self, worker: SignerKey, corroborated: u32) {
        *self.prior_standing.entry(worker).or_default() += corroborated;
    }

    /// Every unit with at least one result.
    pub fn units(&self) -> impl Iterator<Item = &UnitRef> {
        self.reveals.keys()
    }

    /// The results revealed for `unit`.
    pub fn reveals_for(&self, unit: &UnitRef) -> impl Iterator<Item = &RevealEvidence> {
        self.reveals.get(unit).into_iter().flat_map(|m| m.values())
    }

    /// Whether `unit` is a planted spot check with a known answer.
    pub fn known_answer(&self, unit: &UnitRef) -> Option<&ContentId> {
        self.known.get(unit)
    }

    /// Total number of results held.
    pub fn len(&self) -> usize {
        self.reveals.values().map(|m| m.len()).sum()
    }

    /// Whether no result is held.
    pub fn is_empty(&self) -> bool {
        self.reveals.is_empty()
    }
}

/// What a unit still needs, when it is not validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Fewer than `quorum` agreeing non-faulty results.
    MoreReplicas,
    /// Enough agreeing results, but none from a veteran: probation.
    VeteranReplica,
    /// Conflicting results: more replicas until one side clearly wins.
    DisputeReplicas,
}

/// The verdict on one unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Enough agreeing results: the unit's result is settled.
    Validated {
        /// blake3 of the validated output.
        result_hash: ContentId,
        /// The agreeing non-faulty workers, in key order.
        workers: Vec<SignerKey>,
    },
    /// Not validated yet.
    Pending {
        /// What it still needs.
        need: Need,
        /// Non-faulty results held now.
        have: usize,
    },
}

impl Verdict {
    /// Whether this is [`Verdict::Validated`].
    pub fn is_validated(&self) -> bool {
        matches!(self, Verdict::Validated { .. })
    }
}

/// The result of [`validate`].
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// The verdict on every unit with evidence.
    pub verdicts: BTreeMap<UnitRef, Verdict>,
    /// Workers proven faulty, each with a fault that proves it.
    pub faulty: BTreeMap<SignerKey, Fault>,
    /// Corroborated results per non-faulty worker.
    pub standing: BTreeMap<SignerKey, u32>,
}

impl Outcome {
    /// Whether `unit` is validated with an output to collect (a spot check
    /// validated by its known answer alone, with no agreeing worker, still
    /// wants a replica).
    pub fn is_settled(&self, unit: &UnitRef) -> bool {
        matches!(
            self.verdicts.get(unit),
            Some(Verdict::Validated { workers, .. }) if !workers.is_empty()
        )
    }

    /// Whether `unit` waits for a veteran's replica (probation): only a
    /// veteran may take it.
    pub fn needs_veteran(&self, unit: &UnitRef) -> bool {
        matches!(
            self.verdicts.get(unit),
            Some(Verdict::Pending {
                need: Need::VeteranReplica,
                ..
            })
        )
    }

    /// Whether `worker` counts as a veteran under `policy`.
    pub fn is_veteran(&self, worker: &SignerKey, policy: &ValidationPolicy) -> bool {
        !self.faulty.contains_key(worker)
            && self.standing.get(worker).copied().unwrap_or(0) >= policy.probation
    }

    /// Validated units.
    pub fn validated(&self) -> impl Iterator<Item = (&UnitRef, &ContentId)> {
        self.verdicts.iter().filter_map(|(u, v)| match v {
            Verdict::Validated { result_hash, .. } => Some((u, result_hash)),
            Verdict::Pending { .. } => None,
        })
    }
}

/// One unit's results with workers interned as indices, so the fixpoint
/// below compares integers instead of 32-byte keys.
struct InternedUnit {
    unit: UnitRef,
    known: Option<ContentId>,
    /// (worker index, result), in worker-key order.
    reveals: Vec<(usize, ContentId)>,
}

/// Groups a unit's non-faulty results by result, in result order; workers
/// in each group keep key order.
fn groups(u: &InternedUnit, faulty: &[Option<Fault>]) -> Vec<(ContentId, Vec<usize>)> {
    let mut g: Vec<(ContentId, Vec<usize>)> = Vec::new();
    for (w, r) in &u.reveals {
        if faulty[*w].is_some() {
            continue;
        }
        match g.iter_mut().find(|(h, _)| h == r) {
            Some((_, ws)) => ws.push(*w),
            None => g.push((*r, vec![*w])),
        }
    }
    g.sort_unstable_by_key(|(h, _)| *h);
    g
}

/// Decides every unit in `evidence`. Pure and deterministic.
pub fn validate(evidence: &Evidence, policy: &ValidationPolicy) -> Outcome {
    let quorum = usize::from(policy.quorum.max(1));
    let margin = usize::from(policy.dispute_margin.max(1));

    // Intern every worker key once (key order, so indices are stable).
    let mut all: std::collections::BTreeSet<SignerKey> =
        evidence.prior_standing.keys().copied().collect();
    all.extend(evidence.equivocations.keys().copied());
    for per_unit in evidence.reveals.values() {
        all.extend(per_unit.keys().copied());
    }
    let keys: Vec<SignerKey> = all.into_iter().collect();
    let index_of = |k: &SignerKey| keys.binary_search(k).ok();
    let units: Vec<InternedUnit> = evidence
        .reveals
        .iter()
        .map(|(unit, per_unit)| InternedUnit {
            unit: *unit,
            known: evidence.known.get(unit).copied(),
            reveals: per_unit
                .iter()
                .filter_map(|(k, r)| index_of(k).map(|i| (i, r.result_hash)))
                .collect(),
        })
        .collect();
    let mut prior = vec![0u32; keys.len()];
    for (k, n) in &evidence.prior_standing {
        if let Some(i) = index_of(k) {
            prior[i] = *n;
        }
    }

    let mut faulty: Vec<Option<Fault>> = vec![None; keys.len()];
    for (k, u) in &evidence.equivocations {
        if let Some(i) = index_of(k) {
            faulty[i] = Some(Fault::Equivocated(*u));
        }
    }
    // Spot checks do not depend on anything else: apply them once.
    for u in &units {
        if let Some(known) = u.known {
            for (w, r) in &u.reveals {
                if *r != known && faulty[*w].is_none() {
                    faulty[*w] = Some(Fault::FailedSpotCheck(u.unit));
                }
            }
        }
    }

    // Fixpoint: each new fault removes results, which changes standing and
    // verdicts, which may settle disputes and prove more faults.
    loop {
        let standing = standing(&units, &prior, &faulty);
        let veteran = |w: usize| standing[w] >= policy.probation;
        let to_keys = |ws: &[usize]| ws.iter().map(|w| keys[*w]).collect::<Vec<_>>();
        let mut verdicts = BTreeMap::new();
        let mut new_faults: Vec<(usize, Fault)> = Vec::new();

        for u in &units {
            let verdict = judge(
                u,
                &faulty,
                &veteran,
                quorum,
                margin,
                &to_keys,
                &mut new_faults,
            );
            verdicts.insert(u.unit, verdict);
        }

        let mut changed = false;
        for (w, f) in new_faults {
            if faulty[w].is_none() {
                faulty[w] = Some(f);
                changed = true;
            }
        }
        if !changed {
            let faulty_map = keys
                .iter()
                .zip(&faulty)
                .filter_map(|(k, f)| f.map(|f| (*k, f)))
                .collect();
            let standing_map = keys
                .iter()
                .zip(&standing)
                .zip(&faulty)
                .filter(|((_, n), f)| f.is_none() && **n > 0)
                .map(|((k, n), _)| (*k, *n))
                .collect();
            return Outcome {
                verdicts,
                faulty: faulty_map,
                standing: standing_map,
            };
        }
    }
}

/// One unit's verdict under the current faults; a dispute that settles
/// adds its losers to `new_faults`.
fn judge(
    u: &InternedUnit,
    faulty: &[Option<Fault>],
    veteran: &impl Fn(usize) -> bool,
    quorum: usize,
    margin: usize,
    to_keys: &impl Fn(&[usize]) -> Vec<SignerKey>,
    new_faults: &mut Vec<(usize, Fault)>,
) -> Verdict {
    let g = groups(u, faulty);
    let have: usize = g.iter().map(|(_, ws)| ws.len()).sum();
    if let Some(known) = u.known {
        // A spot check: its answer is known; the agreeing workers
        // are recorded (their standing already counts it).
        Verdict::Validated {
            result_hash: known,
            workers: g
                .iter()
                .find(|(h, _)| *h == known)
                .map(|(_, ws)| to_keys(ws))
                .unwrap_or_default(),
        }
    } else if g.len() <= 1 {
        match g.first() {
            None => Verdict::Pending {
                need: Need::MoreReplicas,
                have,
            },
            Some((_, ws)) if ws.len() < quorum => Verdict::Pending {
                need: Need::MoreReplicas,
                have,
            },
            Some((_, ws)) if !ws.iter().any(|w| veteran(*w)) => Verdict::Pending {
                need: Need::VeteranReplica,
                have,
            },
            Some((hash, ws)) => Verdict::Validated {
                result_hash: *hash,
                workers: to_keys(ws),
            },
        }
    } else {
        match settle_dispute(&g, veteran, quorum, margin) {
            Some(winner) => {
                for (hash, ws) in &g {
                    if *hash != winner {
                        new_faults.extend(ws.iter().map(|w| (*w, Fault::Outvoted(u.unit))));
                    }
                }
                Verdict::Validated {
                    result_hash: winner,
                    workers: g
                        .iter()
                        .find(|(h, _)| *h == winner)
                        .map(|(_, ws)| to_keys(ws))
                        .unwrap_or_default(),
                }
            }
            None => Verdict::Pending {
                need: Need::DisputeReplicas,
                have,
            },
        }
    }
}

/// The winning result of a dispute, if one side clearly wins.
fn settle_dispute(
    g: &[(ContentId, Vec<usize>)],
    veteran: &impl Fn(usize) -> bool,
    quorum: usize,
    margin: usize,
) -> Option<ContentId> {
    let vets = |ws: &Vec<usize>| ws.iter().filter(|w| veteran(**w)).count();
    // Rank by (veterans, members); the leader must beat the runner-up.
    let mut ranked: Vec<(usize, usize, ContentId)> =
        g.iter().map(|(h, ws)| (vets(ws), ws.len(), *h)).collect();
    ranked.sort_unstable_by_key(|r| std::cmp::Reverse((r.0, r.1)));
    let (lead_vets, lead_n, lead) = *ranked.first()?;
    let (second_vets, second_n, _) = *ranked.get(1)?;
    let by_members = lead_vets >= 1 && lead_n >= second_n + margin && lead_n >= quorum;
    let by_veterans = lead_vets >= 2 && second_vets == 0 && lead_n >= quorum;
    (by_members || by_veterans).then_some(lead)
}

/// Corroborated results per worker index (faulty workers count 0): prior
/// standing, plus units where another non-faulty worker revealed the same
/// result and no non-faulty worker revealed a different one, plus spot
/// checks answered correctly.
fn standing(units: &[InternedUnit], prior: &[u32], faulty: &[Option<Fault>]) -> Vec<u32> {
    let mut s = prior.to_vec();
    for u in units {
        for w in credited(u, faulty) {
            s[w] += 1;
        }
    }
    for (n, f) in s.iter_mut().zip(faulty) {
        if f.is_some() {
            *n = 0;
        }
    }
    s
}

/// The workers one unit credits with a corroborated result: those agreeing
/// with its known answer, or every worker when all non-faulty results agree
/// and there are at least two.
fn credited(u: &InternedUnit, faulty: &[Option<Fault>]) -> Vec<usize> {
    let g = groups(u, faulty);
    match (u.known, g.as_slice()) {
        (Some(known), _) => g
            .iter()
            .find(|(h, _)| *h == known)
            .map_or_else(Vec::new, |(_, ws)| ws.clone()),
        (None, [(_, ws)]) if ws.len() >= 2 => ws.clone(),
        _ => Vec::new(),
    }
}

/// `unit` alone, interned against its own workers (in key order), with
/// their faults from `outcome`.
fn intern_one(
    evidence: &Evidence,
    outcome: &Outcome,
    unit: &UnitRef,
) -> (InternedUnit, Vec<SignerKey>, Vec<Option<Fault>>) {
    let per_unit = evidence.reveals.get(unit);
    let keys: Vec<SignerKey> = per_unit.map_or_else(Vec::new, |m| m.keys().copied().collect());
    let reveals = per_unit.map_or_else(Vec::new, |m| {
        m.values()
            .enumerate()
            .map(|(i, r)| (i, r.result_hash))
            .collect()
    });
    let faulty = keys
        .iter()
        .map(|k| outcome.faulty.get(k).copied())
        .collect();
    let u = InternedUnit {
        unit: *unit,
        known: evidence.known.get(unit).copied(),
        reveals,
    };
    (u, keys, faulty)
}

/// The workers `unit` credits with standing under `outcome`'s faults: take
/// it before adding a reveal for the unit, for [`revalidate_unit`].
pub fn unit_credit(evidence: &Evidence, outcome: &Outcome, unit: &UnitRef) -> Vec<SignerKey> {
    let (u, keys, faulty) = intern_one(evidence, outcome, unit);
    credited(&u, &faulty).into_iter().map(|w| keys[w]).collect()
}

/// Updates `outcome` in place after one more reveal for `unit`, deciding
/// that unit alone, when that is all that can change; `credit_before` is
/// [`unit_credit`] from before the reveal was added. Returns false, leaving
/// `outcome` as it was, when a full [`validate`] is needed: with probation
/// (standing then decides other units' verdicts), or when the new evidence
/// proves a new fault (an equivocation, a contradicted spot check, a
/// dispute that settles), which backtracks through other units.
///
/// Why that is exact: the fixpoint's faults only grow, round by round.
/// When none of this unit's workers was outvoted anywhere (the only faults
/// found in later rounds) and its new verdict proves nobody faulty, the unit
/// looked the same in every round and added no fault in any, so every
/// round, and the final outcome, is what `validate()` on the whole evidence
/// gives (a property test checks it). It costs one unit's work instead of
/// every unit's.
pub fn revalidate_unit(
    evidence: &Evidence,
    policy: &ValidationPolicy,
    outcome: &mut Outcome,
    unit: &UnitRef,
    credit_before: &[SignerKey],
) -> bool {
    if policy.probation > 0
        || evidence
            .equivocations
            .iter()
            .any(|(k, u)| outcome.faulty.get(k) != Some(&Fault::Equivocated(*u)))
    {
        return false;
    }
    let (u, keys, faulty) = intern_one(evidence, outcome, unit);
    // A worker outvoted elsewhere still voted on this unit in the early
    // rounds of the fixpoint, before its fault was found, and may have
    // settled a dispute here then; so may a contradicted answer change
    // which spot check a worker is recorded as failing. Only the full
    // fixpoint reproduces those.
    if u.reveals
        .iter()
        .any(|(w, _)| matches!(faulty[*w], Some(Fault::Outvoted(_))))
        || u.known
            .is_some_and(|known| u.reveals.iter().any(|(_, r)| *r != known))
    {
        return false;
    }
    let quorum = usize::from(policy.quorum.max(1));
    let margin = usize::from(policy.dispute_margin.max(1));
    let to_keys = |ws: &[usize]| ws.iter().map(|w| keys[*w]).collect::<Vec<_>>();
    let mut new_faults = Vec::new();
    // Without probation everyone is a veteran (standing >= 0).
    let verdict = judge(
        &u,
        &faulty,
        &|_| true,
        quorum,
        margin,
        &to_keys,
        &mut new_faults,
    );
    if !new_faults.is_empty() {
        return false;
    }
    if u.reveals.is_empty() {
        outcome.verdicts.remove(unit);
    } else {
        outcome.verdicts.insert(*unit, verdict);
    }
    for w in credit_before {
        if let Some(n) = outcome.standing.get_mut(w) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                outcome.standing.remove(w);
            }
        }
    }
    for w in credited(&u, &faulty) {
        *outcome.standing.entry(keys[w]).or_default() += 1;
    }
    true
}
