//! The node's data directory: where it is and how files in it are written.
//!
//! One directory holds everything a node owns (identity, owner key, blobs,
//! state, API address/token), so `--data-dir` is enough to run several
//! independent nodes on one machine.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Errors locating or preparing the data directory.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error(
        "no home directory found to place the data directory; pass --data-dir or set FORMIC_DATA_DIR"
    )]
    NoDefault,
    #[error("cannot create data directory {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Resolves the data directory: the explicit one, else the platform's data
/// directory for Formic, and makes sure it exists.
pub fn resolve(explicit: Option<&Path>) -> Result<PathBuf, DataDirError> {
    let dir = match explicit {
        Some(p) => p.to_path_buf(),
        None => directories::ProjectDirs::from("org", "Formic", "formic")
            .ok_or(DataDirError::NoDefault)?
            .data_dir()
            .to_path_buf(),
    };
    fs::create_dir_all(&dir).map_err(|source| DataDirError::Create {
        path: dir.clone(),
        source,
    })?;
    Ok(dir)
}

/// Writes `bytes` to `path` atomically: a temporary file in the same
/// directory, fsynced, then renamed over the target. A crash leaves either the
/// old file or the new one, never a torn mix. `private` makes the file
/// readable by the owner only (0600), for keys and tokens.
pub fn write_atomic(path: &Path, bytes: &[u8], private: bool) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".to_owned());
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    {
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            if private {
                opts.mode(0o600);
            }
        }
        let mut f = opts.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = private;
    fs::rename(&tmp, path)?;
    // Make the rename itself durable.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
