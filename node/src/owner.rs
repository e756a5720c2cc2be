//! The project owner's side: turning an app and its inputs into signed
//! records and blobs, publishing them, and measuring how many peers hold
//! them so the owner knows when it may go offline.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use formic_protocol::blob_transfer::{BlobRequest, BlobResponse};
use formic_protocol::messages::{
    Announce, Batch, BlobRef, Data, Gossip, Limits, Policy, ProjectId, ProjectManifest, UnitSpec,
};
use formic_protocol::signed::SignError;
use formic_protocol::{ContentId, Signed};
use libp2p::PeerId;
use libp2p::identity::Keypair;

use crate::network::{NetworkClient, Topic};

/// File name of the owner key inside the data directory: separate from the
/// network identity, so a project's authority does not depend on which
/// machine published it.
pub const OWNER_KEY_FILE: &str = "owner.key";

/// The owner's choices for a project (see `formic publish --help`).
#[derive(Debug, Clone)]
pub struct PublishOptions {
    pub name: String,
    pub quorum: u16,
    pub max_replicas: u16,
    pub fuel_per_unit: u64,
    pub memory_bytes: u64,
    pub max_output_bytes: u64,
    pub wall_clock_ms: u64,
    pub lease_ms: u64,
    pub audit_rate_ppm: u32,
}

impl Default for PublishOptions {
    fn default() -> Self {
        Self {
            name: "unnamed".into(),
            quorum: 2,
            max_replicas: 8,
            fuel_per_unit: 10_000_000_000,
            memory_bytes: 256 * 1024 * 1024,
            max_output_bytes: 16 * 1024 * 1024,
            wall_clock_ms: 10 * 60 * 1000,
            lease_ms: 10 * 60 * 1000,
            audit_rate_ppm: 0,
        }
    }
}

/// Why inputs could not be read.
#[derive(Debug, thiserror::Error)]
pub enum InputsError {
    #[error("cannot read inputs at {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} holds no inputs: a project needs at least one unit")]
    Empty(PathBuf),
}

/// Reads unit inputs: a directory gives one unit per regular file, in name
/// order (unit index = position, from 0); a file gives one unit per line
/// (without the line ending; a final empty line is not a unit).
pub fn read_inputs(path: &Path) -> Result<Vec<Vec<u8>>, InputsError> {
    let err = |source| InputsError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(err)?;
    let inputs = if meta.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(err)?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .map(|e| e.path())
            .collect();
        files.sort();
        files
            .iter()
            .map(|f| {
                std::fs::read(f).map_err(|source| InputsError::Read {
                    path: f.clone(),
                    source,
                })
            })
            .collect::<Result<Vec<_>, _>>()?
    } else {
        let bytes = std::fs::read(path).map_err(err)?;
        let mut lines: Vec<Vec<u8>> = bytes
            .split(|b| *b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l).to_vec())
            .collect();
        if lines.last().is_some_and(|l| l.is_empty()) {
            lines.pop();
        }
        lines
    };
    if inputs.is_empty() {
        return Err(InputsError::Empty(path.to_path_buf()));
    }
    Ok(inputs)
}

/// A project ready to publish: signed records and every blob they name.
#[derive(Debug, Clone)]
pub struct BuiltProject {
    pub manifest: Signed<ProjectManifest>,
    pub batch: Signed<Batch>,
    pub announce: Signed<Announce>,
    /// App, manifest, batch, then inputs too large to travel inline.
    pub blobs: Vec<Vec<u8>>,
}

impl BuiltProject {
    pub fn id(&self) -> ProjectId {
        self.manifest.id()
    }

    /// The app's bytes (the first blob).
    pub fn app(&self) -> &[u8] {
        self.blobs.first().map_or(&[], Vec::as_slice)
    }

    /// The ids of every blob peers must hold for the project to live on
    /// without its owner.
    pub fn blob_ids(&self) -> Vec<ContentId> {
        self.blobs.iter().map(|b| ContentId::of(b)).collect()
    }
}

/// Why a project could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot sign: {0}")]
    Sign(#[from] SignError),
    #[error("cannot encode: {0}")]
    Encode(#[from] formic_protocol::EncodeError),
    #[error("quorum must be at least 1 and at most --max-replicas ({max})")]
    Quorum { max: u16 },
}

/// Builds the signed manifest, batch and announcement for `app` and
/// `inputs`. `seed` is the batch's assignment seed: fresh randomness.
pub fn build_project(
    owner: &Keypair,
    app: Vec<u8>,
    inputs: &[Vec<u8>],
    opts: &PublishOptions,
    now_ms: u64,
    seed: [u8; 32],
) -> Result<BuiltProject, BuildError> {
    if opts.quorum == 0 || opts.quorum > opts.max_replicas {
        return Err(BuildError::Quorum {
            max: opts.max_replicas,
        });
    }
    let manifest = ProjectManifest {
        name: opts.name.clone(),
        app: BlobRef::of(&app),
        // Units run on this node's engine; only results from it count.
        engine: formic_work_units::ENGINE_VERSION.to_owned(),
        limits: Limits {
            fuel_per_unit: opts.fuel_per_unit,
            memory_bytes: opts.memory_bytes,
            max_output_bytes: opts.max_output_bytes,
            wall_clock_ms: opts.wall_clock_ms,
        },
        policy: Policy {
            quorum: opts.quorum,
            max_replicas: opts.max_replicas,
            lease_ms: opts.lease_ms,
            audit_rate_ppm: opts.audit_rate_ppm,
        },
        created_at_ms: now_ms,
    };
    let manifest = Signed::sign(owner, &manifest)?;
    let project = manifest.id();
    let mut big_inputs = Vec::new();
    let units = inputs
        .iter()
        .enumerate()
        .map(|(i, bytes)| {
            let input = Data::for_bytes(bytes);
            if matches!(input, Data::Blob(_)) {
                big_inputs.push(bytes.clone());
            }
            UnitSpec {
                index: i as u64,
                input,
            }
        })
        .collect();
    let batch = Signed::sign(
        owner,
        &Batch {
            project,
            seq: 0,
            seed,
            units,
        },
    )?;
    let manifest_bytes = manifest.to_bytes()?;
    let batch_bytes = batch.to_bytes()?;
    let announce = Announce {
        project,
        manifest: BlobRef::of(&manifest_bytes),
        batch: BlobRef::of(&batch_bytes),
        batch_seq: 0,
        units: inputs.len() as u64,
    };
    let announce = Signed::sign(owner, &announce)?;
    let mut blobs = vec![app, manifest_bytes, batch_bytes];
    blobs.extend(big_inputs);
    Ok(BuiltProject {
        manifest,
        batch,
        announce,
        blobs,
    })
}

/// Why publishing failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishProjectError {
    #[error("cannot store a blob: {0}")]
    Blob(#[from] crate::network::PutBlobError),
    #[error("cannot announce: {0}")]
    Announce(#[from] crate::network::PublishError),
}

/// Stores and provides every blob, then announces the project.
pub async fn publish(
    client: &NetworkClient,
    project: &BuiltProject,
) -> Result<(), PublishProjectError> {
    for b in &project.blobs {
        client.put_blob(b.clone()).await?;
    }
    client
        .publish(Topic::Announce, Gossip::Announce(project.announce.clone()))
        .await?;
    Ok(())
}

/// How many other peers hold every blob of a project, polled while the
/// owner waits to go offline. It counts peers Kademlia lists as providers,
/// plus connected peers that say they hold a blob when asked directly. The
/// direct question matters: a network that has just formed may have
/// nowhere to keep provider records yet (peers stay in Kademlia client mode
/// until an external address is confirmed), and the owner must not wait on
/// the DHT for what its neighbours can simply answer. A peer that has
/// answered for a blob is not asked again while it stays connected, so each
/// poll only asks the peers still unknown.
#[derive(Debug, Default)]
pub struct ReplicationWatch {
    confirmed: HashMap<ContentId, HashSet<PeerId>>,
}

impl ReplicationWatch {
    pub fn new() -> Self {
        Self::default()
    }

    /// The number of other peers that hold every blob of `project` now.
    pub async fn holders(&mut self, client: &NetworkClient, project: &BuiltProject) -> usize {
        let connected: HashSet<PeerId> = client
            .connected_peers()
            .await
            .unwrap_or_default()
            .into_iter()
            .collect();
        let mut holders: Option<HashSet<PeerId>> = None;
        for id in project.blob_ids() {
            let known = self.confirmed.entry(id).or_default();
            known.retain(|p| connected.contains(p));
            let mut have = client.find_providers(id).await.unwrap_or_default();
            have.extend(known.iter().copied());
            for peer in &connected {
                // Only peers still in the running need asking.
                let candidate = holders.as_ref().is_none_or(|h| h.contains(peer));
                if candidate
                    && !have.contains(peer)
                    && matches!(
                        client
                            .blob_request(*peer, BlobRequest::Manifest { id })
                            .await,
                        Ok(BlobResponse::Manifest(_))
                    )
                {
                    have.insert(*peer);
                    known.insert(*peer);
                }
            }
            holders = Some(match holders {
                None => have,
                Some(h) => h.intersection(&have).copied().collect(),
            });
        }
        holders.map_or(0, |h| h.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_from_a_directory_are_in_name_order_and_from_a_file_by_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("b"), b"second").expect("write");
        std::fs::write(dir.path().join("a"), b"first").expect("write");
        std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
        assert_eq!(
            read_inputs(dir.path()).expect("read"),
            vec![b"first".to_vec(), b"second".to_vec()]
        );
        let file = dir.path().join("sub/lines.txt");
        std::fs::write(&file, b"1 10\r\n10 20\n\n30 40\n").expect("write");
        assert_eq!(
            read_inputs(&file).expect("read"),
            vec![
                b"1 10".to_vec(),
                b"10 20".to_vec(),
                Vec::new(),
                b"30 40".to_vec()
            ]
        );
        let empty = dir.path().join("sub/empty.txt");
        std::fs::write(&empty, b"").expect("write");
        assert!(matches!(read_inputs(&empty), Err(InputsError::Empty(_))));
        assert!(matches!(
            read_inputs(&dir.path().join("missing")),
            Err(InputsError::Read { .. })
        ));
    }

    #[test]
    fn built_project_is_signed_consistently() {
        let owner = Keypair::generate_ed25519();
        let inputs = vec![b"small".to_vec(), vec![7u8; 5000]];
        let p = build_project(
            &owner,
            b"(module)".to_vec(),
            &inputs,
            &PublishOptions::default(),
            1,
            [3; 32],
        )
        .expect("build");
        assert_eq!(p.announce.verify().expect("announce").project, p.id());
        let batch = p.batch.verify().expect("batch");
        assert_eq!(batch.units.len(), 2);
        assert!(matches!(batch.units[1].input, Data::Blob(_)));
        assert_eq!(p.blobs.len(), 4, "app, manifest, batch, one big input");
        assert_eq!(
            ContentId::of(&p.blobs[1]),
            p.id(),
            "the manifest blob's id is the ProjectId"
        );
        let bad = PublishOptions {
            quorum: 9,
            max_replicas: 3,
            ..PublishOptions::default()
        };
        assert!(matches!(
            build_project(&owner, vec![], &inputs, &bad, 0, [0; 32]),
            Err(BuildError::Quorum { max: 3 })
        ));
    }
}
