//! Volunteer preferences: how much of this machine Formic may use, and when.
//!
//! They live in a TOML file, `formic.toml`, in the platform config directory
//! (`~/.config/formic/formic.toml` on Linux; see [`default_path`]). Every key
//! is optional and has a default chosen so that a volunteer who never edits
//! the file is never disturbed: compute only after 3 minutes without input,
//! only while other programs leave the CPU mostly idle, never on battery.
//! `packaging/formic.example.toml` documents every key.
//!
//! The file is validated as a whole: an unknown key (usually a typo), a
//! value of the wrong type or out of range is an error naming the key,
//! because silently ignoring a misspelt `run_on_batery = false` would do the
//! opposite of what the volunteer asked. A running node re-reads the file
//! on SIGHUP ([`spawn_reload_on_sighup`]); a bad file then keeps the previous
//! preferences and logs why.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::watch;

/// File name of the preferences inside the config directory.
pub const PREFERENCES_FILE: &str = "formic.toml";

/// Default input-idle time before computing starts.
pub const DEFAULT_IDLE_AFTER: Duration = Duration::from_secs(180);
/// Default ceiling on other programs' CPU use, in percent of all cores.
pub const DEFAULT_CPU_THRESHOLD_PERCENT: u8 = 25;
/// Default memory ceiling for one unit (matches the sandbox's default).
pub const DEFAULT_MAX_MEMORY: u64 = 256 * 1024 * 1024;
/// Default disk quota for the blob store.
pub const DEFAULT_DISK_QUOTA: u64 = 10 * 1024 * 1024 * 1024;
/// Smallest memory ceiling accepted for one unit: one wasm page is 64 KiB,
/// and anything under 1 MiB cannot run a real app.
pub const MIN_MAX_MEMORY: u64 = 1024 * 1024;
/// Largest memory ceiling accepted for one unit (wasm32's address space).
pub const MAX_MAX_MEMORY: u64 = 4 * 1024 * 1024 * 1024;
/// Smallest disk quota accepted: enough for a few apps and inputs.
pub const MIN_DISK_QUOTA: u64 = 16 * 1024 * 1024;
/// Largest thread count accepted; more is certainly a typo.
pub const MAX_THREADS: usize = 1024;
/// Longest idle_after accepted (one week); longer means "never", which is
/// what not running the node is for.
pub const MAX_IDLE_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);

/// Errors loading or validating preferences. Every variant names the file
/// and, where it is about one key, the key.
#[derive(Debug, thiserror::Error)]
pub enum PreferencesError {
    #[error("cannot read preferences file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("preferences file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("preferences file {path}: key `{key}`: {problem}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        problem: String,
    },
    #[error("preference `{key}`: {problem}")]
    InvalidOverride { key: &'static str, problem: String },
    #[error("cannot listen for SIGHUP to reload preferences: {0}")]
    Signal(std::io::Error),
}

impl PreferencesError {
    /// The key the error is about, when it is about one key.
    pub fn key(&self) -> Option<&str> {
        match self {
            PreferencesError::Invalid { key, .. }
            | PreferencesError::InvalidOverride { key, .. } => Some(key),
            _ => None,
        }
    }
}

/// A daily window of local wall-clock time, e.g. `22:00-07:00`. The start
/// is inclusive and the end exclusive; a window whose end is before its
/// start wraps past midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllowedHours {
    /// Minutes after local midnight, 0..1440.
    pub start_minute: u16,
    /// Minutes after local midnight, 0..=1440.
    pub end_minute: u16,
}

impl AllowedHours {
    /// Parses `HH:MM-HH:MM` (24-hour clock; `24:00` allowed as an end).
    pub fn parse(s: &str) -> Result<AllowedHours, String> {
        let (a, b) = s
            .trim()
            .split_once('-')
            .ok_or_else(|| format!("{s:?} is not a window like \"22:00-07:00\""))?;
        let start = parse_clock(a.trim(), false)?;
        let end = parse_clock(b.trim(), true)?;
        if start == end {
            return Err(format!(
                "{s:?} is an empty window; leave allowed_hours empty to allow all hours"
            ));
        }
        Ok(AllowedHours {
            start_minute: start,
            end_minute: end,
        })
    }

    /// Whether `minute_of_day` (0..1440, local time) is inside the window.
    pub fn contains(&self, minute_of_day: u16) -> bool {
        let (s, e) = (self.start_minute, self.end_minute);
        if s < e {
            (s..e).contains(&minute_of_day)
        } else {
            // Wraps midnight: 22:00-07:00 is [22:00, 24:00) ∪ [00:00, 07:00).
            minute_of_day >= s || minute_of_day < e
        }
    }
}

impl std::fmt::Display for AllowedHours {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:02}:{:02}-{:02}:{:02}",
            self.start_minute / 60,
            self.start_minute % 60,
            self.end_minute / 60,
            self.end_minute % 60
        )
    }
}

/// `HH:MM` → minutes after midnight; `24:00` only when `allow_24`.
fn parse_clock(s: &str, allow_24: bool) -> Result<u16, String> {
    let bad = || format!("{s:?} is not a time like \"07:30\"");
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    if h.is_empty() || h.len() > 2 || m.len() != 2 {
        return Err(bad());
    }
    let h: u16 = h.parse().map_err(|_| bad())?;
    let m: u16 = m.parse().map_err(|_| bad())?;
    if m >= 60 || h > 24 || (h == 24 && (m != 0 || !allow_24)) {
        return Err(format!("{s:?} is not a time of day"));
    }
    Ok(h * 60 + m)
}

/// Validated preferences, with every default filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preferences {
    /// Compute threads. Default: all cores but one, at least one.
    pub threads: usize,
    /// Compute only after this long without keyboard or mouse input.
    pub idle_after: Duration,
    /// Suspend while other programs use more than this share of all cores.
    pub cpu_threshold_percent: u8,
    /// Compute while running on battery.
    pub run_on_battery: bool,
    /// Compute only inside this daily window; `None` = at any hour.
    pub allowed_hours: Option<AllowedHours>,
    /// Memory ceiling for one unit, in bytes.
    pub max_memory: u64,
    /// Disk space the blob store may use, in bytes: beyond it the least
    /// recently used unpinned blobs are evicted (see [`crate::blob_store`]).
    pub disk_quota: u64,
    /// Data directory; `None` = the platform default (or `--data-dir`).
    pub data_dir: Option<PathBuf>,
    /// Peers to join the network through, besides `--bootstrap` and
    /// [`BOOTSTRAP_ENV`] (see [`bootstrap_list`]).
    pub bootstrap: Vec<libp2p::Multiaddr>,
    /// Ask the home router for a port mapping (UPnP IGD), so peers can dial
    /// this node directly where the router allows it.
    pub upnp: bool,
}

/// The default thread count: all cores but one, so the volunteer's own
/// work always finds a free core, and at least one.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .saturating_sub(1)
        .max(1)
}

impl Default for Preferences {
    fn default() -> Self {
        Preferences {
            threads: default_threads(),
            idle_after: DEFAULT_IDLE_AFTER,
            cpu_threshold_percent: DEFAULT_CPU_THRESHOLD_PERCENT,
            run_on_battery: false,
            allowed_hours: None,
            max_memory: DEFAULT_MAX_MEMORY,
            disk_quota: DEFAULT_DISK_QUOTA,
            data_dir: None,
            bootstrap: Vec::new(),
            upnp: true,
        }
    }
}

/// The file as written: quantities are text ("3m", "10GiB") so the file
/// reads like the command line, and every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPreferences {
    threads: Option<i64>,
    idle_after: Option<String>,
    cpu_threshold_percent: Option<i64>,
    run_on_battery: Option<bool>,
    allowed_hours: Option<String>,
    max_memory: Option<String>,
    disk_quota: Option<String>,
    data_dir: Option<PathBuf>,
    bootstrap: Option<Vec<String>>,
    upnp: Option<bool>,
}

/// Values that take precedence over the file, e.g. from command-line flags.
/// `None` leaves the file's (or default) value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PreferenceOverrides {
    pub threads: Option<usize>,
    pub idle_after: Option<Duration>,
    pub cpu_threshold_percent: Option<u8>,
    pub run_on_battery: Option<bool>,
    /// `Some(None)` clears the window (compute at any hour).
    pub allowed_hours: Option<Option<AllowedHours>>,
    pub max_memory: Option<u64>,
    pub disk_quota: Option<u64>,
    pub data_dir: Option<PathBuf>,
}

/// The default location of the preferences file, or `None` when the
/// platform has no home directory.
pub fn default_path() -> Option<PathBuf> {
    directories::ProjectDirs::from("org", "Formic", "formic")
        .map(|d| d.config_dir().join(PREFERENCES_FILE))
}

/// Environment variable with more bootstrap peers, comma-separated: for
/// services and containers, where flags are fixed by the unit file.
pub const BOOTSTRAP_ENV: &str = "FORMIC_BOOTSTRAP";

/// Most bootstrap peers taken from the file and the environment together:
/// a few well-kept ones are enough to join, and more only slow the start.
pub const MAX_BOOTSTRAP: usize = 64;

/// Parses bootstrap multiaddrs, naming the first bad one.
fn parse_bootstrap<'a>(
    items: impl Iterator<Item = &'a str>,
) -> Result<Vec<libp2p::Multiaddr>, String> {
    let mut out = Vec::new();
    for (i, item) in items.enumerate() {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let addr: libp2p::Multiaddr = item
            .parse()
            .map_err(|e| format!("entry {} ({item:?}) is not a multiaddr: {e}", i + 1))?;
        if out.len() == MAX_BOOTSTRAP {
            return Err(format!("more than {MAX_BOOTSTRAP} peers"));
        }
        if !out.contains(&addr) {
            out.push(addr);
        }
    }
    Ok(out)
}

/// Why [`BOOTSTRAP_ENV`] could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{BOOTSTRAP_ENV}: {problem}")]
pub struct BootstrapEnvError {
    problem: String,
}

/// Parses the value of [`BOOTSTRAP_ENV`] (comma-separated multiaddrs).
pub fn parse_bootstrap_env(value: &str) -> Result<Vec<libp2p::Multiaddr>, BootstrapEnvError> {
    parse_bootstrap(value.split(',')).map_err(|problem| BootstrapEnvError { problem })
}

/// The peers a node joins through: those given with `--bootstrap` first,
/// then [`BOOTSTRAP_ENV`]'s, then the preferences file's, without
/// duplicates. (Peers remembered from earlier runs in `peers.json` are
/// dialled besides these by the network layer.)
pub fn bootstrap_list(
    flags: &[libp2p::Multiaddr],
    env: Option<&str>,
    prefs: &Preferences,
) -> Result<Vec<libp2p::Multiaddr>, BootstrapEnvError> {
    let from_env = match env {
        Some(v) => parse_bootstrap_env(v)?,
        None => Vec::new(),
    };
    let mut out: Vec<libp2p::Multiaddr> = Vec::new();
    for addr in flags.iter().chain(&from_env).chain(&prefs.bootstrap) {
        if !out.contains(addr) {
            out.push(addr.clone());
        }
    }
    Ok(out)
}

/// [`bootstrap_list`] with the process's own environment.
pub fn bootstrap_list_from_env(
    flags: &[libp2p::Multiaddr],
    prefs: &Preferences,
) -> Result<Vec<libp2p::Multiaddr>, BootstrapEnvError> {
    let env = std::env::var(BOOTSTRAP_ENV).ok();
    bootstrap_list(flags, env.as_deref(), prefs)
}

/// A range/shape check on one key, independent of where the value came from.
fn check_threads(n: i64) -> Result<usize, String> {
    if n == 0 {
        // 0 is documented as "automatic", like an absent key.
        return Ok(default_threads());
    }
    usize::try_from(n)
        .ok()
        .filter(|&n| n <= MAX_THREADS)
        .ok_or_else(|| format!("{n} is out of range (0 = automatic, or 1..={MAX_THREADS})"))
}

fn check_idle_after(d: Duration) -> Result<Duration, String> {
    if d > MAX_IDLE_AFTER {
        return Err(format!("{d:?} is longer than the maximum of 7 days"));
    }
    Ok(d)
}

fn check_cpu_threshold(p: i64) -> Result<u8, String> {
    u8::try_from(p)
        .ok()
        .filter(|p| (1..=100).contains(p))
        .ok_or_else(|| format!("{p} is out of range (1..=100 percent)"))
}

fn check_max_memory(b: u64) -> Result<u64, String> {
    if !(MIN_MAX_MEMORY..=MAX_MAX_MEMORY).contains(&b) {
        return Err(format!(
            "{b} bytes is out of range (1 MiB ..= 4 GiB per unit)"
        ));
    }
    Ok(b)
}

fn check_disk_quota(b: u64) -> Result<u64, String> {
    if b < MIN_DISK_QUOTA {
        return Err(format!("{b} bytes is below the minimum of 16 MiB"));
    }
    Ok(b)
}

impl Preferences {
    /// Reads and validates the preferences file at `path`. A missing file
    /// is an error here; see [`Preferences::load_or_default`].
    pub fn load(path: &Path) -> Result<Preferences, PreferencesError> {
        let text = std::fs::read_to_string(path).map_err(|source| PreferencesError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// Like [`Preferences::load`], but a file that does not exist gives the
    /// defaults: most volunteers never write one.
    pub fn load_or_default(path: &Path) -> Result<Preferences, PreferencesError> {
        match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Preferences::default()),
            _ => Self::load(path),
        }
    }

    /// Parses and validates preferences from TOML text; `path` only names
    /// the source in errors.
    pub fn from_toml(text: &str, path: &Path) -> Result<Preferences, PreferencesError> {
        let raw: RawPreferences = toml::from_str(text).map_err(|e| PreferencesError::Parse {
            path: path.to_path_buf(),
            // toml's message names the key and shows the offending line.
            message: e.to_string(),
        })?;
        let invalid = |key: &'static str, problem: String| PreferencesError::Invalid {
            path: path.to_path_buf(),
            key,
            problem,
        };
        let mut p = Preferences::default();
        if let Some(n) = raw.threads {
            p.threads = check_threads(n).map_err(|e| invalid("threads", e))?;
        }
        if let Some(s) = raw.idle_after {
            let d = formic_work_units::parse_duration(&s)
                .map_err(|e| invalid("idle_after", format!("{s:?}: {e}")))?;
            p.idle_after = check_idle_after(d).map_err(|e| invalid("idle_after", e))?;
        }
        if let Some(n) = raw.cpu_threshold_percent {
            p.cpu_threshold_percent =
                check_cpu_threshold(n).map_err(|e| invalid("cpu_threshold_percent", e))?;
        }
        if let Some(b) = raw.run_on_battery {
            p.run_on_battery = b;
        }
        if let Some(s) = raw.allowed_hours {
            p.allowed_hours = if s.trim().is_empty() {
                None
            } else {
                Some(AllowedHours::parse(&s).map_err(|e| invalid("allowed_hours", e))?)
            };
        }
        if let Some(s) = raw.max_memory {
            let b = formic_work_units::parse_size(&s)
                .map_err(|e| invalid("max_memory", format!("{s:?}: {e}")))?;
            p.max_memory = check_max_memory(b).map_err(|e| invalid("max_memory", e))?;
        }
        if let Some(s) = raw.disk_quota {
            let b = formic_work_units::parse_size(&s)
                .map_err(|e| invalid("disk_quota", format!("{s:?}: {e}")))?;
            p.disk_quota = check_disk_quota(b).map_err(|e| invalid("disk_quota", e))?;
        }
        if let Some(d) = raw.data_dir {
            if d.as_os_str().is_empty() {
                return Err(invalid("data_dir", "is empty".into()));
            }
            p.data_dir = Some(d);
        }
        if let Some(b) = raw.upnp {
            p.upnp = b;
        }
        if let Some(list) = raw.bootstrap {
            p.bootstrap = parse_bootstrap(list.iter().map(String::as_str))
                .map_err(|e| invalid("bootstrap", e))?;
        }
        Ok(p)
    }

    /// Applies `overrides` on top, validating them with the same rules as
    /// the file.
    pub fn apply_overrides(
        mut self,
        overrides: &PreferenceOverrides,
    ) -> Result<Preferences, PreferencesError> {
        let invalid =
            |key: &'static str, problem: String| PreferencesError::InvalidOverride { key, problem };
        if let Some(n) = overrides.threads {
            let n = i64::try_from(n).unwrap_or(i64::MAX);
            self.threads = check_threads(n).map_err(|e| invalid("threads", e))?;
        }
        if let Some(d) = overrides.idle_after {
            self.idle_after = check_idle_after(d).map_err(|e| invalid("idle_after", e))?;
        }
        if let Some(p) = overrides.cpu_threshold_percent {
            self.cpu_threshold_percent = check_cpu_threshold(i64::from(p))
                .map_err(|e| invalid("cpu_threshold_percent", e))?;
        }
        if let Some(b) = overrides.run_on_battery {
            self.run_on_battery = b;
        }
        if let Some(w) = overrides.allowed_hours {
            self.allowed_hours = w;
        }
        if let Some(b) = overrides.max_memory {
            self.max_memory = check_max_memory(b).map_err(|e| invalid("max_memory", e))?;
        }
        if let Some(b) = overrides.disk_quota {
            self.disk_quota = check_disk_quota(b).map_err(|e| invalid("disk_quota", e))?;
        }
        if let Some(d) = &overrides.data_dir {
            self.data_dir = Some(d.clone());
        }
        Ok(self)
    }
}

/// Re-reads `path` (plus `overrides`) each time the process gets SIGHUP and
/// publishes the result on `tx`. A file that fails to load or validate is
/// logged and the previous preferences stay in force, so a typo made while
/// the node runs never stops it. Must be called inside a tokio runtime; the
/// task ends when every receiver of `tx` is gone.
pub fn spawn_reload_on_sighup(
    path: PathBuf,
    overrides: PreferenceOverrides,
    tx: watch::Sender<Preferences>,
) -> Result<tokio::task::JoinHandle<()>, PreferencesError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup()).map_err(PreferencesError::Signal)?;
    Ok(tokio::spawn(async move {
        loop {
            tokio::select! {
                got = hup.recv() => {
                    if got.is_none() {
                        break;
                    }
                }
                () = tx.closed() => break,
            }
            match Preferences::load_or_default(&path).and_then(|p| p.apply_overrides(&overrides)) {
                Ok(prefs) => {
                    tracing::info!(path = %path.display(), ?prefs, "preferences reloaded on SIGHUP");
                    tx.send_replace(prefs);
                }
                Err(error) => {
                    tracing::warn!(
                        path = %path.display(),
                        %error,
                        "preferences not reloaded; keeping the previous ones"
                    );
                }
            }
        }
    }))
}
