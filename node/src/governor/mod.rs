//! The idle governor: decides, several times a second, whether this machine
//! may compute work units right now, and makes running units obey.
//!
//! A volunteer's first requirement is that Formic never gets in their way.
//! So computing is suspended while any of these holds, checked in this
//! order (the first one found is the reason reported):
//!
//! 1. the volunteer paused it (`formic pause`, the `<data-dir>/paused` file);
//! 2. the local time is outside the allowed hours (`allowed_hours`);
//! 3. the machine runs on battery (unless `run_on_battery`);
//! 4. the user touched keyboard or mouse less than `idle_after` ago;
//! 5. other programs use more than `cpu_threshold_percent` of all cores.
//!
//! The decision itself is the pure function [`decide`], fed with
//! [`Readings`] from pluggable sources ([`sources`]: real Linux ones and
//! [`fake`] ones for tests). [`spawn`] runs it on its own thread every
//! `tick` (default 250 ms, so compute stops well within a second of user
//! activity), pauses and resumes registered units in place through their
//! `UnitControl` ([`UnitSet`]) and publishes a [`GovernorSnapshot`] on a
//! `tokio::sync::watch` channel for `formic status` and the scheduler.
//!
//! The governor runs on a plain thread rather than a tokio task because its
//! sources are blocking reads (procfs, sysfs, D-Bus through zbus's blocking
//! API, which must not run on a runtime thread).

pub mod fake;
pub mod pause_file;
pub mod sources;
mod units;

use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::preferences::{AllowedHours, Preferences};
pub use sources::{
    Clock, CpuLoadSource, IdleSource, LogindIdleSource, ManualPause, ManualPauseSource, MostActive,
    PowerSource, PowerState, ProcCpuLoad, SysfsPower, SystemClock, UserIdle, X11IdleSource,
    combine_idle,
};
pub use units::{RunningUnit, UnitGuard, UnitLabel, UnitSet, apply_decision, drive_units};

/// Default time between two decisions.
/// Default time between two decisions: a quarter second keeps "user
/// active → compute stopped" well under the 1 s goal, and a tick costs only
/// two small procfs reads, a sysfs scan and one D-Bus round trip.
pub const DEFAULT_TICK: Duration = Duration::from_millis(250);

/// Whether computing may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Running,
    Suspended,
}

/// Why the governor decided what it did.
#[derive(Debug, Clone, PartialEq)]
pub enum Reason {
    /// `formic pause`; `until` is `None` for "until `formic resume`".
    ManuallyPaused {
        until: Option<SystemTime>,
    },
    OutsideAllowedHours {
        window: AllowedHours,
    },
    OnBattery,
    UserActive {
        idle_for: Duration,
        idle_after: Duration,
    },
    CpuBusy {
        percent: f32,
        threshold: u8,
    },
    AllClear,
}

/// The kind of a [`Reason`], without its changing details: what status
/// shows and what "the decision changed" compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReasonKind {
    ManuallyPaused,
    OutsideAllowedHours,
    OnBattery,
    UserActive,
    CpuBusy,
    AllClear,
}

impl Reason {
    pub fn kind(&self) -> ReasonKind {
        match self {
            Reason::ManuallyPaused { .. } => ReasonKind::ManuallyPaused,
            Reason::OutsideAllowedHours { .. } => ReasonKind::OutsideAllowedHours,
            Reason::OnBattery => ReasonKind::OnBattery,
            Reason::UserActive { .. } => ReasonKind::UserActive,
            Reason::CpuBusy { .. } => ReasonKind::CpuBusy,
            Reason::AllClear => ReasonKind::AllClear,
        }
    }

    /// Whether `other` is the same cause; details that drift every tick
    /// (idle time, CPU percent) do not count, a new pause deadline does.
    fn same_cause(&self, other: &Reason) -> bool {
        match (self, other) {
            (Reason::ManuallyPaused { until: a }, Reason::ManuallyPaused { until: b }) => a == b,
            (
                Reason::OutsideAllowedHours { window: a },
                Reason::OutsideAllowedHours { window: b },
            ) => a == b,
            _ => self.kind() == other.kind(),
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::ManuallyPaused { until: None } => {
                write!(f, "paused by the volunteer until `formic resume`")
            }
            Reason::ManuallyPaused { until: Some(t) } => {
                write!(f, "paused by the volunteer until {} (unix ms)", unix_ms(*t))
            }
            Reason::OutsideAllowedHours { window } => {
                write!(f, "outside the allowed hours {window}")
            }
            Reason::OnBattery => write!(f, "running on battery"),
            Reason::UserActive {
                idle_for,
                idle_after,
            } => write!(
                f,
                "the user is active (last input {}s ago, computing after {}s idle)",
                idle_for.as_secs(),
                idle_after.as_secs()
            ),
            Reason::CpuBusy { percent, threshold } => write!(
                f,
                "other programs use {percent:.0}% of the CPU (threshold {threshold}%)"
            ),
            Reason::AllClear => write!(f, "the machine is idle"),
        }
    }
}

/// Milliseconds since the Unix epoch (0 for times before it).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// What the sources said at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct Readings {
    pub now: SystemTime,
    /// Local wall-clock minutes after midnight (0..1440).
    pub local_minute_of_day: u16,
    pub user_idle: UserIdle,
    /// Share of all cores used by other programs, 0..=100; `None` until a
    /// first interval has been measured.
    pub other_cpu_percent: Option<f32>,
    pub power: PowerState,
    pub manual_pause: ManualPause,
}

/// The parts of the preferences the decision depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub idle_after: Duration,
    pub cpu_threshold_percent: u8,
    pub run_on_battery: bool,
    pub allowed_hours: Option<AllowedHours>,
}

impl From<&Preferences> for Policy {
    fn from(p: &Preferences) -> Self {
        Policy {
            idle_after: p.idle_after,
            cpu_threshold_percent: p.cpu_threshold_percent,
            run_on_battery: p.run_on_battery,
            allowed_hours: p.allowed_hours,
        }
    }
}

/// The decision: pure, so every rule is tested with plain values.
pub fn decide(r: &Readings, policy: &Policy) -> (Decision, Reason) {
    let suspended = |reason| (Decision::Suspended, reason);
    match r.manual_pause {
        ManualPause::Forever => return suspended(Reason::ManuallyPaused { until: None }),
        ManualPause::Until(t) if t > r.now => {
            return suspended(Reason::ManuallyPaused { until: Some(t) });
        }
        _ => {}
    }
    if let Some(window) = policy.allowed_hours
        && !window.contains(r.local_minute_of_day)
    {
        return suspended(Reason::OutsideAllowedHours { window });
    }
    if r.power == PowerState::Battery && !policy.run_on_battery {
        return suspended(Reason::OnBattery);
    }
    // No session or no way to tell counts as idle: a headless server has
    // no user to disturb, and the CPU rule still protects its workload.
    if let UserIdle::IdleFor(idle_for) = r.user_idle
        && idle_for < policy.idle_after
    {
        return suspended(Reason::UserActive {
            idle_for,
            idle_after: policy.idle_after,
        });
    }
    if let Some(percent) = r.other_cpu_percent
        && percent > f32::from(policy.cpu_threshold_percent)
    {
        return suspended(Reason::CpuBusy {
            percent,
            threshold: policy.cpu_threshold_percent,
        });
    }
    (Decision::Running, Reason::AllClear)
}

/// What `formic status` shows about the governor (the `governor` object of
/// `formic status --json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GovernorSnapshot {
    pub state: Decision,
    pub reason: ReasonKind,
    /// The reason in words, as it was when the state or reason last changed.
    pub reason_text: String,
    /// When the state (running/suspended) last changed, in ms since the
    /// Unix epoch.
    pub since_unix_ms: u64,
}

/// All the sources one governor reads.
pub struct Sources {
    pub idle: Box<dyn IdleSource>,
    pub cpu: Box<dyn CpuLoadSource>,
    pub power: Box<dyn PowerSource>,
    pub clock: Box<dyn Clock>,
    pub pause: Box<dyn ManualPauseSource>,
}

impl std::fmt::Debug for Sources {
    // The sources are trait objects with nothing to show.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources").finish_non_exhaustive()
    }
}

impl Sources {
    /// The real sources on Linux: logind over D-Bus for input idle time,
    /// /proc/stat for CPU load, /sys/class/power_supply for power, the
    /// system clock, and `<data_dir>/paused` for manual pauses.
    pub fn linux(data_dir: &std::path::Path) -> Sources {
        Sources {
            idle: Box::new(MostActive(vec![
                Box::new(LogindIdleSource::new()),
                Box::new(X11IdleSource::new()),
            ])),
            cpu: Box::new(ProcCpuLoad::new()),
            power: Box::new(SysfsPower::new()),
            clock: Box::new(SystemClock),
            pause: Box::new(pause_file::FilePauseSource::new(data_dir)),
        }
    }

    /// Takes one reading from every source.
    pub fn read(&mut self) -> Readings {
        let now = self.clock.now();
        Readings {
            now,
            local_minute_of_day: self.clock.local_minute_of_day(now),
            user_idle: self.idle.user_idle(),
            other_cpu_percent: self.cpu.other_cpu_percent(),
            power: self.power.power_state(),
            manual_pause: self.pause.manual_pause(),
        }
    }
}

/// Errors starting the governor.
#[derive(Debug, thiserror::Error)]
pub enum GovernorError {
    #[error("cannot start the governor thread: {0}")]
    Spawn(std::io::Error),
}

#[derive(Debug, Default)]
struct Wake {
    stop: bool,
    nudge: bool,
}

#[derive(Debug, Default)]
struct Control {
    wake: Mutex<Wake>,
    changed: Condvar,
}

/// A running governor. Dropping it stops the thread (without waiting).
pub struct GovernorHandle {
    rx: watch::Receiver<GovernorSnapshot>,
    control: Arc<Control>,
    units: UnitSet,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for GovernorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GovernorHandle")
            .field("units", &self.units)
            .field("running", &self.thread.is_some())
            .finish_non_exhaustive()
    }
}

impl GovernorHandle {
    /// A receiver that sees every change of state or reason.
    pub fn subscribe(&self) -> watch::Receiver<GovernorSnapshot> {
        self.rx.clone()
    }

    /// The current decision.
    pub fn snapshot(&self) -> GovernorSnapshot {
        self.rx.borrow().clone()
    }

    /// The units this governor pauses and resumes.
    pub fn units(&self) -> &UnitSet {
        &self.units
    }

    /// Re-evaluates now instead of at the next tick (e.g. after the pause
    /// file was written by this process).
    pub fn nudge(&self) {
        self.control
            .wake
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .nudge = true;
        self.control.changed.notify_all();
    }

    /// Stops the governor thread and waits for it.
    pub fn shutdown(mut self) {
        self.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    fn stop(&self) {
        self.control
            .wake
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .stop = true;
        self.control.changed.notify_all();
    }
}

impl Drop for GovernorHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts a governor thread that decides every `tick` with `sources` and
/// the current preferences from `prefs`, pauses or resumes `units` on each
/// change, and publishes snapshots. The first decision is taken before this
/// returns, so [`GovernorHandle::snapshot`] is meaningful at once.
pub fn spawn(
    sources: Sources,
    prefs: watch::Receiver<Preferences>,
    units: UnitSet,
    tick: Duration,
) -> Result<GovernorHandle, GovernorError> {
    let control = Arc::new(Control::default());
    // The first reading is taken on the governor thread too: a blocking
    // D-Bus call must not run on a tokio worker, and callers are async.
    let (first_tx, first_rx) = std::sync::mpsc::sync_channel(1);
    let thread = {
        let control = control.clone();
        let units = units.clone();
        std::thread::Builder::new()
            .name("formic-governor".into())
            .spawn(move || run(sources, prefs, units, first_tx, &control, tick))
            .map_err(GovernorError::Spawn)?
    };
    let rx = first_rx.recv().map_err(|_| {
        GovernorError::Spawn(std::io::Error::other(
            "the governor thread ended before its first decision",
        ))
    })?;
    Ok(GovernorHandle {
        rx,
        control,
        units,
        thread: Some(thread),
    })
}

fn log_change(previous: Option<Decision>, decision: Decision, reason: &Reason) {
    match decision {
        Decision::Suspended => tracing::info!(
            state = "suspended",
            reason = ?reason.kind(),
            previous = ?previous,
            "computing suspended: {reason}"
        ),
        Decision::Running => tracing::info!(
            state = "running",
            reason = ?reason.kind(),
            previous = ?previous,
            "computing allowed: {reason}"
        ),
    }
}

fn run(
    mut sources: Sources,
    prefs: watch::Receiver<Preferences>,
    units: UnitSet,
    first: std::sync::mpsc::SyncSender<watch::Receiver<GovernorSnapshot>>,
    control: &Control,
    tick: Duration,
) {
    let policy = Policy::from(&*prefs.borrow());
    let readings = sources.read();
    let (mut decision, mut reason) = decide(&readings, &policy);
    units.apply(decision);
    log_change(None, decision, &reason);
    let mut since = readings.now;
    let (tx, rx) = watch::channel(GovernorSnapshot {
        state: decision,
        reason: reason.kind(),
        reason_text: reason.to_string(),
        since_unix_ms: unix_ms(since),
    });
    if first.send(rx).is_err() {
        return;
    }
    drop(first);
    loop {
        {
            let mut wake = control.wake.lock().unwrap_or_else(PoisonError::into_inner);
            // The governor's own OS thread, outside any runtime: it waits
            // on a condvar with the OS clock.
            #[allow(clippy::disallowed_methods)]
            let deadline = std::time::Instant::now() + tick;
            while !wake.stop && !wake.nudge {
                #[allow(clippy::disallowed_methods)]
                let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) else {
                    break;
                };
                wake = control
                    .changed
                    .wait_timeout(wake, left)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            if wake.stop {
                return;
            }
            wake.nudge = false;
        }
        let policy = Policy::from(&*prefs.borrow());
        let readings = sources.read();
        let (new_decision, new_reason) = decide(&readings, &policy);
        if new_decision == decision && new_reason.same_cause(&reason) {
            continue;
        }
        // Units first: stopping compute is the point, status can wait.
        if new_decision != decision {
            units.apply(new_decision);
            since = readings.now;
        }
        log_change(Some(decision), new_decision, &new_reason);
        tx.send_replace(GovernorSnapshot {
            state: new_decision,
            reason: new_reason.kind(),
            reason_text: new_reason.to_string(),
            since_unix_ms: unix_ms(since),
        });
        decision = new_decision;
        reason = new_reason;
    }
}
