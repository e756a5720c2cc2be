//! The manual pause file, `<data-dir>/paused`: how `formic pause` and
//! `formic resume` talk to a running node without the network or the API.
//!
//! The file holds either `forever` or the end of the pause in milliseconds
//! since the Unix epoch, written atomically. Its absence means "not paused";
//! an expired deadline means "not paused" too (the file is left for
//! `formic resume` to remove, so the governor never writes the data dir).
//! A file that cannot be read or understood counts as paused forever: the
//! volunteer asked for a pause, and doing nothing is the safe reading.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::sources::{ManualPause, ManualPauseSource};

/// File name of the pause marker inside the data directory.
pub const PAUSE_FILE: &str = "paused";

/// Errors writing or removing the pause file.
#[derive(Debug, thiserror::Error)]
pub enum PauseFileError {
    #[error("cannot write pause file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot remove pause file {path}: {source}")]
    Remove {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("pause deadline {0:?} from now is too far in the future")]
    TooFar(Duration),
}

/// Path of the pause file in `data_dir`.
pub fn pause_path(data_dir: &Path) -> PathBuf {
    data_dir.join(PAUSE_FILE)
}

/// Pauses computing: until `now + d` for `Some(d)`, until resume for `None`.
/// Returns what was written.
pub fn write_pause(
    data_dir: &Path,
    duration: Option<Duration>,
    now: SystemTime,
) -> Result<ManualPause, PauseFileError> {
    let path = pause_path(data_dir);
    let (pause, text) = match duration {
        None => (ManualPause::Forever, "forever\n".to_owned()),
        Some(d) => {
            let until = now.checked_add(d).ok_or(PauseFileError::TooFar(d))?;
            (
                ManualPause::Until(until),
                format!("{}\n", super::unix_ms(until)),
            )
        }
    };
    crate::data_dir::write_atomic(&path, text.as_bytes(), false)
        .map_err(|source| PauseFileError::Write { path, source })?;
    Ok(pause)
}

/// Removes the pause file; returns whether there was one.
pub fn clear_pause(data_dir: &Path) -> Result<bool, PauseFileError> {
    let path = pause_path(data_dir);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(PauseFileError::Remove { path, source }),
    }
}

/// Parses the file's content; `None` when it is not understood.
pub fn parse_pause(text: &str) -> Option<ManualPause> {
    let t = text.trim();
    if t == "forever" {
        return Some(ManualPause::Forever);
    }
    let ms: u64 = t.parse().ok()?;
    UNIX_EPOCH
        .checked_add(Duration::from_millis(ms))
        .map(ManualPause::Until)
}

/// Reads the pause state in `data_dir` (see the module docs for how
/// unreadable files count). The second value says whether the file was
/// unreadable or corrupt, for the caller to report.
pub fn read_pause(data_dir: &Path) -> (ManualPause, Option<String>) {
    let path = pause_path(data_dir);
    match std::fs::read_to_string(&path) {
        Ok(text) => match parse_pause(&text) {
            Some(p) => (p, None),
            None => (
                ManualPause::Forever,
                Some(format!(
                    "pause file {} is not `forever` or a time in ms: {:?}",
                    path.display(),
                    text.chars().take(40).collect::<String>()
                )),
            ),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (ManualPause::NotPaused, None),
        Err(e) => (
            ManualPause::Forever,
            Some(format!("cannot read pause file {}: {e}", path.display())),
        ),
    }
}

/// [`ManualPauseSource`] reading `<data-dir>/paused` on every tick (one
/// `open` that fails with ENOENT in the common case: cheap).
#[derive(Debug)]
pub struct FilePauseSource {
    data_dir: PathBuf,
    last_problem: Option<String>,
}

impl FilePauseSource {
    pub fn new(data_dir: &Path) -> Self {
        FilePauseSource {
            data_dir: data_dir.to_path_buf(),
            last_problem: None,
        }
    }
}

impl ManualPauseSource for FilePauseSource {
    fn manual_pause(&mut self) -> ManualPause {
        let (pause, problem) = read_pause(&self.data_dir);
        if problem != self.last_problem {
            if let Some(p) = &problem {
                tracing::warn!(problem = %p, "treating the pause file as `paused forever`");
            }
            self.last_problem = problem;
        }
        pause
    }
}
