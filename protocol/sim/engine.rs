//! A deterministic, seeded simulator of a Formic swarm with saboteurs.
//!
//! It drives the real `formic_protocol::validation::validate` (the same code
//! a node and a researcher run) with thousands of worker identities and tens
//! of thousands of units, no sockets and no clocks, and reports how many
//! wrong results were accepted (ε) and how much compute was spent per useful
//! unit (R). Included by `examples/simulate.rs` (the report) and
//! `tests/simulator.rs` (a small run in CI).

use std::collections::{BTreeMap, BTreeSet};

use formic_protocol::messages::UnitRef;
use formic_protocol::validation::{
    Evidence, Need, RevealEvidence, ValidationPolicy, Verdict, validate,
};
use formic_protocol::{ContentId, SignerKey};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How the adversary's identities behave. All wrong answers are colluding:
/// every adversary identity on a unit returns the same wrong answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Strategy {
    /// Every result wrong.
    AlwaysWrong,
    /// Each result wrong with probability 0.1, blindly.
    SometimesWrong,
    /// Each identity cheats once, only on a unit whose visible replicas are
    /// all its own and need no further replica, so nothing links its wrong
    /// answers.
    CheatOnce,
    /// Cheats on every unit that looks safe that way.
    CheatWhenSafe,
    /// Honest for its first 100 results, then cheats whenever it looks safe.
    HonestThenDefect,
    /// Never computes: copies a revealed result if one exists, else guesses.
    Copier,
}

impl Strategy {
    pub(crate) const ALL: [Strategy; 6] = [
        Strategy::AlwaysWrong,
        Strategy::SometimesWrong,
        Strategy::CheatOnce,
        Strategy::CheatWhenSafe,
        Strategy::HonestThenDefect,
        Strategy::Copier,
    ];

    pub(crate) fn name(&self) -> &'static str {
        match self {
            Strategy::AlwaysWrong => "always wrong",
            Strategy::SometimesWrong => "sometimes wrong (10%)",
            Strategy::CheatOnce => "cheat once per identity",
            Strategy::CheatWhenSafe => "cheat whenever safe",
            Strategy::HonestThenDefect => "honest then defect",
            Strategy::Copier => "copier",
        }
    }
}

/// A replication and validation scheme.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scheme {
    pub name: &'static str,
    /// Visible replicas per unit (= validation quorum).
    pub quorum: u16,
    /// Probability that a unit gets a hidden audit replica.
    pub audit_rate: f64,
    /// Corroborated results before an identity's word counts alone.
    pub probation: u32,
    /// Whether the adversary's identities start as veterans (it has already
    /// earned standing) or must earn it during the run.
    pub adversary_starts_veteran: bool,
    /// Whether the adversary replaces each identity that is caught with a
    /// fresh one (free Sybils). Off reproduces the reference Monte-Carlo of
    /// docs/VALIDATION.md, where the adversary has a fixed set of identities.
    pub sybil_respawn: bool,
}

/// One simulation run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Params {
    pub workers: usize,
    pub adversary_fraction: f64,
    pub units: u64,
    pub batch_size: u64,
    pub scheme: Scheme,
    pub strategy: Strategy,
    pub seed: u64,
    pub max_replicas: usize,
}

/// What a run measured.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Report {
    pub units: u64,
    pub validated: u64,
    pub wrong_accepted: u64,
    pub executions: u64,
    pub adversary_identities_caught: u64,
    pub honest_identities_blacklisted: u64,
}

impl Report {
    /// Wrong results accepted per unit.
    pub(crate) fn epsilon(&self) -> f64 {
        self.wrong_accepted as f64 / self.units as f64
    }

    /// Executions per useful (validated) unit.
    pub(crate) fn overhead(&self) -> f64 {
        self.executions as f64 / self.validated.max(1) as f64
    }
}

struct Worker {
    key: SignerKey,
    adversary: bool,
    cheated: bool,
    results: u32,
    retired: bool,
}

/// A replica of a unit held by a worker. Whether it was visible to the
/// adversary is decided when the unit starts (see `start_unit`).
struct Assignment {
    worker: usize,
}

fn key(seed: u64, n: u64) -> SignerKey {
    let mut h = blake3::Hasher::new();
    h.update(b"sim-worker");
    h.update(&seed.to_le_bytes());
    h.update(&n.to_le_bytes());
    SignerKey::from_bytes(*h.finalize().as_bytes())
}

fn truth(u: &UnitRef) -> ContentId {
    ContentId::of(format!("truth-{}", u.index).as_bytes())
}

fn wrong(u: &UnitRef) -> ContentId {
    ContentId::of(format!("wrong-{}", u.index).as_bytes())
}

struct Sim {
    p: Params,
    policy: ValidationPolicy,
    rng: StdRng,
    workers: Vec<Worker>,
    next_key: u64,
    evidence: Evidence,
    assigned: BTreeMap<UnitRef, Vec<Assignment>>,
    /// Units the adversary decided to cheat on.
    cheat_units: BTreeSet<UnitRef>,
    report: Report,
}

impl Sim {
    fn new(p: Params) -> Self {
        let policy = ValidationPolicy {
            quorum: p.scheme.quorum,
            probation: p.scheme.probation,
            dispute_margin: 3,
        };
        let mut sim = Sim {
            p,
            policy,
            rng: StdRng::seed_from_u64(p.seed),
            workers: Vec::new(),
            next_key: 0,
            evidence: Evidence::new(),
            assigned: BTreeMap::new(),
            cheat_units: BTreeSet::new(),
            report: Report {
                units: p.units,
                ..Report::default()
            },
        };
        let adversaries = (p.workers as f64 * p.adversary_fraction).round() as usize;
        for i in 0..p.workers {
            let adversary = i < adversaries;
            // In a persistent network honest workers are veterans already.
            let veteran = !adversary || p.scheme.adversary_starts_veteran;
            sim.spawn(adversary, veteran);
        }
        sim
    }

    fn spawn(&mut self, adversary: bool, veteran: bool) {
        let k = key(self.p.seed, self.next_key);
        self.next_key += 1;
        if veteran && self.policy.probation > 0 {
            self.evidence.add_prior_standing(k, self.policy.probation);
        }
        self.workers.push(Worker {
            key: k,
            adversary,
            cheated: false,
            results: 0,
            retired: false,
        });
    }

    fn active(&self) -> Vec<usize> {
        (0..self.workers.len())
            .filter(|i| !self.workers[*i].retired)
            .collect()
    }

    /// A random active worker not already on `unit`, from `pool`.
    fn pick(&mut self, pool: &[usize], unit: &UnitRef) -> Option<usize> {
        let taken: BTreeSet<usize> = self
            .assigned
            .get(unit)
            .map(|a| a.iter().map(|x| x.worker).collect())
            .unwrap_or_default();
        if taken.len() >= pool.len() {
            return None;
        }
        for _ in 0..64 {
            let w = pool[self.rng.gen_range(0..pool.len())];
            if !taken.contains(&w) {
                return Some(w);
            }
        }
        pool.iter().copied().find(|w| !taken.contains(w))
    }

    /// Executes (or fakes) `worker`'s replica of `unit` and records the
    /// reveal. Calculated cheating is decided per unit, for the adversary's
    /// whole group, in `start_unit`; here only blind strategies decide.
    fn execute(&mut self, unit: UnitRef, worker: usize) {
        self.report.executions += 1;
        let result = if !self.workers[worker].adversary {
            truth(&unit)
        } else if self.cheat_units.contains(&unit) {
            // Colluding: every adversary identity on the unit echoes the
            // group's wrong answer, audits and extra replicas included.
            wrong(&unit)
        } else {
            match self.p.strategy {
                Strategy::AlwaysWrong => self.cheat_on(unit),
                Strategy::SometimesWrong if self.rng.gen_bool(0.1) => self.cheat_on(unit),
                Strategy::Copier => {
                    // Copies a revealed result when there is one; otherwise
                    // guesses, and guesses do not collude.
                    match self.evidence.reveals_for(&unit).next() {
                        Some(r) => r.result_hash,
                        None => ContentId::of(format!("guess-{}-{worker}", unit.index).as_bytes()),
                    }
                }
                _ => truth(&unit),
            }
        };
        self.record(unit, worker, result);
    }

    fn cheat_on(&mut self, unit: UnitRef) -> ContentId {
        self.cheat_units.insert(unit);
        wrong(&unit)
    }

    fn record(&mut self, unit: UnitRef, worker: usize, result_hash: ContentId) {
        self.workers[worker].results += 1;
        let k = self.workers[worker].key;
        self.evidence.add_reveal(RevealEvidence {
            worker: k,
            unit,
            result_hash,
            fuel_used: 1,
        });
    }

    /// First round of a unit: `quorum` visible replicas plus, with
    /// probability `audit_rate`, one hidden audit.
    fn start_unit(&mut self, unit: UnitRef, veterans: &BTreeSet<SignerKey>) {
        let pool = self.active();
        let mut visible = Vec::new();
        for _ in 0..self.p.scheme.quorum {
            if let Some(w) = self.pick(&pool, &unit) {
                self.assigned
                    .entry(unit)
                    .or_default()
                    .push(Assignment { worker: w });
                visible.push(w);
            }
        }
        let audited = self.rng.gen_bool(self.p.scheme.audit_rate.clamp(0.0, 1.0));
        let auditor = if audited {
            self.pick(&pool, &unit)
        } else {
            None
        };
        if let Some(a) = auditor {
            self.assigned
                .entry(unit)
                .or_default()
                .push(Assignment { worker: a });
        }
        // The adversary sees the visible replicas (it knows which identities
        // are its own) and whether probation will add a veteran replica; it
        // cannot see the audit.
        let all_adversary =
            !visible.is_empty() && visible.iter().all(|w| self.workers[*w].adversary);
        let no_probation_check = self.policy.probation == 0
            || visible
                .iter()
                .any(|w| veterans.contains(&self.workers[*w].key));
        if all_adversary && no_probation_check {
            // The group decides together, so its identities never contradict
            // each other on a unit.
            let group = &visible;
            let cheat = match self.p.strategy {
                Strategy::CheatOnce => group.iter().all(|w| !self.workers[*w].cheated),
                Strategy::CheatWhenSafe => true,
                Strategy::HonestThenDefect => group.iter().all(|w| self.workers[*w].results >= 100),
                _ => false,
            };
            if cheat {
                self.cheat_units.insert(unit);
                for w in group {
                    self.workers[*w].cheated = true;
                }
            }
        }
        for w in visible {
            self.execute(unit, w);
        }
        if let Some(a) = auditor {
            self.execute(unit, a);
        }
    }

    /// Adds one replica to a pending unit.
    fn add_replica(&mut self, unit: UnitRef, need: Need, veterans_pool: &[usize]) {
        if self.assigned.get(&unit).map_or(0, |a| a.len()) >= self.p.max_replicas {
            return;
        }
        let pool = if need == Need::VeteranReplica {
            veterans_pool.to_vec()
        } else {
            self.active()
        };
        if let Some(w) = self.pick(&pool, &unit) {
            self.assigned
                .entry(unit)
                .or_default()
                .push(Assignment { worker: w });
            self.execute(unit, w);
        }
    }

    /// Retires identities proven faulty. An honest volunteer wrongly
    /// blacklisted comes back as a new identity; the adversary does so only
    /// when the scheme grants it free Sybils.
    fn retire_faulty(&mut self, faulty: &BTreeSet<SignerKey>) {
        let mut respawn = Vec::new();
        for w in self.workers.iter_mut() {
            if !w.retired && faulty.contains(&w.key) {
                w.retired = true;
                if w.adversary {
                    self.report.adversary_identities_caught += 1;
                } else {
                    self.report.honest_identities_blacklisted += 1;
                }
                respawn.push(w.adversary);
            }
        }
        for adversary in respawn {
            if !adversary || self.p.scheme.sybil_respawn {
                self.spawn(adversary, false);
            }
        }
    }

    fn run(mut self) -> Report {
        let project = ContentId::of(b"sim-project");
        let mut outcome = validate(&self.evidence, &self.policy);
        let mut next = 0u64;
        while next < self.p.units {
            let end = (next + self.p.batch_size).min(self.p.units);
            let veterans: BTreeSet<SignerKey> = self
                .workers
                .iter()
                .filter(|w| !w.retired && outcome.is_veteran(&w.key, &self.policy))
                .map(|w| w.key)
                .collect();
            for index in next..end {
                self.start_unit(UnitRef { project, index }, &veterans);
            }
            next = end;
            // Rounds until every unit so far is validated or out of replicas.
            // Backtracking can re-open units of earlier batches, so all units
            // are revisited, not just this batch's.
            for _round in 0..12 {
                outcome = validate(&self.evidence, &self.policy);
                let faulty: BTreeSet<SignerKey> = outcome.faulty.keys().copied().collect();
                self.retire_faulty(&faulty);
                let pending: Vec<(UnitRef, Need)> = outcome
                    .verdicts
                    .iter()
                    .filter_map(|(u, v)| match v {
                        Verdict::Pending { need, .. } => Some((*u, *need)),
                        Verdict::Validated { .. } => None,
                    })
                    .collect();
                let stuck = pending.iter().all(|(u, _)| {
                    self.assigned.get(u).map_or(0, |a| a.len()) >= self.p.max_replicas
                });
                if pending.is_empty() || stuck {
                    break;
                }
                let veterans_pool: Vec<usize> = (0..self.workers.len())
                    .filter(|i| {
                        !self.workers[*i].retired
                            && outcome.is_veteran(&self.workers[*i].key, &self.policy)
                    })
                    .collect();
                for (u, need) in pending {
                    self.add_replica(u, need, &veterans_pool);
                }
            }
        }
        let outcome = validate(&self.evidence, &self.policy);
        for (u, result) in outcome.validated() {
            self.report.validated += 1;
            if *result != truth(u) {
                self.report.wrong_accepted += 1;
            }
        }
        self.report
    }
}

/// Runs one simulation.
pub(crate) fn simulate(p: Params) -> Report {
    Sim::new(p).run()
}
