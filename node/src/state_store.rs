//! The agent's crash-safe state: an embedded ACID store (redb) in
//! `<data-dir>/state.redb`.
//!
//! What must survive `kill -9`, and why it is enough:
//! - **Records** (every verified claim, commit, reveal, announcement and
//!   spot-check key): the evidence validation runs on, and the sign of which
//!   projects this node follows. They are written in batches by a writer
//!   thread, so the network task never waits on the disk; a crash loses at
//!   most the last batch, which pull-sync brings back from peers.
//! - **Held reveals**: this node's own results, committed on the network but
//!   not yet opened. Nobody else holds them, so each is written (and
//!   fsynced) *before* its commit is published: a published commit always
//!   has its reveal on disk.
//! - **Followed projects**: those a node was asked to follow through
//!   `ComputeHandle::follow` (an observer that does not follow everything
//!   would not re-derive them from records). A volunteer agent follows every
//!   announced project, so today this only matters to embedders.
//!
//! Credibility is not stored: it is recomputed from the records by
//! `validate()`. Units that were running when the process died are re-run
//! (execution is deterministic, so the result and its seal are the same).
//! Blobs live in the blob store, which writes each file atomically.
//!
//! redb over SQLite: pure Rust (no C toolchain in CI or on volunteers'
//! machines), copy-on-write B-trees with a checksummed commit that is
//! crash-safe by design, and a key-value shape that fits records keyed by
//! hash; docs/ARCHITECTURE.md has the longer comparison.

use std::path::{Path, PathBuf};

use crate::error_report::Chain;
use formic_protocol::ContentId;
use formic_protocol::messages::ProjectId;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

/// File name of the store inside the data directory.
pub const STATE_FILE: &str = "state.redb";

/// project id (32) ‖ blake3 of the record (32) → record bytes.
const RECORDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("records");
/// project id (32) ‖ unit index (8, big-endian) → signed reveal bytes.
const HELD_REVEALS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("held_reveals");
/// project id (32) → nothing.
const FOLLOWED: TableDefinition<&[u8], &[u8]> = TableDefinition::new("followed");

/// Why the state store failed.
#[derive(Debug, thiserror::Error)]
pub enum StateStoreError {
    #[error(
        "another process has the state store {path} open (is another `formic node` using this data dir?)"
    )]
    InUse { path: PathBuf },
    // redb's errors are large; boxed so every `Result` carrying this
    // one stays small.
    #[error("cannot open the state store {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: Box<redb::Error>,
    },
    #[error("the state store {path} is damaged and cannot be moved aside to {aside}")]
    MoveAside {
        path: PathBuf,
        aside: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the state store")]
    Read(#[source] Box<redb::Error>),
    #[error("cannot write the state store")]
    Write(#[source] Box<redb::Error>),
}

fn read_err(e: impl Into<redb::Error>) -> StateStoreError {
    StateStoreError::Read(Box::new(e.into()))
}

fn write_err(e: impl Into<redb::Error>) -> StateStoreError {
    StateStoreError::Write(Box::new(e.into()))
}

/// Why opening failed: damage is recovered from, the rest is reported.
enum OpenFailure {
    Damaged(redb::Error),
    Busy(redb::Error),
    InUse,
}

impl OpenFailure {
    fn into_error(self, path: &Path) -> StateStoreError {
        let path = path.to_path_buf();
        match self {
            OpenFailure::Damaged(source) | OpenFailure::Busy(source) => StateStoreError::Open {
                path,
                source: Box::new(source),
            },
            OpenFailure::InUse => StateStoreError::InUse { path },
        }
    }
}

/// See the module docs.
pub struct StateStore {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore")
            .field("path", &self.path)
            .finish()
    }
}

fn record_key(project: &ProjectId, bytes: &[u8]) -> [u8; 64] {
    let mut k = [0u8; 64];
    k[..32].copy_from_slice(project.as_bytes());
    k[32..].copy_from_slice(ContentId::of(bytes).as_bytes());
    k
}

fn unit_key(project: &ProjectId, index: u64) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..32].copy_from_slice(project.as_bytes());
    k[32..].copy_from_slice(&index.to_be_bytes());
    k
}

fn project_of(key: &[u8]) -> Option<ProjectId> {
    let bytes: [u8; 32] = key.get(..32)?.try_into().ok()?;
    Some(ContentId::from_bytes(bytes))
}

impl StateStore {
    /// Opens (creating if needed) the store at `path`. redb recovers from
    /// an interrupted commit by itself. A file that is damaged otherwise
    /// (a disk error, a stray write) is moved aside to
    /// `state.redb.corrupt-<unix seconds>` and the node starts empty, with
    /// a warning: everything in it but unpublished reveals comes back from
    /// peers, and unfinished units are re-run. Two agents on one data dir
    /// are still refused, by redb's file lock.
    pub fn open(path: &Path) -> Result<Self, StateStoreError> {
        match Self::open_checked(path) {
            Err(OpenFailure::Damaged(reason)) => {
                let stamp = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let aside = path.with_extension(format!("redb.corrupt-{stamp}"));
                if let Err(source) = std::fs::rename(path, &aside) {
                    tracing::error!(path = %path.display(), error = %reason, "the state store is damaged");
                    return Err(StateStoreError::MoveAside {
                        path: path.to_path_buf(),
                        aside,
                        source,
                    });
                }
                tracing::warn!(path = %path.display(), moved_to = %aside.display(), error = %reason,
                    "the state store was damaged; starting from an empty one (peers hold the records)");
                Self::open_checked(path).map_err(|f| f.into_error(path))
            }
            Err(f) => Err(f.into_error(path)),
            Ok(s) => Ok(s),
        }
    }

    fn open_checked(path: &Path) -> Result<Self, OpenFailure> {
        let mut db = match Database::create(path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(OpenFailure::InUse);
            }
            // Permissions, a full disk, a lock: reported, never moved aside.
            Err(redb::DatabaseError::Storage(redb::StorageError::Io(e)))
                if e.kind() != std::io::ErrorKind::InvalidData =>
            {
                return Err(OpenFailure::Busy(e.into()));
            }
            Err(e) => return Err(OpenFailure::Damaged(e.into())),
        };
        // redb panics on some damaged pages when reading them; its own
        // integrity check finds them first and reports an error instead.
        match db.check_integrity() {
            Ok(true) => {}
            Ok(false) => tracing::info!("the state store was repaired on open"),
            Err(e) => return Err(OpenFailure::Damaged(e.into())),
        }
        let open_err = |e: redb::Error| OpenFailure::Damaged(e);
        // Create the tables once, so readers never meet a missing table.
        let txn = db.begin_write().map_err(|e| open_err(e.into()))?;
        for table in [RECORDS, HELD_REVEALS, FOLLOWED] {
            txn.open_table(table).map_err(|e| open_err(e.into()))?;
        }
        txn.commit().map_err(|e| open_err(e.into()))?;
        Ok(Self {
            db,
            path: path.to_path_buf(),
        })
    }

    /// Every stored record with its project, grouped by project.
    pub fn records(&self) -> Result<Vec<(ProjectId, Vec<u8>)>, StateStoreError> {
        let txn = self.db.begin_read().map_err(read_err)?;
        let table = txn.open_table(RECORDS).map_err(read_err)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(read_err)? {
            let (k, v) = entry.map_err(read_err)?;
            if let Some(p) = project_of(k.value()) {
                out.push((p, v.value().to_vec()));
            }
        }
        Ok(out)
    }

    /// Applies journal entries in one transaction, in order.
    pub fn write_journal(&self, batch: &[JournalEntry]) -> Result<(), StateStoreError> {
        let txn = self.db.begin_write().map_err(write_err)?;
        {
            let mut table = txn.open_table(RECORDS).map_err(write_err)?;
            for entry in batch {
                let (project, bytes) = match entry {
                    JournalEntry::Add(project, bytes) => (project, bytes),
                    JournalEntry::Replace { project, old, new } => {
                        table
                            .remove(record_key(project, old).as_slice())
                            .map_err(write_err)?;
                        (project, new)
                    }
                };
                table
                    .insert(record_key(project, bytes).as_slice(), bytes.as_slice())
                    .map_err(write_err)?;
            }
        }
        txn.commit().map_err(write_err)
    }

    /// Stores records in one transaction (already-stored ones are no-ops).
    pub fn put_records(&self, batch: &[(ProjectId, Vec<u8>)]) -> Result<(), StateStoreError> {
        let txn = self.db.begin_write().map_err(write_err)?;
        {
            let mut table = txn.open_table(RECORDS).map_err(write_err)?;
            for (project, bytes) in batch {
                table
                    .insert(record_key(project, bytes).as_slice(), bytes.as_slice())
                    .map_err(write_err)?;
            }
        }
        txn.commit().map_err(write_err)
    }

    /// Keeps one of this node's own reveals until it is published; durable
    /// when this returns.
    pub fn put_held_reveal(
        &self,
        project: &ProjectId,
        index: u64,
        reveal: &[u8],
    ) -> Result<(), StateStoreError> {
        let txn = self.db.begin_write().map_err(write_err)?;
        {
            let mut table = txn.open_table(HELD_REVEALS).map_err(write_err)?;
            table
                .insert(unit_key(project, index).as_slice(), reveal)
                .map_err(write_err)?;
        }
        txn.commit().map_err(write_err)
    }

    /// A held reveal was published: stores it as a record and forgets it as
    /// held in one transaction, so no crash can leave it in neither place.
    pub fn reveal_published(
        &self,
        project: &ProjectId,
        index: u64,
        record: &[u8],
    ) -> Result<(), StateStoreError> {
        let txn = self.db.begin_write().map_err(write_err)?;
        {
            let mut records = txn.open_table(RECORDS).map_err(write_err)?;
            records
                .insert(record_key(project, record).as_slice(), record)
                .map_err(write_err)?;
            let mut held = txn.open_table(HELD_REVEALS).map_err(write_err)?;
            held.remove(unit_key(project, index).as_slice())
                .map_err(write_err)?;
        }
        txn.commit().map_err(write_err)
    }

    /// Forgets held reveals (tests; see [`Self::reveal_published`]).
    pub fn remove_held_reveals(&self, units: &[(ProjectId, u64)]) -> Result<(), StateStoreError> {
        let txn = self.db.begin_write().map_err(write_err)?;
        {
            let mut table = txn.open_table(HELD_REVEALS).map_err(write_err)?;
            for (project, index) in units {
                table
                    .remove(unit_key(project, *index).as_slice())
                    .map_err(write_err)?;
            }
        }
        txn.commit().map_err(write_err)
    }

    /// This node's unpublished reveals for `project`.
    pub fn held_reveals(&self, project: &ProjectId) -> Result<Vec<Vec<u8>>, StateStoreError> {
        let txn = self.db.begin_read().map_err(read_err)?;
        let table = txn.open_table(HELD_REVEALS).map_err(read_err)?;
        let lo = unit_key(project, 0);
        let hi = unit_key(project, u64::MAX);
        let mut out = Vec::new();
        for entry in table
            .range(lo.as_slice()..=hi.as_slice())
            .map_err(read_err)?
        {
            let (_, v) = entry.map_err(read_err)?;
            out.push(v.value().to_vec());
        }
        Ok(out)
    }

    /// Remembers that this node was asked to follow `project`.
    pub fn follow(&self, project: &ProjectId) -> Result<(), StateStoreError> {
        let txn = self.db.begin_write().map_err(write_err)?;
        {
            let mut table = txn.open_table(FOLLOWED).map_err(write_err)?;
            table
                .insert(project.as_bytes().as_slice(), [].as_slice())
                .map_err(write_err)?;
        }
        txn.commit().map_err(write_err)
    }

    /// The projects this node was asked to follow.
    pub fn followed(&self) -> Result<Vec<ProjectId>, StateStoreError> {
        let txn = self.db.begin_read().map_err(read_err)?;
        let table = txn.open_table(FOLLOWED).map_err(read_err)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(read_err)? {
            let (k, _) = entry.map_err(read_err)?;
            if let Some(p) = project_of(k.value()) {
                out.push(p);
            }
        }
        Ok(out)
    }
}

/// A change to the stored records, for the writer thread.
#[derive(Debug)]
pub enum JournalEntry {
    /// A new record.
    Add(ProjectId, Vec<u8>),
    /// The same record in another envelope (signed again with its gossip
    /// bundle): the old form is deleted, so a restart restores one form.
    Replace {
        project: ProjectId,
        old: Vec<u8>,
        new: Vec<u8>,
    },
}

/// Records waiting for the writer thread.
pub type RecordJournal = std::sync::mpsc::Sender<JournalEntry>;

/// Records per write transaction, at most.
const BATCH: usize = 1024;

/// Starts the thread that writes new records to `store` in batches: it
/// blocks for the first record, takes whatever else is queued, and commits
/// them together. It stops when every sender is dropped.
pub fn spawn_record_writer(store: std::sync::Arc<StateStore>) -> std::io::Result<RecordJournal> {
    let (tx, rx) = std::sync::mpsc::channel::<JournalEntry>();
    std::thread::Builder::new()
        .name("formic-state-writer".into())
        .spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut batch = vec![first];
                while batch.len() < BATCH {
                    match rx.try_recv() {
                        Ok(r) => batch.push(r),
                        Err(_) => break,
                    }
                }
                if let Err(e) = store.write_journal(&batch) {
                    // Not fatal: peers still hold these records and pull-sync
                    // returns them after a restart.
                    tracing::warn!(error = %Chain(&e), records = batch.len(), "records not persisted");
                }
            }
        })?;
    Ok(tx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_held_reveals_and_follows_survive_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(STATE_FILE);
        let a = ContentId::of(b"a");
        let b = ContentId::of(b"b");
        {
            let store = StateStore::open(&path).expect("open");
            store
                .put_records(&[
                    (a, b"r1".to_vec()),
                    (b, b"r2".to_vec()),
                    (a, b"r1".to_vec()),
                ])
                .expect("records");
            store.put_held_reveal(&a, 7, b"reveal-7").expect("held");
            store.put_held_reveal(&a, 9, b"reveal-9").expect("held");
            store.put_held_reveal(&b, 1, b"other").expect("held");
            store.remove_held_reveals(&[(a, 9)]).expect("remove");
            store.follow(&b).expect("follow");
        }
        let store = StateStore::open(&path).expect("reopen");
        let mut records = store.records().expect("records");
        records.sort();
        let mut expected = vec![(a, b"r1".to_vec()), (b, b"r2".to_vec())];
        expected.sort();
        assert_eq!(records, expected, "stored once each");
        assert_eq!(
            store.held_reveals(&a).expect("held"),
            vec![b"reveal-7".to_vec()]
        );
        assert_eq!(
            store.held_reveals(&b).expect("held"),
            vec![b"other".to_vec()]
        );
        assert_eq!(store.followed().expect("followed"), vec![b]);
    }

    #[test]
    fn a_garbage_file_is_moved_aside_and_the_node_starts_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(STATE_FILE);
        std::fs::write(&path, vec![0xA5u8; 64 * 1024]).expect("write");
        let store = StateStore::open(&path).expect("recovered");
        assert!(store.records().expect("records").is_empty());
        let aside = std::fs::read_dir(dir.path())
            .expect("list")
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().contains("corrupt-"));
        assert!(aside, "the damaged file is kept for inspection");
    }

    #[test]
    fn flipped_bytes_in_a_real_store_never_panic() {
        use rand::{Rng, SeedableRng};
        let dir = tempfile::tempdir().expect("tempdir");
        let good = dir.path().join("good.redb");
        {
            let store = StateStore::open(&good).expect("open");
            let p = ContentId::of(b"p");
            let batch: Vec<_> = (0..2000u32)
                .map(|i| (p, i.to_le_bytes().repeat(20)))
                .collect();
            store.put_records(&batch).expect("records");
            store.put_held_reveal(&p, 1, b"held").expect("held");
        }
        let bytes = std::fs::read(&good).expect("read");
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for round in 0..60 {
            let mut damaged = bytes.clone();
            for _ in 0..8 {
                let i = rng.gen_range(0..damaged.len());
                damaged[i] ^= 1 << rng.gen_range(0..8);
            }
            let path = dir.path().join(format!("damaged-{round}.redb"));
            std::fs::write(&path, &damaged).expect("write");
            // Whatever opens must read without panicking; what cannot
            // open is an error or a fresh store.
            if let Ok(store) = StateStore::open(&path) {
                let _ = store.records();
                let _ = store.held_reveals(&ContentId::of(b"p"));
                let _ = store.followed();
            }
        }
    }

    #[test]
    fn the_writer_thread_persists_what_it_is_sent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store =
            std::sync::Arc::new(StateStore::open(&dir.path().join(STATE_FILE)).expect("open"));
        let journal = spawn_record_writer(std::sync::Arc::clone(&store)).expect("thread");
        let p = ContentId::of(b"p");
        for i in 0..100u32 {
            journal
                .send(JournalEntry::Add(p, i.to_le_bytes().to_vec()))
                .expect("send");
        }
        // A record swapped for another form of it leaves one form.
        journal
            .send(JournalEntry::Replace {
                project: p,
                old: 7u32.to_le_bytes().to_vec(),
                new: b"seven".to_vec(),
            })
            .expect("send");
        drop(journal);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let held = store.records().expect("records");
            if held.iter().any(|(_, b)| b == b"seven") {
                assert_eq!(held.len(), 100);
                assert!(!held.iter().any(|(_, b)| *b == 7u32.to_le_bytes()));
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "records not written"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}
