//! The researcher's side: writing a project's validated results, with the
//! evidence that proves them, and re-checking such a folder offline.
//!
//! Layout of a results folder (a contract other tools rely on):
//! - `outputs/<index>`: the raw output bytes of each validated unit;
//! - `results.json` (or `results.csv`): one entry per validated unit —
//!   index, input id, result hash, output size, fuel, agreeing workers;
//! - `evidence.cbor`: the signed manifest, batches and every record, which
//!   `formic results --verify DIR` replays through `validate()`.

use std::path::{Path, PathBuf};

use formic_protocol::messages::{Data, ProjectManifest};
use formic_protocol::project::ProjectState;
use formic_protocol::results::{CheckError, EvidenceBundle, ResultEntry};
use formic_protocol::{ContentId, Signed};
use serde::{Deserialize, Serialize};

use crate::network::NetworkClient;

pub const EVIDENCE_FILE: &str = "evidence.cbor";
pub const RESULTS_JSON: &str = "results.json";
pub const RESULTS_CSV: &str = "results.csv";
pub const OUTPUTS_DIR: &str = "outputs";

/// `results.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResultsFile {
    pub project: ContentId,
    pub name: String,
    /// PeerId of the owner key that signed the project.
    pub owner: String,
    pub units: usize,
    pub validated: usize,
    pub results: Vec<ResultEntry>,
    /// The sandbox engine every result was computed on (the manifest's):
    /// wasmtime's version and the NaN canonicalization rewrite's. Absent in
    /// folders written before it was recorded.
    #[serde(default)]
    pub engine: String,
}

/// Output formats of the results table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Json,
    Csv,
}

/// Why results could not be written or checked.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot fetch the output of unit {index}: {reason}")]
    Fetch { index: u64, reason: String },
    #[error("{path} is malformed: {reason}")]
    Malformed { path: PathBuf, reason: String },
    #[error("the evidence does not support the results: {0}")]
    Check(#[from] CheckError),
    #[error("outputs/{index} does not match its result hash (the file was changed or is missing)")]
    OutputMismatch { index: u64 },
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), CollectError> {
    crate::data_dir::write_atomic(path, bytes, false).map_err(|source| CollectError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes every validated unit of `state` into `dir`. Returns the results
/// table that was written.
pub async fn write_results(
    client: &NetworkClient,
    manifest: &Signed<ProjectManifest>,
    state: &mut ProjectState,
    dir: &Path,
    format: Format,
) -> Result<ResultsFile, CollectError> {
    let outputs = dir.join(OUTPUTS_DIR);
    std::fs::create_dir_all(&outputs).map_err(|source| CollectError::Write {
        path: outputs.clone(),
        source,
    })?;
    let mut results = Vec::new();
    for v in state.validated() {
        let bytes = match &v.output {
            Data::Inline(b) => b.clone(),
            Data::Blob(r) => client
                .fetch_blob(*r)
                .await
                .map_err(|e| CollectError::Fetch {
                    index: v.index,
                    reason: e.to_string(),
                })?,
        };
        write(&outputs.join(v.index.to_string()), &bytes)?;
        let input = state
            .unit(v.index)
            .map(|u| u.input.content_id())
            .unwrap_or(ContentId::of(b""));
        results.push(ResultEntry {
            index: v.index,
            input,
            result_hash: v.result_hash,
            output_size: bytes.len() as u64,
            fuel_used: v.fuel_used,
            workers: v.workers.iter().map(|w| w.to_string()).collect(),
        });
    }
    let file = ResultsFile {
        project: state.id(),
        name: state.manifest().name.clone(),
        owner: state.owner().to_string(),
        units: state.unit_count(),
        validated: results.len(),
        results,
        engine: state.manifest().engine.clone(),
    };
    let bundle = EvidenceBundle::from_state(manifest.clone(), state);
    let evidence = bundle.to_bytes().map_err(|e| CollectError::Malformed {
        path: dir.join(EVIDENCE_FILE),
        reason: e.to_string(),
    })?;
    write(&dir.join(EVIDENCE_FILE), &evidence)?;
    match format {
        Format::Json => {
            let json = serde_json::to_vec_pretty(&file).map_err(|e| CollectError::Malformed {
                path: dir.join(RESULTS_JSON),
                reason: e.to_string(),
            })?;
            write(&dir.join(RESULTS_JSON), &json)?;
        }
        Format::Csv => write(&dir.join(RESULTS_CSV), to_csv(&file).as_bytes())?,
    }
    Ok(file)
}

/// The CSV form: a header, then one row per unit; workers are joined by `;`.
pub fn to_csv(file: &ResultsFile) -> String {
    let mut s = String::from("index,input,result_hash,output_size,fuel_used,workers\n");
    for r in &file.results {
        s.push_str(&format!(
            "{},{},{},{},{},{}\n",
            r.index,
            r.input,
            r.result_hash,
            r.output_size,
            r.fuel_used,
            r.workers.join(";")
        ));
    }
    s
}

fn parse_csv(text: &str, path: &Path) -> Result<Vec<ResultEntry>, CollectError> {
    let bad = |reason: String| CollectError::Malformed {
        path: path.to_path_buf(),
        reason,
    };
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate().skip(1) {
        let cols: Vec<&str> = line.split(',').collect();
        if cols.len() != 6 {
            return Err(bad(format!(
                "line {} has {} columns, not 6",
                n + 1,
                cols.len()
            )));
        }
        let num = |s: &str| {
            s.parse::<u64>()
                .map_err(|_| bad(format!("line {}: `{s}` is not a number", n + 1)))
        };
        let id = |s: &str| {
            s.parse::<ContentId>()
                .map_err(|e| bad(format!("line {}: {e}", n + 1)))
        };
        out.push(ResultEntry {
            index: num(cols[0])?,
            input: id(cols[1])?,
            result_hash: id(cols[2])?,
            output_size: num(cols[3])?,
            fuel_used: num(cols[4])?,
            workers: cols[5]
                .split(';')
                .filter(|w| !w.is_empty())
                .map(str::to_owned)
                .collect(),
        });
    }
    Ok(out)
}

/// What an offline check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifySummary {
    pub project: ContentId,
    pub owner: String,
    pub listed: usize,
    pub validated_by_evidence: usize,
}

/// Re-checks a results folder offline: the evidence must validate every
/// listed result, and every output file must hash to its result.
pub fn verify_dir(dir: &Path) -> Result<VerifySummary, CollectError> {
    let read =
        |p: PathBuf| std::fs::read(&p).map_err(|source| CollectError::Read { path: p, source });
    let evidence_path = dir.join(EVIDENCE_FILE);
    let bundle = EvidenceBundle::from_bytes(&read(evidence_path.clone())?).map_err(|e| {
        CollectError::Malformed {
            path: evidence_path,
            reason: e.to_string(),
        }
    })?;
    let entries = if dir.join(RESULTS_JSON).exists() {
        let p = dir.join(RESULTS_JSON);
        let file: ResultsFile =
            serde_json::from_slice(&read(p.clone())?).map_err(|e| CollectError::Malformed {
                path: p,
                reason: e.to_string(),
            })?;
        file.results
    } else {
        let p = dir.join(RESULTS_CSV);
        let text = String::from_utf8_lossy(&read(p.clone())?).into_owned();
        parse_csv(&text, &p)?
    };
    let validated = bundle.check(&entries, None)?;
    for e in &entries {
        let bytes = std::fs::read(dir.join(OUTPUTS_DIR).join(e.index.to_string()))
            .map_err(|_| CollectError::OutputMismatch { index: e.index })?;
        if ContentId::of(&bytes) != e.result_hash {
            return Err(CollectError::OutputMismatch { index: e.index });
        }
    }
    Ok(VerifySummary {
        project: bundle.manifest.id(),
        owner: bundle.manifest.signer().to_string(),
        listed: entries.len(),
        validated_by_evidence: validated,
    })
}
