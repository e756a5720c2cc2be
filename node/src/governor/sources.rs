//! Where the governor's readings come from: one trait per kind of reading,
//! with the real Linux implementation next to it.
//!
//! Every source is infallible from the governor's point of view: a source
//! that cannot tell answers "unknown", logs why once, and the decision
//! treats unknown as "no objection" — except a corrupt pause file, which
//! counts as paused (see [`super::pause_file`]). Fakes for tests are in
//! [`super::fake`].

// The samplers run on the governor's own OS thread and measure the real
// machine (CPU busy time over a real window), not the async runtime's
// clock, so they read the OS's monotonic clock directly.
#![allow(clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long the user has gone without input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserIdle {
    /// Time since the last keyboard/mouse input (zero while active).
    IdleFor(Duration),
    /// Nobody is logged in locally.
    NoSession,
    /// The source cannot tell (no logind, no D-Bus).
    Unknown,
}

/// Whether the machine runs on mains power.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerState {
    Ac,
    Battery,
    /// No power supply information (typical of desktops and servers).
    Unknown,
}

/// The volunteer's manual pause, as `formic pause` left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManualPause {
    NotPaused,
    /// Paused until this time; at or after it the pause has no effect.
    Until(SystemTime),
    /// Paused until `formic resume`.
    Forever,
}

/// Input idle time.
pub trait IdleSource: Send {
    fn user_idle(&mut self) -> UserIdle;
}

/// CPU use by programs other than this one.
pub trait CpuLoadSource: Send {
    /// Percent of all cores (0..=100) used by other programs since the
    /// previous call; `None` on the first call or when unreadable.
    fn other_cpu_percent(&mut self) -> Option<f32>;
}

/// Mains or battery.
pub trait PowerSource: Send {
    fn power_state(&mut self) -> PowerState;
}

/// Wall clock and local time of day.
pub trait Clock: Send {
    fn now(&mut self) -> SystemTime;
    /// Local minutes after midnight (0..1440) at `now`.
    fn local_minute_of_day(&mut self, now: SystemTime) -> u16;
}

/// The manual pause state.
pub trait ManualPauseSource: Send {
    fn manual_pause(&mut self) -> ManualPause;
}

/// Input idle time from systemd-logind over D-Bus (system bus, the
/// `org.freedesktop.login1.Manager` properties `IdleHint` and
/// `IdleSinceHintMonotonic`). The manager's hint combines all sessions: it
/// is idle only when every session is, which is what "nobody is using this
/// machine" means, and it is idle when there is no session at all. Desktop
/// environments set a graphical session's hint when their own idle timer
/// fires (e.g. GNOME's idle-delay) and clear it on input; logind derives
/// text sessions' hints from their terminals' last input.
///
/// The connection is made lazily and retried at most every 30 s while the
/// bus is unreachable (then the reading is [`UserIdle::Unknown`]).
pub struct LogindIdleSource {
    proxy: Option<zbus::blocking::Proxy<'static>>,
    pacing: ReconnectPacing,
    warned: bool,
}

impl std::fmt::Debug for LogindIdleSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogindIdleSource")
            .field("connected", &self.proxy.is_some())
            .field("pacing", &self.pacing)
            .field("warned", &self.warned)
            .finish()
    }
}

/// How often an unreachable idle-time service (logind, an X server) is
/// tried again.
const RECONNECT_EVERY: Duration = Duration::from_secs(30);

/// Paces connection attempts to a service that may be unreachable, so a
/// missing bus or display costs one attempt per [`RECONNECT_EVERY`], not
/// one per governor tick.
#[derive(Debug, Default)]
struct ReconnectPacing {
    last_attempt: Option<Instant>,
}

impl ReconnectPacing {
    /// Whether to try connecting now; records the attempt if so.
    fn attempt_now(&mut self) -> bool {
        if self
            .last_attempt
            .is_some_and(|t| t.elapsed() < RECONNECT_EVERY)
        {
            return false;
        }
        self.last_attempt = Some(Instant::now());
        true
    }
}

impl Default for LogindIdleSource {
    fn default() -> Self {
        Self::new()
    }
}

impl LogindIdleSource {
    pub fn new() -> Self {
        LogindIdleSource {
            proxy: None,
            pacing: ReconnectPacing::default(),
            warned: false,
        }
    }

    fn connect() -> zbus::Result<zbus::blocking::Proxy<'static>> {
        let conn = zbus::blocking::Connection::system()?;
        zbus::blocking::proxy::Builder::<zbus::blocking::Proxy<'static>>::new(&conn)
            .destination("org.freedesktop.login1")?
            .path("/org/freedesktop/login1")?
            .interface("org.freedesktop.login1.Manager")?
            // A fresh answer each tick: a cache kept by signals could lag.
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
    }

    fn query(proxy: &zbus::blocking::Proxy<'static>) -> zbus::Result<UserIdle> {
        let idle: bool = proxy.get_property("IdleHint")?;
        if !idle {
            return Ok(UserIdle::IdleFor(Duration::ZERO));
        }
        let since_us: u64 = proxy.get_property("IdleSinceHintMonotonic")?;
        let now_us = monotonic_now_us();
        if since_us == 0 {
            // Idle since "never set": no session has reported activity.
            return Ok(UserIdle::NoSession);
        }
        Ok(UserIdle::IdleFor(Duration::from_micros(
            now_us.saturating_sub(since_us),
        )))
    }
}

/// Input idle time from the X server of `$DISPLAY`, through its MIT
/// screensaver extension (`ms_since_user_input`), where one is present: it
/// covers X11 desktops whose session manager never sets logind's idle hint.
/// Without `$DISPLAY` it reports [`UserIdle::Unknown`] and never connects;
/// with one, it connects lazily and retries at most every 30 s.
pub struct X11IdleSource {
    conn: Option<(x11rb::rust_connection::RustConnection, u32)>,
    pacing: ReconnectPacing,
}

impl std::fmt::Debug for X11IdleSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("X11IdleSource")
            .field("connected", &self.conn.is_some())
            .field("pacing", &self.pacing)
            .finish()
    }
}

impl Default for X11IdleSource {
    fn default() -> Self {
        Self::new()
    }
}

impl X11IdleSource {
    pub fn new() -> Self {
        X11IdleSource {
            conn: None,
            pacing: ReconnectPacing::default(),
        }
    }

    fn connect() -> Result<(x11rb::rust_connection::RustConnection, u32), String> {
        let (conn, screen) = x11rb::connect(None).map_err(|e| e.to_string())?;
        let root = x11rb::connection::Connection::setup(&conn)
            .roots
            .get(screen)
            .map(|s| s.root)
            .ok_or("the X server has no such screen")?;
        Ok((conn, root))
    }
}

impl IdleSource for X11IdleSource {
    fn user_idle(&mut self) -> UserIdle {
        if std::env::var_os("DISPLAY").is_none() {
            return UserIdle::Unknown;
        }
        if self.conn.is_none() {
            if !self.pacing.attempt_now() {
                return UserIdle::Unknown;
            }
            match Self::connect() {
                Ok(c) => self.conn = Some(c),
                Err(error) => {
                    tracing::debug!(%error, "no X server to ask for input idle time");
                    return UserIdle::Unknown;
                }
            }
        }
        let Some((conn, root)) = &self.conn else {
            return UserIdle::Unknown;
        };
        let reply = x11rb::protocol::screensaver::query_info(conn, *root)
            .map_err(|e| e.to_string())
            .and_then(|cookie| cookie.reply().map_err(|e| e.to_string()));
        match reply {
            Ok(info) => {
                UserIdle::IdleFor(Duration::from_millis(u64::from(info.ms_since_user_input)))
            }
            Err(error) => {
                tracing::debug!(%error, "the X server stopped answering; reconnecting later");
                self.conn = None;
                UserIdle::Unknown
            }
        }
    }
}

/// Several idle sources read as one, trusting the most active: any input
/// anywhere means the user is there. A source that cannot tell does not
/// count; "no session" stands only when no source saw input.
pub struct MostActive(pub Vec<Box<dyn IdleSource>>);

impl std::fmt::Debug for MostActive {
    // The sources are trait objects: only their number shows.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MostActive")
            .field("sources", &self.0.len())
            .finish()
    }
}

impl IdleSource for MostActive {
    fn user_idle(&mut self) -> UserIdle {
        let readings: Vec<UserIdle> = self.0.iter_mut().map(|s| s.user_idle()).collect();
        combine_idle(&readings)
    }
}

/// See [`MostActive`].
pub fn combine_idle(readings: &[UserIdle]) -> UserIdle {
    let shortest = readings
        .iter()
        .filter_map(|r| match r {
            UserIdle::IdleFor(d) => Some(*d),
            _ => None,
        })
        .min();
    match shortest {
        Some(d) => UserIdle::IdleFor(d),
        None if readings.contains(&UserIdle::NoSession) => UserIdle::NoSession,
        None => UserIdle::Unknown,
    }
}

/// CLOCK_MONOTONIC in microseconds, the clock of logind's `*Monotonic`
/// (0 if unreadable, which reads as "active just now": the safe side).
fn monotonic_now_us() -> u64 {
    crate::os_clocks::monotonic().map_or(0, |t| u64::try_from(t.as_micros()).unwrap_or(u64::MAX))
}

impl IdleSource for LogindIdleSource {
    fn user_idle(&mut self) -> UserIdle {
        if self.proxy.is_none() {
            if !self.pacing.attempt_now() {
                return UserIdle::Unknown;
            }
            match Self::connect() {
                Ok(p) => self.proxy = Some(p),
                Err(error) => {
                    if !self.warned {
                        self.warned = true;
                        tracing::warn!(
                            %error,
                            "cannot reach systemd-logind on the system D-Bus; input idle time unknown, \
                             treating the machine as having no active user"
                        );
                    }
                    return UserIdle::Unknown;
                }
            }
        }
        let Some(proxy) = &self.proxy else {
            return UserIdle::Unknown;
        };
        match Self::query(proxy) {
            Ok(idle) => {
                if self.warned {
                    self.warned = false;
                    tracing::info!("systemd-logind reachable again; input idle time known");
                }
                idle
            }
            Err(error) => {
                tracing::warn!(%error, "reading logind's idle hint failed; will reconnect");
                self.proxy = None;
                self.warned = true;
                UserIdle::Unknown
            }
        }
    }
}

/// CPU load from /proc/stat deltas minus this process's own CPU time from
/// /proc/self/stat (both in clock ticks), so Formic's own computing never
/// counts as "the machine is busy".
///
/// The load is measured over windows of at least [`CPU_WINDOW`]: /proc/stat
/// counts in 10 ms ticks, so a 250 ms governor tick on a 2-core machine
/// would see only 50 ticks and flap on every short burst. Between windows
/// the last figure is repeated.
#[derive(Debug)]
pub struct ProcCpuLoad {
    proc_root: PathBuf,
    previous: Option<(Instant, CpuSample)>,
    last: Option<f32>,
}

/// Shortest interval the CPU load is measured over.
pub const CPU_WINDOW: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
struct CpuSample {
    total: u64,
    busy: u64,
    own: u64,
}

impl Default for ProcCpuLoad {
    fn default() -> Self {
        Self::new()
    }
}

impl ProcCpuLoad {
    /// Reads /proc; takes a first sample now so the first call has an interval.
    pub fn new() -> Self {
        Self::with_root(Path::new("/proc"))
    }

    /// Reads `<root>/stat` and `<root>/self/stat` (for tests).
    pub fn with_root(root: &Path) -> Self {
        let mut s = ProcCpuLoad {
            proc_root: root.to_path_buf(),
            previous: None,
            last: None,
        };
        s.previous = s.sample().map(|x| (Instant::now(), x));
        s
    }

    fn sample(&self) -> Option<CpuSample> {
        let stat = std::fs::read_to_string(self.proc_root.join("stat")).ok()?;
        let own = std::fs::read_to_string(self.proc_root.join("self/stat")).ok()?;
        let (total, busy) = parse_proc_stat(&stat)?;
        Some(CpuSample {
            total,
            busy,
            own: parse_own_ticks(&own)?,
        })
    }
}

/// (total, busy) ticks from the aggregate `cpu` line of /proc/stat.
pub fn parse_proc_stat(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    if fields.len() < 4 {
        return None;
    }
    // user nice system idle iowait irq softirq steal; guest and guest_nice
    // are already included in user and nice.
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields[3] + fields.get(4).copied().unwrap_or(0);
    Some((total, total.saturating_sub(idle)))
}

/// utime + stime ticks of a /proc/<pid>/stat line. The command name in
/// parentheses may contain spaces, so fields are counted after the last ')'.
pub fn parse_own_ticks(text: &str) -> Option<u64> {
    let after = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields after ')' start at field 3 (state); utime is 14, stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

impl CpuLoadSource for ProcCpuLoad {
    fn other_cpu_percent(&mut self) -> Option<f32> {
        if self
            .previous
            .is_some_and(|(at, _)| at.elapsed() < CPU_WINDOW)
        {
            return self.last;
        }
        let now = self.sample().map(|x| (Instant::now(), x));
        let prev = std::mem::replace(&mut self.previous, now);
        self.last = (|| {
            let ((_, prev), (_, now)) = (prev?, now?);
            let total = now.total.checked_sub(prev.total)?;
            if total == 0 {
                return None;
            }
            let busy = now.busy.saturating_sub(prev.busy);
            let own = now.own.saturating_sub(prev.own);
            let other = busy.saturating_sub(own);
            Some((other as f32 * 100.0 / total as f32).clamp(0.0, 100.0))
        })();
        self.last
    }
}

/// Power from /sys/class/power_supply: on AC when any `Mains` or `USB`
/// supply is online; on battery when a battery is `Discharging`, or when
/// there are mains supplies and all are offline; unknown without supplies.
#[derive(Debug)]
pub struct SysfsPower {
    root: PathBuf,
}

impl Default for SysfsPower {
    fn default() -> Self {
        Self::new()
    }
}

impl SysfsPower {
    pub fn new() -> Self {
        Self::with_root(Path::new("/sys/class/power_supply"))
    }

    /// Reads supplies under `root` (for tests).
    pub fn with_root(root: &Path) -> Self {
        SysfsPower {
            root: root.to_path_buf(),
        }
    }
}

fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

impl PowerSource for SysfsPower {
    fn power_state(&mut self) -> PowerState {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return PowerState::Unknown;
        };
        let (mut mains, mut mains_online, mut battery, mut discharging) =
            (false, false, false, false);
        for entry in entries.flatten() {
            let dir = entry.path();
            match read_trimmed(&dir.join("type")).as_deref() {
                Some("Mains") | Some("USB") => {
                    mains = true;
                    if read_trimmed(&dir.join("online")).as_deref() == Some("1") {
                        mains_online = true;
                    }
                }
                Some("Battery") => {
                    // Peripheral batteries (mice, headsets) have scope "Device".
                    if read_trimmed(&dir.join("scope")).as_deref() == Some("Device") {
                        continue;
                    }
                    battery = true;
                    if read_trimmed(&dir.join("status")).as_deref() == Some("Discharging") {
                        discharging = true;
                    }
                }
                _ => {}
            }
        }
        if mains_online {
            PowerState::Ac
        } else if discharging || (mains && battery) {
            PowerState::Battery
        } else if mains || battery {
            PowerState::Ac
        } else {
            PowerState::Unknown
        }
    }
}

/// The system clock and the local time zone (through `localtime_r`, which
/// honours TZ and /etc/localtime).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&mut self) -> SystemTime {
        SystemTime::now()
    }

    fn local_minute_of_day(&mut self, now: SystemTime) -> u16 {
        let secs = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let t = libc::time_t::try_from(secs).unwrap_or(0);
        // SAFETY: an all-zero `tm` is a valid value to be overwritten.
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        // SAFETY: localtime_r reads one time_t and writes one tm, both valid.
        let ok = unsafe { !libc::localtime_r(&t, &mut tm).is_null() };
        if !ok {
            // Unknown zone: UTC is the best remaining guess.
            return u16::try_from((secs % 86_400) / 60).unwrap_or(0);
        }
        u16::try_from(tm.tm_hour * 60 + tm.tm_min).unwrap_or(0)
    }
}
