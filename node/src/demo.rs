//! The whole network in one process, over real loopback sockets: volunteers
//! (some of them saboteurs), an owner who publishes and goes offline, and a
//! researcher who joins afterwards and collects validated results. Used by
//! `formic demo` and the end-to-end tests.

use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;

use formic_protocol::ContentId;
use formic_protocol::messages::Gossip;
use formic_protocol::project::ProjectState;
use formic_work_units::{Sandbox, SandboxConfig, apps};
use rand::RngCore;

use crate::computing::Sabotage;
use crate::node::{NodeConfig, Role, Session};
use crate::owner::{self, PublishOptions};
use crate::spot_checks;

/// What to run.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    pub peers: usize,
    pub units: usize,
    pub saboteurs: usize,
    /// Width of each unit's prime-counting range (sets the unit's cost).
    pub range: u64,
    pub quorum: u16,
    pub audit_rate_ppm: u32,
    pub timeout: Duration,
    /// Fraction of units the owner plants as spot checks (0 to 1); the
    /// researcher reveals them when collecting.
    pub spot_checks: f64,
    /// Where the researcher writes the results folder, if anywhere.
    pub results_dir: Option<std::path::PathBuf>,
}

/// Each demo unit counts primes over a range this wide: about 30 ms on the
/// 2-core dev machine, ~3 s for the whole demo. With units of a few
/// milliseconds the first two volunteers to start (each waits up to half a
/// second before its first pick) could finish all 60 units before the
/// others began: in 4 of 6 runs the saboteur got no unit to be caught on.
pub const DEFAULT_RANGE: u64 = 10_000_000;

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            peers: 5,
            units: 60,
            saboteurs: 1,
            range: DEFAULT_RANGE,
            quorum: 2,
            audit_rate_ppm: 0,
            timeout: Duration::from_secs(120),
            spot_checks: 0.1,
            results_dir: None,
        }
    }
}

/// What happened.
#[derive(Debug, Clone)]
pub struct DemoReport {
    pub project: ContentId,
    pub units: usize,
    pub validated: usize,
    /// Validated units whose output differs from a local honest run.
    pub wrong_accepted: usize,
    /// Unit executions reported to the network (commits).
    pub executions: usize,
    /// Unit runs the volunteers finished, and the CPU time they took
    /// (measured per thread; zero where the platform cannot tell).
    pub runs: u64,
    pub runs_cpu: Duration,
    /// CPU time of the final honest re-run of every validated unit, one at
    /// a time after the network has stopped (zero where unmeasured; units
    /// the volunteers still had running finish beside the first re-runs,
    /// which changes a thread's CPU time little).
    pub recheck_cpu: Duration,
    /// Workers the evidence proves faulty.
    pub faulty_workers: usize,
    /// Units with an answer the owner planted and the researcher revealed.
    pub spot_checks: usize,
    pub publish_time: Duration,
    pub first_validated_after_publish: Option<Duration>,
    /// From the owner starting to publish until the researcher saw every
    /// unit validated: the project's own time, without network start-up.
    pub publish_to_complete: Duration,
    pub wall_time: Duration,
    /// The collector's final view, for further checks.
    pub state: ProjectState,
}

impl DemoReport {
    /// Executions per validated unit.
    pub fn overhead(&self) -> f64 {
        self.executions as f64 / self.validated.max(1) as f64
    }
}

/// Why the demo stopped.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("starting a node: {0}")]
    Session(#[from] crate::node::NodeError),
    #[error("cannot start the sandbox")]
    Sandbox(#[from] formic_work_units::SandboxError),
    #[error("the demo app does not compile")]
    Compile(#[from] formic_work_units::CompileError),
    #[error("re-running unit {index} to judge the results failed")]
    Recheck {
        index: u64,
        #[source]
        source: formic_work_units::UnitError,
    },
    #[error("a sandbox thread failed")]
    Thread(#[from] tokio::task::JoinError),
    #[error("building the project: {0}")]
    Build(#[from] owner::BuildError),
    #[error("publishing: {0}")]
    Publish(#[from] owner::PublishProjectError),
    #[error("{0}")]
    Timeout(String),
    #[error("cannot write the results")]
    Results(#[source] crate::collect::CollectError),
    #[error("cannot reveal the spot-check answers")]
    Reveal(#[source] crate::network::PublishError),
    #[error("cannot plant spot checks")]
    SpotChecks(#[from] spot_checks::SpotCheckError),
}

fn sabotage_for(i: usize, saboteurs: usize) -> Option<Sabotage> {
    if i >= saboteurs {
        None
    } else if saboteurs >= 2 {
        // Two or more: a colluding group returning the same wrong answers.
        Some(Sabotage::Colluding {
            group: *blake3::hash(b"demo").as_bytes(),
        })
    } else {
        Some(Sabotage::AlwaysWrong)
    }
}

/// Runs the demo under `root` (one data dir per node). `progress` is told
/// (phase, validated, units) as it goes.
pub async fn run(
    root: &Path,
    config: &DemoConfig,
    progress: &dyn Fn(&str, usize, usize),
) -> Result<DemoReport, DemoError> {
    let started = Instant::now();
    let local = |name: &str| NodeConfig::local(root.join(name));

    // Volunteers: the first one is everyone's bootstrap peer.
    progress("starting volunteers", 0, config.units);
    let mut volunteers: Vec<Session> = Vec::new();
    for i in 0..config.peers {
        let mut cfg = local(&format!("volunteer-{i}"));
        if let Some(first) = volunteers.first() {
            cfg.network.bootstrap = first.node.dial_addrs();
        }
        let role = Role {
            sabotage: sabotage_for(i, config.saboteurs),
            ..Role::volunteer(1)
        };
        volunteers.push(Session::start(cfg, role).await?);
    }
    let bootstrap = volunteers
        .first()
        .map(|v| v.node.dial_addrs())
        .unwrap_or_default();

    // The owner publishes the sample app, waits until two peers hold it,
    // and goes offline.
    progress("publishing", 0, config.units);
    let inputs: Vec<Vec<u8>> = (0..config.units as u64)
        .map(|i| apps::primes_input(i * config.range, (i + 1) * config.range))
        .collect();
    let owner_dir = root.join("owner");
    let owner_key = crate::identity::load_or_create_keypair(&owner_dir.join(owner::OWNER_KEY_FILE))
        .map_err(crate::node::NodeError::Identity)?;
    let opts = PublishOptions {
        name: "demo: count primes".into(),
        quorum: config.quorum,
        max_replicas: config.peers.min(u16::MAX as usize) as u16,
        audit_rate_ppm: config.audit_rate_ppm,
        lease_ms: 30_000,
        // Fuel is the deterministic bound; the demo's units must never hit it.
        fuel_per_unit: 1_000_000_000_000,
        ..PublishOptions::default()
    };
    let mut seed = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut seed);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let project = owner::build_project(
        &owner_key,
        apps::PRIMES_WAT.as_bytes().to_vec(),
        &inputs,
        &opts,
        now_ms,
        seed,
    )?;
    let project_id = project.id();
    // The owner computes a secret sample locally before announcing, as
    // `formic publish --spot-checks` does.
    let planted = if config.spot_checks > 0.0 {
        let chosen = spot_checks::choose(config.units, config.spot_checks, &mut rand::rngs::OsRng)?;
        let (key, built, ins) = (owner_key.clone(), project.clone(), inputs.clone());
        tokio::task::spawn_blocking(move || -> Result<_, DemoError> {
            let sandbox = Sandbox::new(SandboxConfig::default())?;
            Ok(spot_checks::plant(
                &key,
                &built,
                &ins,
                &chosen,
                &sandbox,
                &|_, _| {},
            )?)
        })
        .await??
    } else {
        spot_checks::Planted {
            keys: Vec::new(),
            answers: 0,
            failed: 0,
        }
    };
    let mut owner_cfg = local("owner");
    owner_cfg.network.bootstrap = bootstrap.clone();
    let owner_session = Session::start(owner_cfg, Role::observer()).await?;
    owner_session
        .wait_for_peers(1, Duration::from_secs(20))
        .await;
    let publish_started = Instant::now();
    owner::publish(&owner_session.client(), &project).await?;
    let deadline = Instant::now() + config.timeout;
    let mut replication = owner::ReplicationWatch::new();
    while replication.holders(&owner_session.client(), &project).await < 2 {
        if Instant::now() >= deadline {
            return Err(DemoError::Timeout(
                "the project never reached two peers".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let publish_time = publish_started.elapsed();
    let _ = owner_session.shutdown().await;

    // Watch for the first validated unit on a volunteer while the work runs.
    let mut first_validated = None;

    // A researcher joins after publishing and collects.
    let mut collector_cfg = local("researcher");
    collector_cfg.network.bootstrap = volunteers
        .last()
        .map(|v| v.node.dial_addrs())
        .unwrap_or_default();
    let collector = Session::start(collector_cfg, Role::observer()).await?;
    collector.wait_for_peers(1, Duration::from_secs(20)).await;
    // The researcher collects with the owner's answers in hand (in practice
    // the owner, collecting from any machine with its data dir), and reveals
    // them before following, so its own view includes them from the start.
    spot_checks::reveal(&collector.client(), &planted.keys)
        .await
        .map_err(DemoError::Reveal)?;
    collector.compute.follow(project_id).await;
    let mut last_sync = Instant::now() - Duration::from_secs(10);
    // The researcher's progress is refreshed on its computing tick (100 ms).
    let mut collector_status = collector.compute.status();
    // When every unit was first seen validated, before the final pull.
    let mut done_at = None;
    let (manifest, state, publish_to_complete) = loop {
        if first_validated.is_none() {
            for v in &volunteers {
                let st = v.compute.status().borrow().clone();
                if st.projects.iter().any(|p| p.validated > 0) {
                    first_validated = Some(publish_started.elapsed());
                }
            }
        }
        if last_sync.elapsed() >= Duration::from_secs(2) {
            let _ = collector.client().sync_records(project_id).await;
            last_sync = Instant::now();
        }
        // Poll the cheap progress; copy the state only once it looks done.
        if let Some(p) = collector.compute.progress(project_id) {
            progress("computing", p.validated, config.units);
            let mut snap = if p.units > 0 && p.validated == p.units {
                collector.compute.snapshot(project_id).await
            } else {
                None
            };
            let done = snap.as_mut().is_some_and(|s| s.state.is_complete());
            match snap.filter(|_| done) {
                Some(snap) => match done_at {
                    // Done as far as this node knows: pull once more before
                    // reporting. Reveals still on their way (a colluder's
                    // wrong answer, say) may prove a worker faulty or
                    // re-open a unit; the time to completion stays the time
                    // it was first seen.
                    None => {
                        done_at = Some(publish_started.elapsed());
                        let _ = collector.client().sync_records(project_id).await;
                        last_sync = Instant::now();
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                    Some(at) => break (snap.manifest, snap.state, at),
                },
                _ => done_at = None,
            }
        }
        if Instant::now() >= deadline {
            let waiting = match collector.compute.snapshot(project_id).await {
                Some(mut snap) => pending_summary(&mut snap.state),
                None => "the researcher never loaded the project".to_string(),
            };
            return Err(DemoError::Timeout(format!(
                "not every unit was validated within {:?} ({waiting})",
                config.timeout
            )));
        }
        // Finer until the first validated result is seen: publish → first
        // validated result is one of the README's figures, with a goal of
        // 2 s (the volunteers' status itself moves on their 100 ms tick). After that, at each refresh of the
        // researcher's progress: a fixed 250 ms poll made the time to
        // completion up to 250 ms late, ~10 % of a 1,000-unit ceiling run.
        if first_validated.is_none() {
            tokio::time::sleep(Duration::from_millis(25)).await;
        } else {
            let changed =
                tokio::time::timeout(Duration::from_millis(250), collector_status.changed()).await;
            // Its computing layer stopped: poll, don't spin.
            if let Ok(Err(_)) = changed {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    };
    let mut state = state;
    if let Some(dir) = &config.results_dir {
        crate::collect::write_results(
            &collector.client(),
            &manifest,
            &mut state,
            dir,
            crate::collect::Format::Json,
        )
        .await
        .map_err(DemoError::Results)?;
    }
    let _ = collector.shutdown().await;
    let (mut runs, mut runs_cpu) = (0, Duration::ZERO);
    for v in volunteers {
        let st = v.compute.status().borrow().clone();
        // Failed runs too, as their CPU is in cpu_ms (the demo's never fail).
        runs += st.computed + st.failed;
        runs_cpu += Duration::from_millis(st.cpu_ms.unwrap_or(0));
        let _ = v.shutdown().await;
    }

    // Judge the accepted results against an honest local run of each unit
    // (on a blocking thread: the sandbox must not run on the async runtime).
    let manifest_limits = state.manifest().clone();
    let validated = state.validated();
    let judged: Vec<(u64, Vec<u8>)> = validated
        .iter()
        .map(|v| (v.index, inputs[v.index as usize].clone()))
        .collect();
    let limits = crate::computing::limits_of(&manifest_limits);
    // Each re-run's CPU time too: the same units run one at a time, the
    // baseline the swarm benchmark compares against.
    let honest = tokio::task::spawn_blocking(
        move || -> Result<Vec<(u64, ContentId, Duration)>, DemoError> {
            let sandbox = Sandbox::new(SandboxConfig::default())?;
            let app = sandbox.compile(apps::PRIMES_WAT.as_bytes())?;
            judged
                .into_iter()
                .map(|(index, input)| {
                    let unit = formic_protocol::messages::UnitRef {
                        project: project_id,
                        index,
                    };
                    let (out, cpu) = crate::os_clocks::with_thread_cpu(|| {
                        sandbox.run(&app, &input, *unit.id().as_bytes(), &limits, None)
                    });
                    let out = out.map_err(|source| DemoError::Recheck { index, source })?;
                    Ok((index, ContentId::of(&out.output), cpu.unwrap_or_default()))
                })
                .collect()
        },
    )
    .await??;
    let recheck_cpu = honest.iter().map(|(_, _, cpu)| *cpu).sum();
    let truth: std::collections::HashMap<u64, ContentId> =
        honest.into_iter().map(|(i, id, _)| (i, id)).collect();
    let wrong = validated
        .iter()
        .filter(|v| truth.get(&v.index) != Some(&v.result_hash))
        .count();
    let executions = state
        .records()
        .iter()
        .filter(|r| matches!(r, Gossip::Commit(_)))
        .count();
    let faulty_workers = state.outcome().faulty.len();
    Ok(DemoReport {
        project: project_id,
        units: config.units,
        validated: validated.len(),
        wrong_accepted: wrong,
        executions,
        runs,
        runs_cpu,
        recheck_cpu,
        faulty_workers,
        spot_checks: planted.answers,
        publish_time,
        first_validated_after_publish: first_validated,
        publish_to_complete,
        wall_time: started.elapsed(),
        state,
    })
}

/// What the units still pending wait for, as the researcher sees them: the
/// first thing to look at when a run does not finish.
fn pending_summary(state: &mut ProjectState) -> String {
    use formic_protocol::validation::{Need, Verdict};
    use std::collections::BTreeMap;
    let units = state.unit_count();
    let outcome = state.outcome();
    let mut by_need: BTreeMap<String, (usize, Vec<u64>)> = BTreeMap::new();
    let mut validated = 0;
    for (unit, verdict) in &outcome.verdicts {
        match verdict {
            Verdict::Validated { .. } => validated += 1,
            Verdict::Pending { need, have } => {
                let what = match need {
                    Need::MoreReplicas => "waiting for more replicas",
                    Need::VeteranReplica => "waiting for a veteran's replica",
                    // Both sides keep their standing: only more independent
                    // workers (or a spot check) can settle it.
                    Need::DisputeReplicas => "disputed",
                };
                let e = by_need
                    .entry(format!("{what} with {have} result(s)"))
                    .or_default();
                e.0 += 1;
                if e.1.len() < 5 {
                    e.1.push(unit.index);
                }
            }
        }
    }
    let judged = outcome.verdicts.len();
    let mut parts = vec![format!(
        "{validated}/{units} validated, {} with no result yet, {} faulty workers",
        units.saturating_sub(judged),
        outcome.faulty.len()
    )];
    for (need, (n, examples)) in by_need {
        parts.push(format!("{n} {need} (e.g. units {examples:?})"));
    }
    parts.join("; ")
}
