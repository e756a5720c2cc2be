//! Installing the agent as a systemd user service (`formic service`).
//!
//! The unit is `packaging/formic.service` with `ExecStart` pointed at the
//! binary that runs this code, so `cargo install`ed and downloaded binaries
//! work without editing anything. It goes to
//! `$XDG_CONFIG_HOME/systemd/user/formic.service` (default
//! `~/.config/systemd/user/`), where `systemctl --user` finds it.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Name of the user unit.
pub const USER_UNIT_NAME: &str = "formic.service";

/// The user unit as shipped (ExecStart=/usr/bin/formic node).
pub const USER_UNIT_TEMPLATE: &str = include_str!("../../packaging/formic.service");

/// Errors installing or removing the service.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(
        "neither XDG_CONFIG_HOME nor HOME is set to an absolute path; cannot place the user unit"
    )]
    NoConfigDir,
    #[error("cannot find the path of the running formic binary: {0}")]
    CurrentExe(std::io::Error),
    #[error("cannot create {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot remove {path}: {source}")]
    Remove {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "`systemctl` was not found, so the unit could not be {action}; this needs a systemd-based \
         system (use --no-enable to only write the unit file)"
    )]
    SystemctlMissing { action: &'static str },
    #[error("`systemctl {args}` failed ({status}): {stderr}")]
    Systemctl {
        args: String,
        status: String,
        stderr: String,
    },
}

/// Directory for systemd user units: `$XDG_CONFIG_HOME/systemd/user`,
/// else `$HOME/.config/systemd/user`.
pub fn user_unit_dir() -> Result<PathBuf, ServiceError> {
    let absolute = |v: std::ffi::OsString| {
        let p = PathBuf::from(v);
        p.is_absolute().then_some(p)
    };
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .and_then(absolute)
        .or_else(|| {
            std::env::var_os("HOME")
                .and_then(absolute)
                .map(|h| h.join(".config"))
        })
        .ok_or(ServiceError::NoConfigDir)?;
    Ok(config.join("systemd").join("user"))
}

/// Path of the user unit file.
pub fn user_unit_path() -> Result<PathBuf, ServiceError> {
    Ok(user_unit_dir()?.join(USER_UNIT_NAME))
}

/// Quotes `path` as the program of a systemd `ExecStart=` line: `%` and `$`
/// are systemd specifiers, and spaces need quotes.
pub fn systemd_quote(path: &Path) -> String {
    let s = path.to_string_lossy();
    let escaped = s.replace('%', "%%").replace('$', "$$");
    if escaped
        .chars()
        .any(|c| c.is_whitespace() || c == '"' || c == '\\' || c == '\'')
    {
        format!("\"{}\"", escaped.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        escaped
    }
}

/// The user unit with `ExecStart` running `exe node`, and, when
/// `bootstrap` names peers, an `Environment=` line giving them to the node
/// as [`BOOTSTRAP_ENV`](crate::preferences::BOOTSTRAP_ENV). The list lives
/// in the unit rather than in formic.toml so that the service's peers are
/// the service's business: the file is shared with `formic` run by hand.
pub fn render_user_unit(exe: &Path, bootstrap: &[libp2p::Multiaddr]) -> String {
    let mut out = String::with_capacity(USER_UNIT_TEMPLATE.len() + 64);
    for line in USER_UNIT_TEMPLATE.lines() {
        if line.starts_with("ExecStart=") {
            if !bootstrap.is_empty() {
                let list: Vec<String> = bootstrap.iter().map(|a| a.to_string()).collect();
                out.push_str(&systemd_environment(
                    crate::preferences::BOOTSTRAP_ENV,
                    &list.join(","),
                ));
                out.push('\n');
            }
            out.push_str(&format!("ExecStart={} node", systemd_quote(exe)));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// A systemd `Environment=` line setting `name` to `value`: quoted, with
/// `%` doubled (systemd's specifier character) and `"` and `\` escaped.
pub fn systemd_environment(name: &str, value: &str) -> String {
    let escaped = value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('%', "%%");
    format!("Environment=\"{name}={escaped}\"")
}

/// Runs `systemctl --user ARGS`.
fn systemctl(args: &[&str], action: &'static str) -> Result<(), ServiceError> {
    let out = Command::new("systemctl")
        .arg("--user")
        .args(args)
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ServiceError::SystemctlMissing { action },
            _ => ServiceError::Systemctl {
                args: args.join(" "),
                status: "could not run".into(),
                stderr: e.to_string(),
            },
        })?;
    if out.status.success() {
        tracing::debug!(args = ?args, "systemctl --user succeeded");
        Ok(())
    } else {
        Err(ServiceError::Systemctl {
            args: format!("--user {}", args.join(" ")),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// Writes the user unit for `exe` (joining through `bootstrap`, see
/// [`render_user_unit`]) and, when `enable`, reloads systemd and enables
/// and starts it. Returns the unit's path.
pub fn install_user_unit(
    exe: &Path,
    bootstrap: &[libp2p::Multiaddr],
    enable: bool,
) -> Result<PathBuf, ServiceError> {
    let dir = user_unit_dir()?;
    std::fs::create_dir_all(&dir).map_err(|source| ServiceError::CreateDir {
        path: dir.clone(),
        source,
    })?;
    let path = dir.join(USER_UNIT_NAME);
    crate::data_dir::write_atomic(&path, render_user_unit(exe, bootstrap).as_bytes(), false)
        .map_err(|source| ServiceError::Write {
            path: path.clone(),
            source,
        })?;
    tracing::info!(path = %path.display(), exe = %exe.display(), "wrote systemd user unit");
    if enable {
        systemctl(&["daemon-reload"], "enabled")?;
        systemctl(&["enable", "--now", USER_UNIT_NAME], "enabled")?;
    }
    Ok(path)
}

/// When `disable`, stops and disables the unit; then removes the file (and
/// reloads systemd). Returns the path and whether a file was there.
pub fn uninstall_user_unit(disable: bool) -> Result<(PathBuf, bool), ServiceError> {
    let path = user_unit_path()?;
    if disable {
        systemctl(&["disable", "--now", USER_UNIT_NAME], "disabled")?;
    }
    let existed = match std::fs::remove_file(&path) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(source) => return Err(ServiceError::Remove { path, source }),
    };
    if disable {
        systemctl(&["daemon-reload"], "disabled")?;
    }
    Ok((path, existed))
}
