//! The node's network identity: an ed25519 keypair created on first use.
//!
//! The PeerId derived from it is how other peers know this node, and the
//! key signs its claims, commits and reveals, so it must survive restarts:
//! it is stored in `<data-dir>/identity.key` (mode 0600) and reused.

use std::path::{Path, PathBuf};

use libp2p::identity::Keypair;

/// File name of the network identity inside the data directory.
pub const IDENTITY_FILE: &str = "identity.key";

/// Errors loading or creating a key file.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "key file {path} is corrupt or not an ed25519 key ({reason}); move it away to create a new identity"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error("cannot write key file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Loads the keypair stored at `path`, or creates, stores and returns a new
/// ed25519 keypair when no file exists yet.
pub fn load_or_create_keypair(path: &Path) -> Result<Keypair, KeyFileError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let kp =
                Keypair::from_protobuf_encoding(&bytes).map_err(|e| KeyFileError::Corrupt {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })?;
            if kp.clone().try_into_ed25519().is_err() {
                return Err(KeyFileError::Corrupt {
                    path: path.to_path_buf(),
                    reason: "not an ed25519 key".into(),
                });
            }
            Ok(kp)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|source| KeyFileError::Write {
                    path: path.to_path_buf(),
                    source,
                })?;
            }
            let kp = Keypair::generate_ed25519();
            let encoded = kp
                .to_protobuf_encoding()
                .map_err(|e| KeyFileError::Corrupt {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })?;
            crate::data_dir::write_atomic(path, &encoded, true).map_err(|source| {
                KeyFileError::Write {
                    path: path.to_path_buf(),
                    source,
                }
            })?;
            tracing::info!(path = %path.display(), "created a new key");
            Ok(kp)
        }
        Err(source) => Err(KeyFileError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// The node's network identity in `data_dir`.
pub fn load_or_create_node_identity(data_dir: &Path) -> Result<Keypair, KeyFileError> {
    load_or_create_keypair(&data_dir.join(IDENTITY_FILE))
}
