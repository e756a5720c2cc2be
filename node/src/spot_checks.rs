//! Spot checks, the owner's trust anchor (docs/VALIDATION.md): a secret
//! random sample of the batch's own units, computed on the owner's machine
//! before publishing. Workers cannot tell them apart because they are
//! ordinary units; only the answers are kept back, in the owner's data dir.
//!
//! The owner reveals them when collecting (`formic results`, run with the
//! owner's data dir, does it). From then on every peer's `validate()` proves
//! faulty each worker that answered one of them wrongly, discards all its
//! results and re-opens what it helped validate. This also settles disputes
//! that counting alone cannot, such as a colluding pair answering every unit
//! together against too few honest workers.
//!
//! Revealing ends their secrecy (workers then know which units are checks),
//! so the owner reveals when collecting, not before.

use std::path::{Path, PathBuf};

use formic_protocol::messages::{Data, Gossip, ProjectId, SpotCheckKey, UnitRef};
use formic_protocol::signed::SignError;
use formic_protocol::{ContentId, Signed, assignment};
use formic_work_units::Sandbox;
use libp2p::identity::Keypair;
use rand::Rng;

use crate::error_report::Chain;
use crate::network::{NetworkClient, PublishError, Topic};
use crate::owner::BuiltProject;

/// Folder of the data dir holding unrevealed answers, one subfolder per
/// project.
pub const SPOT_CHECK_DIR: &str = "spot-checks";

/// Answers per signed key: keeps each key well under the gossip size cap
/// (an answer is about 45 bytes of CBOR).
const ANSWERS_PER_KEY: usize = 1000;

/// Why spot checks could not be planted, kept or read.
#[derive(Debug, thiserror::Error)]
pub enum SpotCheckError {
    #[error("the spot-check fraction must be between 0 and 1, not {0}")]
    Fraction(f64),
    #[error("the project's own records do not verify")]
    Project(#[source] formic_protocol::VerifyError),
    #[error("cannot compile the app to compute spot checks")]
    Compile(#[source] formic_work_units::CompileError),
    #[error("cannot sign the spot-check answers: {0}")]
    Sign(#[from] SignError),
    #[error("cannot encode the spot-check answers: {0}")]
    Encode(#[from] formic_protocol::EncodeError),
    #[error("cannot write the spot-check answers to {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the spot-check answers at {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: AnswerFileError,
    },
}

/// What is wrong with one file of planted answers.
#[derive(Debug, thiserror::Error)]
pub enum AnswerFileError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("it does not decode")]
    Decode(#[from] formic_protocol::DecodeError),
    #[error("its signature does not verify")]
    Verify(#[from] formic_protocol::VerifyError),
    #[error("it belongs to project {0}")]
    OtherProject(ProjectId),
}

/// Planted spot checks: signed answer keys, not yet revealed.
#[derive(Debug, Clone)]
pub struct Planted {
    pub keys: Vec<Signed<SpotCheckKey>>,
    /// Units with a known answer.
    pub answers: usize,
    /// Chosen units that failed on the owner's machine (a unit fails the
    /// same way everywhere, so it has no answer to check against).
    pub failed: usize,
}

/// Picks the units to plant: `fraction` of `units` (at least one when the
/// fraction is above zero), chosen with `rng`, which must be secret.
pub fn choose(units: usize, fraction: f64, rng: &mut impl Rng) -> Result<Vec<u64>, SpotCheckError> {
    if !(0.0..=1.0).contains(&fraction) {
        return Err(SpotCheckError::Fraction(fraction));
    }
    if fraction == 0.0 || units == 0 {
        return Ok(Vec::new());
    }
    let count = ((units as f64 * fraction).round() as usize).clamp(1, units);
    let mut chosen: Vec<u64> = rand::seq::index::sample(rng, units, count)
        .into_iter()
        .map(|i| i as u64)
        .collect();
    chosen.sort_unstable();
    Ok(chosen)
}

/// Computes the chosen units exactly as a volunteer would (same engine,
/// limits and seed) and signs their answers. Blocking: runs the sandbox.
/// `progress(done, total)` is called after each unit.
pub fn plant(
    owner: &Keypair,
    project: &BuiltProject,
    inputs: &[Vec<u8>],
    chosen: &[u64],
    sandbox: &Sandbox,
    progress: &dyn Fn(usize, usize),
) -> Result<Planted, SpotCheckError> {
    let manifest = project.manifest.verify().map_err(SpotCheckError::Project)?;
    let batch = project.batch.verify().map_err(SpotCheckError::Project)?;
    let app = sandbox
        .compile(project.app())
        .map_err(SpotCheckError::Compile)?;
    let limits = crate::computing::limits_of(&manifest);
    let id = project.id();
    let mut answers = Vec::new();
    let mut failed = 0;
    for (done, index) in chosen.iter().enumerate() {
        // The batch's unit must carry exactly these bytes (build_project
        // numbers units by position; anything else is not a check).
        let spec = batch.units.iter().find(|u| u.index == *index);
        let Some(input) = usize::try_from(*index)
            .ok()
            .and_then(|i| inputs.get(i))
            .filter(|bytes| spec.is_some_and(|u| u.input.content_id() == ContentId::of(bytes)))
        else {
            failed += 1;
            continue;
        };
        let unit = UnitRef {
            project: id,
            index: *index,
        };
        let seed = *assignment::unit_seed(&unit).as_bytes();
        match sandbox.run(&app, input, seed, &limits, None) {
            // Hashed the way a worker's reveal hashes it.
            Ok(outcome) => answers.push((*index, Data::for_bytes(&outcome.output).content_id())),
            Err(e) => {
                tracing::warn!(unit = index, error = %Chain(&e), "a spot-check unit failed locally; not used as a check");
                failed += 1;
            }
        }
        progress(done + 1, chosen.len());
    }
    let count = answers.len();
    let keys = answers
        .chunks(ANSWERS_PER_KEY)
        .map(|chunk| {
            Signed::sign(
                owner,
                &SpotCheckKey {
                    project: id,
                    batch_seq: batch.seq,
                    answers: chunk.to_vec(),
                },
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Planted {
        keys,
        answers: count,
        failed,
    })
}

fn project_dir(data_dir: &Path, project: ProjectId) -> PathBuf {
    data_dir.join(SPOT_CHECK_DIR).join(project.to_string())
}

/// Keeps the answers in the owner's data dir until they are revealed; each
/// key file is written atomically (temporary file, then rename).
pub fn save(
    data_dir: &Path,
    project: ProjectId,
    keys: &[Signed<SpotCheckKey>],
) -> Result<PathBuf, SpotCheckError> {
    let dir = project_dir(data_dir, project);
    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SpotCheckError::Write { path, source }
    };
    std::fs::create_dir_all(&dir).map_err(write_err(&dir))?;
    for (n, key) in keys.iter().enumerate() {
        let path = dir.join(format!("{n}.cbor"));
        crate::data_dir::write_atomic(&path, &key.to_bytes()?, true).map_err(write_err(&path))?;
    }
    Ok(dir)
}

/// The answers kept for `project` in this data dir (none if this is not
/// the owner's data dir, or no spot checks were planted).
pub fn load(
    data_dir: &Path,
    project: ProjectId,
) -> Result<Vec<Signed<SpotCheckKey>>, SpotCheckError> {
    let dir = project_dir(data_dir, project);
    let read_err = |path: &Path, source: AnswerFileError| SpotCheckError::Read {
        path: path.to_path_buf(),
        source,
    };
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(read_err(&dir, e.into())),
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "cbor"))
        .collect();
    files.sort();
    let mut keys = Vec::new();
    for path in files {
        let bytes = std::fs::read(&path).map_err(|e| read_err(&path, e.into()))?;
        let key =
            Signed::<SpotCheckKey>::from_bytes(&bytes).map_err(|e| read_err(&path, e.into()))?;
        let payload = key.verify().map_err(|e| read_err(&path, e.into()))?;
        if payload.project != project {
            return Err(read_err(
                &path,
                AnswerFileError::OtherProject(payload.project),
            ));
        }
        keys.push(key);
    }
    Ok(keys)
}

/// Publishes the answers on the project's topic (and into this node's
/// record store, which serves them to peers that sync later). Returns how
/// many answers were revealed.
pub async fn reveal(
    client: &NetworkClient,
    keys: &[Signed<SpotCheckKey>],
) -> Result<usize, PublishError> {
    let mut answers = 0;
    for key in keys {
        let Ok(payload) = key.verify() else { continue };
        client
            .publish(
                Topic::Project(payload.project),
                Gossip::SpotCheckKey(key.clone()),
            )
            .await?;
        answers += payload.answers.len();
    }
    Ok(answers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn choose_takes_the_fraction_at_least_one_and_rejects_nonsense() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        assert!(choose(100, 0.0, &mut rng).expect("zero").is_empty());
        let picked = choose(100, 0.1, &mut rng).expect("tenth");
        assert_eq!(picked.len(), 10);
        assert!(picked.windows(2).all(|w| w[0] < w[1]), "sorted, distinct");
        assert!(picked.iter().all(|i| *i < 100));
        assert_eq!(choose(3, 0.01, &mut rng).expect("tiny").len(), 1);
        assert_eq!(choose(3, 1.0, &mut rng).expect("all"), vec![0, 1, 2]);
        assert!(matches!(
            choose(3, 1.5, &mut rng),
            Err(SpotCheckError::Fraction(_))
        ));
        assert!(matches!(
            choose(3, f64::NAN, &mut rng),
            Err(SpotCheckError::Fraction(_))
        ));
    }

    #[test]
    fn kept_answers_load_back_and_a_damaged_file_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let owner = Keypair::generate_ed25519();
        let project = formic_protocol::ContentId::of(b"project");
        assert!(load(dir.path(), project).expect("none kept").is_empty());
        let keys: Vec<_> = (0..2u64)
            .map(|n| {
                Signed::sign(
                    &owner,
                    &SpotCheckKey {
                        project,
                        batch_seq: 0,
                        answers: vec![(n, formic_protocol::ContentId::of(&n.to_le_bytes()))],
                    },
                )
                .expect("sign")
            })
            .collect();
        let kept = save(dir.path(), project, &keys).expect("save");
        assert_eq!(load(dir.path(), project).expect("load"), keys);
        // Another project's answers are not these.
        let other = formic_protocol::ContentId::of(b"other");
        assert!(load(dir.path(), other).expect("none").is_empty());
        // A flipped byte is refused with the file named, not used.
        let file = kept.join("1.cbor");
        let mut bytes = std::fs::read(&file).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&file, bytes).expect("write");
        let err = load(dir.path(), project).expect_err("damaged");
        assert!(err.to_string().contains("1.cbor"), "{err}");
    }
}
