//! The computing layer: follows projects, computes units in the sandbox,
//! and takes part in commit-reveal, all through the network client.
//!
//! One task owns every followed project's [`ProjectState`] (the sans-IO
//! state machine in `protocol/`) and is the only place that changes it; the
//! network's events and finished units arrive on channels. Everything slow —
//! fetching blobs, compiling the app, running a unit — happens in spawned
//! tasks that report back, so the loop never blocks on I/O or compute.

mod host_retry;
pub mod sabotage;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use formic_protocol::messages::{
    Announce, Batch, Data, Gossip, MAX_INLINE_BYTES, ProjectId, ProjectManifest, Reveal, Salt,
    UnitRef,
};
use formic_protocol::project::{Applied, ProjectState, WorkOrder};
use formic_protocol::validation::Verdict;
use formic_protocol::{Signed, SignerKey};
use formic_work_units::{App, ENGINE_VERSION, Sandbox, SandboxConfig, SandboxLimits};
use libp2p::identity::Keypair;
use rand::Rng;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::blob_store::BlobStore;
use crate::deadline::sleep_until_some;
use crate::error_report::{Chain, error_chain};
use crate::network::{NetworkClient, NetworkEvent, Topic};
use crate::state_store::StateStore;
use host_retry::HostRetries;
pub use sabotage::Sabotage;

/// Records buffered for a project whose manifest is still being fetched.
const MAX_PENDING_RECORDS: usize = 100_000;

/// How the computing layer behaves on this node.
#[derive(Clone)]
pub struct ComputeConfig {
    /// The worker identity (the node's network key, so commits are signed
    /// by the peer that gossips them).
    pub keypair: Keypair,
    pub sandbox: Arc<LazySandbox>,
    /// Units computed at once. 0 makes the node an observer that follows
    /// projects without computing (owners, collectors).
    pub slots: usize,
    /// Follow every announced project (volunteers), or only those asked for.
    pub follow_all: bool,
    /// Corroborated results before a worker counts as a veteran
    /// (docs/VALIDATION.md); 0 in a fresh network.
    pub probation: u32,
    /// Deliberately wrong results (tests and the demo only).
    pub sabotage: Option<Sabotage>,
    /// How often to look for work and open commits.
    pub tick: Duration,
    /// Threads that run units at the lowest OS priority. Without one, units
    /// run on Tokio's blocking threads (tests, short-lived sessions).
    pub pool: Option<Arc<crate::compute_pool::ComputePool>>,
    /// The idle governor's set of running units: each unit registers its
    /// control so the governor can pause it in place, and no new unit starts
    /// while the governor says suspended. None: always run.
    pub governed: Option<crate::governor::UnitSet>,
    /// The node's blob store, where fetched inputs and apps land: every blob
    /// of a followed project is pinned in it.
    pub blobs: Arc<BlobStore>,
    /// The crash-safe state store (`formic node`): followed projects and
    /// reveals held back survive a restart. `None`: kept in memory only.
    pub state: Option<Arc<StateStore>>,
    /// Fault injection for tests: the first this many unit runs end in a
    /// host error without running, as a full sandbox pool or an input that
    /// cannot be fetched would. They alternate between striking after the
    /// unit's claim is out (the first, third, …) and at once, before it.
    /// Only in builds with the `test-support` feature.
    #[cfg(feature = "test-support")]
    pub host_faults: u32,
}

impl std::fmt::Debug for ComputeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComputeConfig")
            .field("slots", &self.slots)
            .field("follow_all", &self.follow_all)
            .field("probation", &self.probation)
            .field("sabotage", &self.sabotage)
            .finish()
    }
}

/// The sandbox, created when the first project's app is compiled: its
/// wasmtime engine costs about 1.5 MB of resident memory, which an idle
/// agent with nothing to compute should not pay (goal: 25 MB in all).
pub struct LazySandbox {
    config: SandboxConfig,
    sandbox: std::sync::OnceLock<Result<Sandbox, Arc<formic_work_units::SandboxError>>>,
}

/// The sandbox could not be created (its engine refused the configuration).
/// Remembered, so each later use reports the same cause.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot start the sandbox")]
pub struct SandboxUnavailable(#[source] Arc<formic_work_units::SandboxError>);

impl std::fmt::Debug for LazySandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazySandbox")
            .field("config", &self.config)
            .field("created", &self.sandbox.get().map(Result::is_ok))
            .finish()
    }
}

impl LazySandbox {
    pub fn new(config: SandboxConfig) -> Self {
        Self {
            config,
            sandbox: std::sync::OnceLock::new(),
        }
    }

    /// The sandbox, creating it on first use (blocking: call it off the
    /// async threads). A failure is remembered and reported each time.
    pub fn get(&self) -> Result<&Sandbox, SandboxUnavailable> {
        self.sandbox
            .get_or_init(|| Sandbox::new(self.config.clone()).map_err(Arc::new))
            .as_ref()
            .map_err(|e| SandboxUnavailable(Arc::clone(e)))
    }
}

/// Progress of one followed project, as `formic status` shows it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProjectProgress {
    pub project: String,
    pub name: String,
    pub units: usize,
    pub validated: usize,
    /// Units running on this node now.
    pub running: usize,
    /// Units this node has finished computing.
    pub computed_here: u64,
    /// Credit: fuel of this node's results that are validated.
    pub credit_fuel: u64,
}

/// What the computing layer is doing.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ComputeStatus {
    pub projects: Vec<ProjectProgress>,
    pub running: usize,
    pub computed: u64,
    pub failed: u64,
    /// CPU time this node's unit runs took since it started, failed runs
    /// included, in milliseconds; None where it cannot be measured.
    pub cpu_ms: Option<u64>,
}

/// Why a project could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot fetch the {what}")]
    Fetch {
        what: &'static str,
        #[source]
        source: crate::network::FetchError,
    },
    #[error("the {what} does not decode")]
    Decode {
        what: &'static str,
        #[source]
        source: formic_protocol::DecodeError,
    },
    #[error("the announcement names project {announced} but the manifest is {actual}")]
    WrongManifest { announced: String, actual: String },
    #[error("the project's manifest does not verify")]
    Invalid(#[source] formic_protocol::VerifyError),
    #[error(transparent)]
    Sandbox(#[from] SandboxUnavailable),
    #[error("the app does not compile")]
    Compile(#[source] formic_work_units::CompileError),
    #[error("the compile thread failed")]
    CompileThread(#[source] tokio::task::JoinError),
}

/// A copy of one project's state, for collecting results.
#[derive(Debug, Clone)]
pub struct ProjectSnapshot {
    pub manifest: Signed<ProjectManifest>,
    pub state: ProjectState,
}

enum Command {
    Follow {
        project: ProjectId,
    },
    Snapshot {
        project: ProjectId,
        reply: oneshot::Sender<Option<ProjectSnapshot>>,
    },
}

/// Handle to the computing task.
pub struct ComputeHandle {
    commands: mpsc::Sender<Command>,
    status: watch::Receiver<ComputeStatus>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for ComputeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComputeHandle")
            .field("finished", &self.task.is_finished())
            .finish_non_exhaustive()
    }
}

impl ComputeHandle {
    /// Follows `project` (pulls its records, loads it when its
    /// announcement is found).
    pub async fn follow(&self, project: ProjectId) {
        let _ = self.commands.send(Command::Follow { project }).await;
    }

    /// A copy of `project`'s state, once loaded.
    pub async fn snapshot(&self, project: ProjectId) -> Option<ProjectSnapshot> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Snapshot { project, reply })
            .await
            .ok()?;
        rx.await.ok().flatten()
    }

    /// The latest status (updated every tick).
    pub fn status(&self) -> watch::Receiver<ComputeStatus> {
        self.status.clone()
    }

    /// The latest progress of `project`, once it is loaded: cheap, unlike a
    /// [`snapshot`](Self::snapshot), which copies the whole project state.
    pub fn progress(&self, project: ProjectId) -> Option<ProjectProgress> {
        let id = project.to_string();
        self.status
            .borrow()
            .projects
            .iter()
            .find(|p| p.project == id)
            .cloned()
    }

    /// Stops the task (running units finish in the background and are
    /// dropped).
    pub fn stop(self) {
        self.task.abort();
    }
}

struct Followed {
    manifest: Signed<ProjectManifest>,
    state: ProjectState,
    app: Option<Arc<App>>,
    /// Reveals waiting for a quorum of commits.
    held: Vec<(UnitRef, Signed<Reveal>)>,
    busy: BTreeSet<u64>,
    /// Units this node left unfinished before a restart, to run again
    /// before taking new work.
    resume: Vec<WorkOrder>,
    computed_here: u64,
    fuel_by_unit: HashMap<u64, u64>,
    /// Until when this node waits before taking its first unit of the
    /// project (see [`FIRST_PICK_SPREAD`]); None once it may.
    opens_at: Option<tokio::time::Instant>,
    /// Since when each held reveal (by unit) has been held, the wait
    /// before the next pull-sync, the last one (when, and for which unit)
    /// and whether one is under way (see [`HELD_RESYNC_FIRST`]).
    held_since: HashMap<u64, tokio::time::Instant>,
    resync_after: Duration,
    last_resync: Option<(tokio::time::Instant, u64)>,
    resync_running: Arc<std::sync::atomic::AtomicBool>,
    /// Units this host could not run: busy until their wait is over.
    host_retry: HostRetries,
    /// Units running here whose claim is not made yet, and when it is due
    /// (see [`CLAIM_DELAY`]).
    unclaimed: Vec<(tokio::time::Instant, UnitRef)>,
    /// The last progress counted from the verdicts: (verdicts revision and
    /// `computed_here` it was counted at, validated units, credit fuel).
    counted: Option<(u64, u64, usize, u64)>,
}

/// What loading a project yields: its signed manifest, the announced batch
/// and, on a computing node, the compiled app.
struct LoadedParts {
    manifest: Signed<ProjectManifest>,
    batch: Signed<Batch>,
    app: Option<Arc<App>>,
}

struct Loaded {
    announce: Announce,
    result: Result<LoadedParts, LoadError>,
}

/// A load that failed to fetch, to try again later: the blobs may not be
/// findable yet (a publisher still joining) or their holders offline for a
/// while. Other failures (bad records, an app that does not compile) are
/// final.
struct LoadRetry {
    announce: Announce,
    at: tokio::time::Instant,
    attempt: u32,
}

/// Volunteers hear of a new project within a gossip round or so of each
/// other and would all open a different unit at once, so that no unit had
/// its second replica under way until a whole unit's time later. Each
/// waits a random time up to this before its first pick instead: most see
/// an earlier worker's claim by then and, as `next_work` prefers a started
/// unit, join it, so the first results validate after about one unit's
/// time. Half a second is many gossip rounds on a LAN or a network of a few
/// hundred peers, fewer at 1,000 local peers on 2 cores (p50 0.7 s, see
/// README), where some workers still open a unit of their own. Paid each
/// time a computing node loads a project: once, and again after a restart.
const FIRST_PICK_SPREAD: Duration = Duration::from_millis(500);

/// How long a unit runs before its claim is made. A unit done sooner
/// needs none: its commit says all the claim would (`involves`, the
/// replica count), and with short units signing claims that the outbox
/// would then leave out of its bundle was a tenth of the computing layer's
/// CPU. A longer unit's claim is only this much later, about the time the
/// network's outbox holds a record on a busy topic anyway. Until then
/// `busy` keeps this node from taking the unit twice.
const CLAIM_DELAY: Duration = Duration::from_millis(25);

/// A reveal waits for a quorum of commits. If this node missed another
/// worker's commit (gossip drops a message when a peer's send queue is
/// full, and the sync at subscription time is long past), it would wait for
/// ever, and so would the unit: its slots count the held commit as in
/// flight. So a project whose oldest held reveal has waited this long is
/// pulled again from its peers, with the wait doubling up to
/// [`HELD_RESYNC_MAX`] while that reveal stays stuck (long units
/// legitimately keep a reveal waiting for their partner).
const HELD_RESYNC_FIRST: Duration = Duration::from_secs(10);
const HELD_RESYNC_MAX: Duration = Duration::from_secs(600);

/// First and longest wait before fetching a project's blobs again.
const LOAD_RETRY_FIRST: Duration = Duration::from_secs(2);
const LOAD_RETRY_MAX: Duration = Duration::from_secs(300);
/// Fetch attempts before a project is given up (about 40 minutes in all);
/// a new announcement of it starts over.
const LOAD_RETRY_ATTEMPTS: u32 = 12;

/// Signs this node's claim on `order` and applies it to `state`: the record
/// to gossip, or None for a hidden audit (never claimed).
fn apply_own_claim(
    state: &mut ProjectState,
    keypair: &Keypair,
    order: &WorkOrder,
    now_ms: u64,
) -> Result<Option<Gossip>, formic_protocol::signed::SignError> {
    let Some(claim) = state.claim(keypair, order, now_ms)? else {
        return Ok(None);
    };
    let g = Gossip::Claim(claim);
    let _ = state.apply(&g);
    Ok(Some(g))
}

struct JobDone {
    project: ProjectId,
    unit: UnitRef,
    result: Result<(Vec<u8>, u64), JobError>,
    /// CPU time the run took on its thread (None where unknown or where
    /// it never ran).
    cpu: Option<Duration>,
}

/// Why a unit run gave no result.
enum JobError {
    /// The unit itself failed (a trap, a limit): deterministic, so it would
    /// fail on every host, and is not retried.
    Unit(String),
    /// This host could not run it now (input not fetched, the sandbox or
    /// the compute pool full, the thread lost): not counted as failed;
    /// other workers take the unit once this node's claim lapses.
    Host(String),
}

/// Starts the computing task over a node's network.
pub fn spawn(
    client: NetworkClient,
    events: mpsc::Receiver<NetworkEvent>,
    config: ComputeConfig,
) -> ComputeHandle {
    let (commands, command_rx) = mpsc::channel(64);
    let (status_tx, status) = watch::channel(ComputeStatus::default());
    let task = tokio::spawn(run(client, events, command_rx, status_tx, config));
    ComputeHandle {
        commands,
        status,
        task,
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

struct Worker {
    client: NetworkClient,
    config: ComputeConfig,
    me: SignerKey,
    /// Keys this node's seal salts (`seal_salt`): derived from the node's
    /// key once, at start.
    salt_key: [u8; 32],
    projects: HashMap<ProjectId, Followed>,
    loading: HashSet<ProjectId>,
    wanted: HashSet<ProjectId>,
    pending: HashMap<ProjectId, Vec<Gossip>>,
    retries: HashMap<ProjectId, LoadRetry>,
    loaded_tx: mpsc::Sender<Loaded>,
    jobs_tx: mpsc::Sender<JobDone>,
    running: usize,
    computed: u64,
    failed: u64,
    /// CPU time of every unit run here since start.
    cpu: Duration,
    /// Injected host faults still to come (`ComputeConfig::host_faults`).
    injected_faults: sabotage::InjectedFaults,
}

async fn run(
    client: NetworkClient,
    mut events: mpsc::Receiver<NetworkEvent>,
    mut commands: mpsc::Receiver<Command>,
    status: watch::Sender<ComputeStatus>,
    config: ComputeConfig,
) {
    let me = match SignerKey::of(&config.keypair) {
        Ok(k) => k,
        Err(e) => {
            tracing::error!(error = %Chain(&e), "computing disabled: the node key is not ed25519");
            return;
        }
    };
    // An ed25519 key (checked just above) always yields a derived secret.
    let Some(salt_key) = config.keypair.derive_secret(SALT_DOMAIN) else {
        tracing::error!("computing disabled: no secret can be derived from the node key");
        return;
    };
    // Volunteers hear of new projects on the announcement topic; observers
    // only follow the projects they are asked for.
    if config.follow_all
        && let Err(e) = client.subscribe(Topic::Announce).await
    {
        tracing::warn!(error = %Chain(&e), "cannot subscribe to announcements: new projects will only arrive by sync");
    }
    let (loaded_tx, mut loaded_rx) = mpsc::channel(16);
    let (jobs_tx, mut jobs_rx) = mpsc::channel(64);
    let mut tick = tokio::time::interval(config.tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    #[cfg(feature = "test-support")]
    let host_faults = config.host_faults;
    #[cfg(not(feature = "test-support"))]
    let host_faults = 0;
    let mut w = Worker {
        client,
        config,
        me,
        salt_key,
        projects: HashMap::new(),
        loading: HashSet::new(),
        wanted: HashSet::new(),
        pending: HashMap::new(),
        retries: HashMap::new(),
        loaded_tx,
        jobs_tx,
        running: 0,
        computed: 0,
        failed: 0,
        cpu: Duration::ZERO,
        injected_faults: sabotage::InjectedFaults::new(host_faults),
    };
    w.restore().await;
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Some(NetworkEvent::Record { project, gossip, .. }) => w.on_record(project, gossip).await,
                Some(NetworkEvent::RecordsMissed { project }) => w.reread(project).await,
                Some(_) => {}
                None => break,
            },
            Some(cmd) = commands.recv() => match cmd {
                Command::Follow { project } => w.follow(project).await,
                Command::Snapshot { project, reply } => {
                    let snap = w.projects.get(&project).map(|f| ProjectSnapshot {
                        manifest: f.manifest.clone(),
                        state: f.state.clone(),
                    });
                    let _ = reply.send(snap);
                }
            },
            Some(loaded) = loaded_rx.recv() => {
                w.on_loaded(loaded).await;
                w.schedule().await;
            }
            Some(done) = jobs_rx.recv() => w.on_job_done(done).await,
            // A project's first pick, on time rather than at the next tick.
            () = sleep_until_some(w.next_opening()) => w.schedule().await,
            () = sleep_until_some(w.next_claim_due()) => w.claim_due_units().await,
            _ = tick.tick() => {
                w.retry_loads();
                w.release_host_retries().await;
                w.schedule().await;
                w.open_commits().await;
                w.resync_stalled();
                let _ = status.send(w.status());
            }
        }
    }
    tracing::debug!("computing task stopped: the network's event channel closed");
}

impl Worker {
    /// The earliest first pick of a followed project still to come. Only
    /// future ones: `schedule` clears a passed one when it gets to the
    /// project, and one it could not get to (no free slot) must not wake
    /// the loop again and again.
    fn next_opening(&self) -> Option<tokio::time::Instant> {
        let now = tokio::time::Instant::now();
        self.projects
            .values()
            .filter_map(|f| f.opens_at)
            .filter(|at| *at > now)
            .min()
    }

    /// When the earliest pending claim is due, if any is pending.
    fn next_claim_due(&self) -> Option<tokio::time::Instant> {
        self.projects
            .values()
            .flat_map(|f| f.unclaimed.iter().map(|(at, _)| *at))
            .min()
    }

    /// Claims the units that have run for [`CLAIM_DELAY`] and are still
    /// running, and gossips the claims.
    async fn claim_due_units(&mut self) {
        let now = tokio::time::Instant::now();
        let now_ms = now_ms();
        let mut claims = Vec::new();
        for (id, f) in self.projects.iter_mut() {
            let (due, waiting): (Vec<_>, Vec<_>) =
                f.unclaimed.drain(..).partition(|(at, _)| *at <= now);
            f.unclaimed = waiting;
            for (_, unit) in due {
                // Settled by others meanwhile: a claim would tell nobody
                // anything.
                if f.state.is_settled(unit.index) {
                    continue;
                }
                let Some(order) = f.state.work_order(unit.index, false) else {
                    continue;
                };
                match apply_own_claim(&mut f.state, &self.config.keypair, &order, now_ms) {
                    Ok(Some(g)) => claims.push((*id, g)),
                    Ok(None) => {}
                    // The unit still runs; its commit will show it.
                    Err(e) => tracing::warn!(error = %Chain(&e), "cannot sign a claim"),
                }
            }
        }
        for (id, g) in claims {
            if let Err(e) = self.client.publish(Topic::Project(id), g).await {
                tracing::debug!(error = %Chain(&e), "claim not published");
            }
        }
    }

    /// After a restart: follows again what was followed before, from the
    /// state store and the records restored from it (an announcement held
    /// is a project to load). Each project then resumes its own unfinished
    /// work when it loads: its catch-up meets this node's own claims and
    /// commits, and `on_record` queues those units (`Applied::New`).
    async fn restore(&mut self) {
        let Some(state) = self.config.state.clone() else {
            return;
        };
        match tokio::task::spawn_blocking(move || state.followed()).await {
            Ok(Ok(followed)) => self.wanted.extend(followed),
            Ok(Err(e)) => tracing::warn!(error = %Chain(&e), "cannot read followed projects"),
            Err(e) => tracing::warn!(error = %Chain(&e), "cannot read followed projects"),
        }
        let wanted: Vec<ProjectId> = self.wanted.iter().copied().collect();
        for project in wanted {
            if let Err(e) = self.client.subscribe(Topic::Project(project)).await {
                tracing::warn!(project = %project.short(), error = %Chain(&e), "cannot subscribe to the project topic");
            }
        }
        for project in self.client.projects().await.unwrap_or_default() {
            for r in self.client.records(project).await.unwrap_or_default() {
                if matches!(r, Gossip::Announce(_)) {
                    self.on_record(project, r).await;
                }
            }
        }
    }

    /// A freshly loaded project, before its records are applied: takes back
    /// this node's reveals that were held on disk (with their output blobs
    /// pinned again: pins do not survive a restart).
    async fn take_back_held_reveals(&mut self, project: ProjectId) {
        let Some(state) = self.config.state.clone() else {
            return;
        };
        let held = tokio::task::spawn_blocking(move || state.held_reveals(&project))
            .await
            .ok()
            .and_then(|r| {
                r.map_err(|e| tracing::warn!(error = %Chain(&e), "cannot read held reveals"))
                    .ok()
            })
            .unwrap_or_default();
        let me = self.me;
        let Some(f) = self.projects.get_mut(&project) else {
            return;
        };
        for bytes in held {
            let Ok(reveal) = Signed::<Reveal>::from_bytes(&bytes) else {
                continue;
            };
            // Only this node's own, for this project.
            if reveal.signer() != me {
                continue;
            }
            let Ok(r) = reveal.verify() else { continue };
            if r.unit.project != project || f.held.iter().any(|(u, _)| *u == r.unit) {
                continue;
            }
            if let Data::Blob(b) = &r.output {
                self.config.blobs.pin(b.id);
            }
            f.held.push((r.unit, reveal));
        }
    }

    /// A freshly loaded project, after its records are applied: a held
    /// reveal whose commit never went out (killed between storing the one
    /// and publishing the other) gets its commit rebuilt (signing is
    /// deterministic, so it is the same record) and published, or it could
    /// never be opened.
    async fn republish_lost_commits(&mut self, project: ProjectId) {
        let me = self.me;
        let Some(f) = self.projects.get_mut(&project) else {
            return;
        };
        let mut commits = Vec::new();
        for (unit, reveal) in &f.held {
            if f.state.committed_by(&me, unit.index) {
                continue;
            }
            let Ok(r) = reveal.verify() else { continue };
            match f.state.commit(
                &self.config.keypair,
                *unit,
                r.output,
                r.fuel_used,
                &r.engine,
                // The salt the held reveal was sealed with.
                r.salt,
            ) {
                Ok((commit, _)) => commits.push(Gossip::Commit(commit)),
                Err(e) => tracing::warn!(error = %Chain(&e), "cannot sign a commit"),
            }
        }
        for g in &commits {
            let _ = f.state.apply(g);
        }
        if !f.held.is_empty() || !f.resume.is_empty() {
            tracing::info!(project = %project.short(), held_reveals = f.held.len(), rerun = f.resume.len(),
                republished_commits = commits.len(), "resuming work left unfinished before a restart");
        }
        for g in commits {
            if let Err(e) = self.client.publish(Topic::Project(project), g).await {
                tracing::debug!(error = %Chain(&e), "commit not published");
            }
        }
    }

    async fn follow(&mut self, project: ProjectId) {
        if self.wanted.insert(project)
            && let Some(state) = self.config.state.clone()
        {
            // Best effort: a lost follow is asked for again by the user.
            let _ = tokio::task::spawn_blocking(move || state.follow(&project)).await;
        }
        if let Err(e) = self.client.subscribe(Topic::Project(project)).await {
            tracing::warn!(project = %project.short(), error = %Chain(&e), "cannot subscribe to the project topic");
        }
        // Records already held (the announcement among them) start the load.
        if let Ok(records) = self.client.records(project).await {
            for r in records {
                self.on_record(project, r).await;
            }
        }
    }

    /// Applies every stored record of `project` again, after the network
    /// dropped some of their events: applying is idempotent, so only the
    /// missed ones change anything.
    async fn reread(&mut self, project: ProjectId) {
        // A project still loading catches up from the store when it is
        // loaded. One not followed matters only for its announcement.
        if !self.projects.contains_key(&project)
            && (self.loading.contains(&project)
                || (!self.wanted.contains(&project) && !self.config.follow_all))
        {
            return;
        }
        if let Ok(records) = self.client.records(project).await {
            tracing::debug!(project = %project.short(), records = records.len(),
                "reading the project's records again: some of their events were dropped");
            for r in records {
                self.on_record(project, r).await;
            }
        }
        self.open_commits().await;
    }

    async fn on_record(&mut self, project: ProjectId, gossip: Gossip) {
        if let Gossip::Announce(a) = &gossip {
            let Ok(announce) = a.verify() else { return };
            let interested = self.config.follow_all || self.wanted.contains(&project);
            if let Some(f) = self.projects.get(&project) {
                if !f.state.has_batch(announce.batch_seq) {
                    self.start_load(announce);
                }
            } else if interested && !self.loading.contains(&project) {
                self.start_load(announce);
            }
            return;
        }
        if let Some(f) = self.projects.get_mut(&project) {
            match f.state.apply(&gossip) {
                // A claim or commit of this node's own that it did not just
                // make (those are applied directly, never through here): it
                // predates a restart, restored from the state store or
                // returned by sync. Its unit must be finished.
                Ok(Applied::New) => {
                    let mine = match &gossip {
                        Gossip::Claim(c) if c.signer() == self.me => {
                            c.verify().ok().map(|c| c.unit)
                        }
                        Gossip::Commit(c) if c.signer() == self.me => {
                            c.verify().ok().map(|c| c.unit)
                        }
                        _ => None,
                    };
                    if let Some(unit) = mine
                        && !f.busy.contains(&unit.index)
                        && !f.held.iter().any(|(u, _)| *u == unit)
                        && !f.resume.iter().any(|o| o.unit == unit)
                        && f.state.is_unfinished_by(&self.me, unit.index, now_ms())
                        && let Some(order) = f.state.work_order(unit.index, false)
                    {
                        tracing::debug!(project = %project.short(), unit = unit.index, "a unit left unfinished before a restart is queued");
                        f.resume.push(order);
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(project = %project.short(), error = %Chain(&e), "record not applied");
                }
            }
        } else if self.loading.contains(&project) || self.wanted.contains(&project) {
            let buf = self.pending.entry(project).or_default();
            if buf.len() < MAX_PENDING_RECORDS {
                buf.push(gossip);
            }
        }
    }

    fn start_load(&mut self, announce: Announce) {
        self.loading.insert(announce.project);
        let client = self.client.clone();
        let blobs = Arc::clone(&self.config.blobs);
        let sandbox = Arc::clone(&self.config.sandbox);
        let compute = self.config.slots > 0;
        // A node that follows every project holds its app too, computing or
        // not: `--threads 0` relays and stores for the network, and behind
        // NAT it may be the app's only holder others can reach.
        let hold_app = compute || self.config.follow_all;
        let tx = self.loaded_tx.clone();
        tokio::spawn(async move {
            let result = load(&client, &blobs, &announce, &sandbox, compute, hold_app).await;
            let _ = tx.send(Loaded { announce, result }).await;
        });
    }

    /// Frees the units whose host-error wait is over (their wait stays on
    /// record, to double if they fail again). A unit this node is not
    /// involved in (a hidden audit, or one that failed before its claim was
    /// due) goes back to `schedule`'s pick, which offers it again only while
    /// it still wants replicas. A claimed unit never would: `next_work` does
    /// not offer a unit this node is involved in. So it is queued to run
    /// again here, under a renewed claim if its lease ran out meanwhile,
    /// unless others have settled it.
    async fn release_host_retries(&mut self) {
        let now = tokio::time::Instant::now();
        let now_ms = now_ms();
        let ids: Vec<ProjectId> = self.projects.keys().copied().collect();
        for id in ids {
            let Some(f) = self.projects.get_mut(&id) else {
                continue;
            };
            let mut renewed = Vec::new();
            for unit in f.host_retry.release_due(now) {
                f.busy.remove(&unit);
                tracing::debug!(unit, "trying a unit again after a host error");
                if !f.state.involves(&self.me, unit) || f.state.is_settled(unit) {
                    continue;
                }
                let Some(order) = f.state.work_order(unit, false) else {
                    continue;
                };
                if !f.state.is_unfinished_by(&self.me, unit, now_ms) {
                    // The lease ran out and nothing was committed: claim
                    // it again (a later lease supersedes the old claim).
                    match apply_own_claim(&mut f.state, &self.config.keypair, &order, now_ms) {
                        Ok(Some(g)) => renewed.push(g),
                        Ok(None) => continue,
                        Err(e) => {
                            tracing::warn!(error = %Chain(&e), "cannot sign a claim");
                            continue;
                        }
                    }
                }
                if !f.resume.iter().any(|o| o.unit == order.unit) {
                    f.resume.push(order);
                }
            }
            let state = &mut f.state;
            f.host_retry.forget_settled(|u| state.is_settled(u));
            for g in renewed {
                if let Err(e) = self.client.publish(Topic::Project(id), g).await {
                    tracing::debug!(error = %Chain(&e), "claim not published");
                }
            }
        }
    }

    /// Starts again every failed load whose wait is over.
    fn retry_loads(&mut self) {
        let now = tokio::time::Instant::now();
        let due: Vec<ProjectId> = self
            .retries
            .iter()
            .filter(|(p, r)| r.at <= now && !self.loading.contains(*p))
            .map(|(p, _)| *p)
            .collect();
        for p in due {
            if let Some(r) = self.retries.get(&p) {
                tracing::debug!(project = %p.short(), attempt = r.attempt, "fetching the project again");
                self.start_load(r.announce.clone());
            }
        }
    }

    async fn on_loaded(&mut self, loaded: Loaded) {
        let project = loaded.announce.project;
        self.loading.remove(&project);
        let LoadedParts {
            manifest,
            batch,
            app,
        } = match loaded.result {
            Ok(x) => {
                self.retries.remove(&project);
                x
            }
            Err(e @ LoadError::Fetch { .. })
                if self
                    .retries
                    .get(&project)
                    .is_none_or(|r| r.attempt < LOAD_RETRY_ATTEMPTS) =>
            {
                let attempt = self.retries.get(&project).map_or(0, |r| r.attempt + 1);
                let wait = LOAD_RETRY_FIRST
                    .saturating_mul(1 << attempt.min(16))
                    .min(LOAD_RETRY_MAX);
                tracing::warn!(project = %project.short(), error = %Chain(&e), retry_in = ?wait, "cannot load project yet");
                self.retries.insert(
                    project,
                    LoadRetry {
                        announce: loaded.announce,
                        at: tokio::time::Instant::now() + wait,
                        attempt,
                    },
                );
                return;
            }
            Err(e) => {
                self.retries.remove(&project);
                tracing::warn!(project = %project.short(), error = %Chain(&e), "cannot load project");
                return;
            }
        };
        let fresh = !self.projects.contains_key(&project);
        if let Some(f) = self.projects.get_mut(&project) {
            // A further batch of a project already followed.
            if let Err(e) = f.state.add_batch(&batch) {
                tracing::warn!(project = %project.short(), error = %Chain(&e), "batch rejected");
            }
        } else {
            let mut state = match ProjectState::new(&manifest, self.config.probation) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(project = %project.short(), error = %Chain(&e), "manifest rejected");
                    return;
                }
            };
            if let Err(e) = state.add_batch(&batch) {
                tracing::warn!(project = %project.short(), error = %Chain(&e), "batch rejected");
                return;
            }
            tracing::info!(project = %project.short(), name = %state.manifest().name, units = state.unit_count(),
                computing = app.is_some(), "following project");
            let computes = app.is_some();
            self.projects.insert(
                project,
                Followed {
                    manifest,
                    state,
                    app,
                    held: Vec::new(),
                    busy: BTreeSet::new(),
                    resume: Vec::new(),
                    computed_here: 0,
                    fuel_by_unit: HashMap::new(),
                    // Only a node that computes picks units.
                    opens_at: computes.then(|| {
                        tokio::time::Instant::now()
                            + FIRST_PICK_SPREAD.mul_f64(rand::thread_rng().r#gen::<f64>())
                    }),
                    held_since: HashMap::new(),
                    resync_after: HELD_RESYNC_FIRST,
                    last_resync: None,
                    resync_running: Arc::default(),
                    host_retry: HostRetries::default(),
                    unclaimed: Vec::new(),
                    counted: None,
                },
            );
            if let Err(e) = self.client.subscribe(Topic::Project(project)).await {
                tracing::warn!(project = %project.short(), error = %Chain(&e), "cannot subscribe to the project topic");
            }
            // Before the catch-up: units whose reveal is held on disk are
            // not re-run when the catch-up meets their claims below.
            self.take_back_held_reveals(project).await;
            // Catch up: everything the network already holds for it. Each
            // unfinished unit of this node's own is queued as its claim or
            // commit is applied (see `on_record`).
            if let Ok(records) = self.client.records(project).await {
                for r in records {
                    if !matches!(r, Gossip::Announce(_)) {
                        self.on_record(project, r).await;
                    }
                }
            }
        }
        if let Some(buf) = self.pending.remove(&project) {
            for r in buf {
                self.on_record(project, r).await;
            }
        }
        if fresh {
            self.republish_lost_commits(project).await;
        }
    }

    async fn schedule(&mut self) {
        if self
            .config
            .governed
            .as_ref()
            .is_some_and(|u| u.decision() == crate::governor::Decision::Suspended)
        {
            return;
        }
        let now = now_ms();
        let ids: Vec<ProjectId> = self.projects.keys().copied().collect();
        for id in ids {
            while self.running < self.config.slots {
                let Some(f) = self.projects.get_mut(&id) else {
                    break;
                };
                let Some(app) = f.app.clone() else { break };
                // Unfinished work from before a restart first: its claim or
                // commit is already public.
                if let Some(order) = f.resume.pop() {
                    // Its reveal may have come back by sync meanwhile.
                    if !f.state.is_unfinished_by(&self.me, order.unit.index, now) {
                        continue;
                    }
                    f.busy.insert(order.unit.index);
                    self.running += 1;
                    let limits = limits_of(f.state.manifest());
                    self.spawn_job(id, order, app, limits);
                    continue;
                }
                if f.opens_at
                    .is_some_and(|at| tokio::time::Instant::now() < at)
                {
                    break;
                }
                f.opens_at = None;
                let draw: u32 = rand::thread_rng().r#gen();
                let Some(order) = f.state.next_work(&self.me, now, draw, &f.busy) else {
                    break;
                };
                if order.audit {
                    // Never claimed: nothing shows who audits.
                    tracing::debug!(unit = order.unit.index, "hidden audit");
                } else {
                    f.unclaimed
                        .push((tokio::time::Instant::now() + CLAIM_DELAY, order.unit));
                }
                f.busy.insert(order.unit.index);
                self.running += 1;
                let limits = limits_of(f.state.manifest());
                self.spawn_job(id, order, app, limits);
            }
        }
    }

    fn spawn_job(
        &self,
        project: ProjectId,
        order: WorkOrder,
        app: Arc<App>,
        limits: SandboxLimits,
    ) {
        let client = self.client.clone();
        let sandbox = Arc::clone(&self.config.sandbox);
        let tx = self.jobs_tx.clone();
        let skip = self.config.sabotage.is_some_and(|s| s.skips_compute());
        tracing::debug!(project = %project.short(), unit = order.unit.index, audit = order.audit, "computing unit");
        let injected_fault = self.injected_faults.next();
        let pool = self.config.pool.clone();
        let governed = self.config.governed.clone();
        tokio::spawn(async move {
            let unit = order.unit;
            let result = async {
                if let Some(fault) = injected_fault {
                    // Late, as a host error that strikes mid-run (an input
                    // fetch timing out) would, or at once (a full pool).
                    if fault == sabotage::InjectedFault::AfterClaim {
                        tokio::time::sleep(2 * CLAIM_DELAY).await;
                    }
                    return (Err(JobError::Host("injected host fault".to_owned())), None);
                }
                if skip {
                    return (Ok((Vec::new(), 0)), None);
                }
                let input = match order.input {
                    Data::Inline(b) => b,
                    Data::Blob(r) => match client.fetch_blob(r).await {
                        Ok(b) => b,
                        Err(e) => {
                            return (
                                Err(JobError::Host(format!("fetching the input: {e}"))),
                                None,
                            );
                        }
                    },
                };
                let seed = *order.seed.as_bytes();
                let job = move || {
                    // Registered for the run's duration: the governor pauses
                    // it in place (no progress lost) and resumes it.
                    let control = formic_work_units::UnitControl::new();
                    let label = crate::governor::UnitLabel {
                        project: project.short(),
                        index: unit.index,
                        fuel_budget: limits.fuel,
                    };
                    let _guard = governed
                        .as_ref()
                        .map(|u| u.register_unit(control.clone(), label));
                    // CPU counted whether or not the unit succeeds: a trap
                    // or a limit hit is CPU given all the same.
                    crate::os_clocks::with_thread_cpu(|| {
                        sandbox
                            .get()
                            .map_err(|e| JobError::Host(error_chain(&e)))?
                            .run(&app, &input, seed, &limits, Some(&control))
                            .map_err(|e| {
                                if e.is_host_condition() {
                                    JobError::Host(error_chain(&e))
                                } else {
                                    JobError::Unit(error_chain(&e))
                                }
                            })
                    })
                };
                let ran = match pool {
                    Some(pool) => match pool.submit(job).await {
                        Ok(rx) => rx
                            .await
                            .map_err(|_| JobError::Host("the unit's thread failed".to_owned())),
                        Err(e) => Err(JobError::Host(format!(
                            "the compute pool refused the unit: {e}"
                        ))),
                    },
                    None => tokio::task::spawn_blocking(job)
                        .await
                        .map_err(|e| JobError::Host(format!("the unit's thread failed: {e}"))),
                };
                match ran {
                    Ok((outcome, cpu)) => (outcome.map(|o| (o.output, o.fuel_used)), cpu),
                    Err(e) => (Err(e), None),
                }
            }
            .await;
            let (result, cpu) = result;
            let _ = tx
                .send(JobDone {
                    project,
                    unit,
                    result,
                    cpu,
                })
                .await;
        });
    }

    async fn on_job_done(&mut self, done: JobDone) {
        self.running = self.running.saturating_sub(1);
        // Failed and wasted runs count too: it is CPU the volunteer gave.
        self.cpu += done.cpu.unwrap_or_default();
        let Some(f) = self.projects.get_mut(&done.project) else {
            return;
        };
        // Finished before its claim was due: the commit (or, after a host
        // error, the retry's own claim) stands for it.
        f.unclaimed.retain(|(_, u)| *u != done.unit);
        let (mut output, fuel) = match done.result {
            Ok(x) => x,
            Err(JobError::Unit(e)) => {
                // Units are deterministic: a failing unit fails everywhere,
                // so it stays marked busy here instead of being retried.
                self.failed += 1;
                f.host_retry.ran(done.unit.index);
                tracing::warn!(project = %done.project.short(), unit = done.unit.index, error = %e, "unit failed");
                return;
            }
            Err(JobError::Host(e)) => {
                // Not the unit's fault, so not counted as failed; it stays
                // busy here until its wait is over (see host_retry.rs).
                let wait = f
                    .host_retry
                    .failed(done.unit.index, tokio::time::Instant::now());
                tracing::warn!(project = %done.project.short(), unit = done.unit.index, error = %e,
                    retry_in_s = wait.as_secs(), "unit not run on this host; it stays open");
                return;
            }
        };
        if let Some(s) = &self.config.sabotage {
            let draw: u32 = rand::thread_rng().r#gen();
            if let Some(wrong) = s.corrupt(&done.unit, &self.me, self.computed, draw, &output) {
                output = wrong;
            }
        }
        f.busy.remove(&done.unit.index);
        f.host_retry.ran(done.unit.index);
        tracing::debug!(project = %done.project.short(), unit = done.unit.index, fuel, "unit computed");
        self.computed += 1;
        f.computed_here += 1;
        f.fuel_by_unit.insert(done.unit.index, fuel);
        let data = Data::for_bytes(&output);
        if output.len() > MAX_INLINE_BYTES
            && let Err(e) = self.client.put_blob(output).await
        {
            tracing::warn!(error = %Chain(&e), "cannot store a unit's output");
            self.result_not_kept(done.project, done.unit.index);
            return;
        }
        let Some(f) = self.projects.get_mut(&done.project) else {
            return;
        };
        let salt = seal_salt(&self.salt_key, &done.unit);
        match f.state.commit(
            &self.config.keypair,
            done.unit,
            data,
            fuel,
            ENGINE_VERSION,
            salt,
        ) {
            Ok((commit, reveal)) => {
                // The reveal is on disk before its commit is public: a commit
                // seen by the network always has a reveal to back it.
                if let Some(state) = self.config.state.clone()
                    && let Ok(bytes) = reveal.to_bytes()
                {
                    let (project, index) = (done.project, done.unit.index);
                    let stored = tokio::task::spawn_blocking(move || {
                        state.put_held_reveal(&project, index, &bytes)
                    })
                    .await;
                    let stored = match stored {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(e)) => Err(error_chain(&e)),
                        Err(e) => Err(error_chain(&e)),
                    };
                    if let Err(e) = stored {
                        // Publishing a commit whose reveal could be lost would
                        // break the promise above: drop the result instead
                        // (any claim lapses and the unit goes to others).
                        tracing::warn!(project = %project.short(), unit = index, error = %e,
                            "result dropped: its reveal could not be stored");
                        self.result_not_kept(project, index);
                        return;
                    }
                }
                let Some(f) = self.projects.get_mut(&done.project) else {
                    return;
                };
                let g = Gossip::Commit(commit);
                let _ = f.state.apply(&g);
                f.held.push((done.unit, reveal));
                if let Err(e) = self.client.publish(Topic::Project(done.project), g).await {
                    tracing::debug!(error = %Chain(&e), "commit not published");
                }
            }
            Err(e) => tracing::warn!(error = %Chain(&e), "cannot sign a commit"),
        }
        self.open_commits().await;
        // Take the next unit now rather than at the next tick: with short
        // units the tick would otherwise bound throughput.
        self.schedule().await;
    }

    /// A computed result this node could not keep (its output or its reveal
    /// not stored): the host's trouble, so the unit waits and runs again as
    /// one hit by a host error would, instead of being picked again at once,
    /// in a loop for as long as the disk is full.
    fn result_not_kept(&mut self, project: ProjectId, index: u64) {
        if let Some(f) = self.projects.get_mut(&project) {
            f.busy.insert(index);
            f.host_retry.failed(index, tokio::time::Instant::now());
        }
    }

    /// Reveals every held result whose unit has a quorum of commits.
    async fn open_commits(&mut self) {
        let me = self.me;
        let mut to_publish = Vec::new();
        for (id, f) in self.projects.iter_mut() {
            let held = std::mem::take(&mut f.held);
            for (unit, r) in held {
                // Never a reveal without this node's own commit before it
                // (one is re-published on restart if it was lost).
                if f.state.may_reveal(&unit) && f.state.committed_by(&me, unit.index) {
                    let g = Gossip::Reveal(r);
                    let _ = f.state.apply(&g);
                    to_publish.push((*id, unit.index, g));
                } else {
                    f.held.push((unit, r));
                }
            }
        }
        // How long each reveal still held has waited (see resync_stalled).
        let now = tokio::time::Instant::now();
        for f in self.projects.values_mut() {
            let held: HashSet<u64> = f.held.iter().map(|(u, _)| u.index).collect();
            f.held_since.retain(|index, _| held.contains(index));
            for index in held {
                f.held_since.entry(index).or_insert(now);
            }
        }
        let mut published = Vec::new();
        for (id, index, g) in to_publish {
            let bytes = g.to_bytes().ok();
            match self.client.publish(Topic::Project(id), g).await {
                Ok(_) => published.extend(bytes.map(|b| (id, index, b))),
                Err(e) => tracing::debug!(error = %Chain(&e), "reveal not published"),
            }
        }
        // A published reveal becomes a stored record and stops being held
        // in one transaction: no crash leaves it in neither place.
        if !published.is_empty()
            && let Some(state) = self.config.state.clone()
        {
            let _ = tokio::task::spawn_blocking(move || {
                for (project, index, bytes) in published {
                    if let Err(e) = state.reveal_published(&project, index, &bytes) {
                        tracing::warn!(error = %Chain(&e), "published reveal not persisted");
                    }
                }
            })
            .await;
        }
    }

    /// Pulls again every project whose oldest held reveal has waited too
    /// long (see [`HELD_RESYNC_FIRST`]); records that come back arrive as
    /// events, and the next `open_commits` may then open the reveal. One
    /// pull at a time per project; the wait doubles (with jitter, so
    /// projects and nodes do not pull in step) while the same reveal stays
    /// stuck, and starts over once it is opened.
    fn resync_stalled(&mut self) {
        let now = tokio::time::Instant::now();
        let me = self.me;
        for (id, f) in self.projects.iter_mut() {
            // Only reveals whose own commit this node holds can ever open:
            // a pull cannot help the others.
            let oldest = f
                .held_since
                .iter()
                .filter(|(index, _)| f.state.committed_by(&me, **index))
                .min_by_key(|(_, since)| **since)
                .map(|(index, since)| (*index, *since));
            let Some((unit, since)) = oldest else {
                f.resync_after = HELD_RESYNC_FIRST;
                f.last_resync = None;
                continue;
            };
            if f.last_resync.is_some_and(|(_, u)| u != unit) {
                // The reveal stuck last time was opened: start over.
                f.resync_after = HELD_RESYNC_FIRST;
            }
            let waited = now.duration_since(f.last_resync.map_or(since, |(at, _)| at.max(since)));
            if waited < f.resync_after
                || f.resync_running.load(std::sync::atomic::Ordering::Relaxed)
            {
                continue;
            }
            tracing::debug!(project = %id.short(), unit, held = f.held.len(), waited = ?waited,
                "a held reveal still waits for commits: pulling the project again");
            f.last_resync = Some((now, unit));
            let jitter = 1.0 + rand::thread_rng().r#gen::<f64>() / 4.0;
            f.resync_after = (f.resync_after * 2).min(HELD_RESYNC_MAX).mul_f64(jitter);
            f.resync_running
                .store(true, std::sync::atomic::Ordering::Relaxed);
            let (client, project, running) =
                (self.client.clone(), *id, Arc::clone(&f.resync_running));
            tokio::spawn(async move {
                if let Err(e) = client.sync_records(project).await {
                    tracing::debug!(error = %Chain(&e), "pull-sync of a stalled project failed");
                }
                running.store(false, std::sync::atomic::Ordering::Relaxed);
            });
        }
    }

    fn status(&mut self) -> ComputeStatus {
        let me = self.me;
        let mut projects = Vec::new();
        for (id, f) in self.projects.iter_mut() {
            // Counted from the cached verdicts: this runs every tick and must
            // not copy outputs, nor walk every unit again while nothing
            // changed (a node idly following a large project). A validated
            // unit with no agreeing worker (a spot check nobody answered)
            // has no result to collect.
            let key = (f.state.verdicts_revision(), f.computed_here);
            let (validated, credit_fuel) = match f.counted {
                Some((revision, computed, validated, credit)) if (revision, computed) == key => {
                    (validated, credit)
                }
                _ => {
                    let mut validated = 0;
                    let mut credit_fuel = 0;
                    for (unit, verdict) in &f.state.outcome().verdicts {
                        if let Verdict::Validated { workers, .. } = verdict
                            && !workers.is_empty()
                        {
                            validated += 1;
                            if workers.contains(&me) {
                                credit_fuel +=
                                    f.fuel_by_unit.get(&unit.index).copied().unwrap_or(0);
                            }
                        }
                    }
                    f.counted = Some((key.0, key.1, validated, credit_fuel));
                    (validated, credit_fuel)
                }
            };
            projects.push(ProjectProgress {
                project: id.to_string(),
                name: f.state.manifest().name.clone(),
                units: f.state.unit_count(),
                validated,
                running: f.busy.len(),
                computed_here: f.computed_here,
                credit_fuel,
            });
        }
        ComputeStatus {
            projects,
            running: self.running,
            computed: self.computed,
            failed: self.failed,
            // None where this platform cannot measure a thread's CPU.
            cpu_ms: crate::os_clocks::thread_cpu()
                .map(|_| u64::try_from(self.cpu.as_millis()).unwrap_or(u64::MAX)),
        }
    }
}

/// The sandbox limits a manifest asks for.
pub fn limits_of(m: &ProjectManifest) -> SandboxLimits {
    SandboxLimits {
        fuel: m.limits.fuel_per_unit,
        memory_bytes: m.limits.memory_bytes,
        max_output_bytes: m.limits.max_output_bytes,
        wall_clock: Duration::from_millis(m.limits.wall_clock_ms),
    }
}

/// What the node key is hashed with to key its seal salts.
const SALT_DOMAIN: &[u8] = b"formic/v2/seal-salt";

/// The salt of this node's seal on `unit`: secret (keyed by a secret derived
/// from the node's key, so nobody can grind a seal back to its result), and
/// the same every time, so a unit re-run after a restart seals exactly as
/// the commit the network may already hold.
fn seal_salt(salt_key: &[u8; 32], unit: &UnitRef) -> Salt {
    *blake3::keyed_hash(salt_key, unit.id().as_bytes()).as_bytes()
}

/// Fetches and checks a project's manifest, one batch and (to compute) the
/// compiled app; `hold_app` fetches and pins the app even when not
/// computing.
async fn load(
    client: &NetworkClient,
    blobs: &BlobStore,
    announce: &Announce,
    sandbox: &Arc<LazySandbox>,
    compute: bool,
    hold_app: bool,
) -> Result<LoadedParts, LoadError> {
    let fetch =
        |what: &'static str, source: crate::network::FetchError| LoadError::Fetch { what, source };
    // Every blob of a followed project is pinned: the disk quota evicts
    // only what the node does not need (pins last while the process runs).
    let pin = |id| blobs.pin(id);
    let bytes = client
        .fetch_blob(announce.manifest)
        .await
        .map_err(|e| fetch("manifest", e))?;
    pin(announce.manifest.id);
    let manifest =
        Signed::<ProjectManifest>::from_bytes(&bytes).map_err(|source| LoadError::Decode {
            what: "manifest",
            source,
        })?;
    if manifest.id() != announce.project {
        return Err(LoadError::WrongManifest {
            announced: announce.project.to_string(),
            actual: manifest.id().to_string(),
        });
    }
    let m = manifest.verify().map_err(LoadError::Invalid)?;
    let bytes = client
        .fetch_blob(announce.batch)
        .await
        .map_err(|e| fetch("batch", e))?;
    pin(announce.batch.id);
    let batch = Signed::<Batch>::from_bytes(&bytes).map_err(|source| LoadError::Decode {
        what: "batch",
        source,
    })?;
    // Hold every input blob, so the project survives its owner going
    // offline (and units start without a fetch).
    if let Ok(b) = batch.verify() {
        for u in b.units {
            if let Data::Blob(r) = u.input {
                client.fetch_blob(r).await.map_err(|e| fetch("input", e))?;
                pin(r.id);
            }
        }
    }
    // A project pinned to another sandbox engine is followed (its records
    // and blobs are kept and served) but not computed: results of this
    // engine would not count there.
    let compute = compute
        && {
            let same = m.engine == formic_work_units::ENGINE_VERSION;
            if !same {
                tracing::warn!(project = %announce.project.short(), wants = %m.engine, runs = formic_work_units::ENGINE_VERSION,
                "project needs another sandbox engine; following it without computing");
            }
            same
        };
    if hold_app && !compute {
        client
            .fetch_blob(m.app)
            .await
            .map_err(|e| fetch("app", e))?;
        pin(m.app.id);
    }
    let app = if compute {
        let wasm = client
            .fetch_blob(m.app)
            .await
            .map_err(|e| fetch("app", e))?;
        pin(m.app.id);
        let sandbox = Arc::clone(sandbox);
        let app = tokio::task::spawn_blocking(move || {
            sandbox.get()?.compile(&wasm).map_err(LoadError::Compile)
        })
        .await
        .map_err(LoadError::CompileThread)??;
        Some(Arc::new(app))
    } else {
        None
    };
    Ok(LoadedParts {
        manifest,
        batch,
        app,
    })
}
