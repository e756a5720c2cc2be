//! The per-project record store: every verified gossip record this node has
//! seen, which pull-sync serves to peers that join or restart.
//!
//! Records are deduplicated by the blake3 of their bytes and kept in arrival
//! order per project, so a sync cursor is simply a position in that order.
//! It lives in memory; a node that keeps state (`formic node`) gives it a
//! journal, and every new record is also written to the crash-safe state
//! store (state_store.rs), from which it is filled again at start. It is bounded: a project keeps at
//! most `max_per_project` records and the store at most `max_projects`
//! projects; beyond that new records are refused (and logged), never
//! allowed to grow memory without limit.

use std::collections::{HashMap, HashSet};

use formic_protocol::ContentId;
use formic_protocol::messages::ProjectId;

/// Limits of a [`RecordStore`].
#[derive(Debug, Clone, Copy)]
pub struct RecordLimits {
    pub max_projects: usize,
    pub max_per_project: usize,
}

impl Default for RecordLimits {
    fn default() -> Self {
        Self {
            max_projects: 1024,
            max_per_project: 1_000_000,
        }
    }
}

/// Outcome of [`RecordStore::insert`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    New,
    Duplicate,
    /// Over a limit; the record was dropped.
    Full,
}

#[derive(Debug, Default)]
struct ProjectLog {
    /// Each record's position in `records`, by the blake3 of its bytes.
    seen: HashMap<ContentId, usize>,
    /// The records' ids (`Gossip::record_id`), where known: one record in
    /// two envelopes (signed alone, and again with its gossip bundle) is
    /// stored and reported once, whichever comes first. Records restored
    /// from disk at start have none.
    ids: HashSet<ContentId>,
    records: Vec<Vec<u8>>,
}

/// Verified records by project.
#[derive(Debug, Default)]
pub struct RecordStore {
    limits: RecordLimits,
    projects: HashMap<ProjectId, ProjectLog>,
    /// Where new records go to be persisted, when the node keeps state.
    journal: Option<crate::state_store::RecordJournal>,
}

impl RecordStore {
    pub fn new(limits: RecordLimits) -> Self {
        Self {
            limits,
            projects: HashMap::new(),
            journal: None,
        }
    }

    /// Sends every record inserted from now on to `journal` (the state
    /// store's writer); records loaded before this are not sent back.
    pub fn set_journal(&mut self, journal: crate::state_store::RecordJournal) {
        self.journal = Some(journal);
    }

    /// Whether these exact bytes are held under any project. Records are
    /// content-addressed, so bytes held here were verified on arrival and
    /// need no second signature check.
    pub fn holds(&self, bytes: &[u8]) -> bool {
        let id = ContentId::of(bytes);
        self.projects.values().any(|log| log.seen.contains_key(&id))
    }

    /// Whether these exact bytes are already stored for `project`.
    pub fn contains(&self, project: &ProjectId, bytes: &[u8]) -> bool {
        self.projects
            .get(project)
            .is_some_and(|log| log.seen.contains_key(&ContentId::of(bytes)))
    }

    /// Adds a record the caller has already verified.
    pub fn insert(&mut self, project: ProjectId, bytes: Vec<u8>) -> Inserted {
        self.insert_record(project, None, bytes)
    }

    /// Adds a record the caller has already verified, with its record id:
    /// another envelope of a record already held is a duplicate.
    pub fn insert_record(
        &mut self,
        project: ProjectId,
        record_id: Option<ContentId>,
        bytes: Vec<u8>,
    ) -> Inserted {
        if !self.projects.contains_key(&project) && self.projects.len() >= self.limits.max_projects
        {
            tracing::warn!(%project, "record store is full of projects; dropping record");
            return Inserted::Full;
        }
        let log = self.projects.entry(project).or_default();
        let id = ContentId::of(&bytes);
        if log.seen.contains_key(&id) || record_id.is_some_and(|r| log.ids.contains(&r)) {
            return Inserted::Duplicate;
        }
        if log.records.len() >= self.limits.max_per_project {
            tracing::warn!(%project, "project's record log is full; dropping record");
            return Inserted::Full;
        }
        log.seen.insert(id, log.records.len());
        if let Some(r) = record_id {
            log.ids.insert(r);
        }
        if self.journal.is_some() {
            Self::journal(
                &mut self.journal,
                crate::state_store::JournalEntry::Add(project, bytes.clone()),
            );
        }
        log.records.push(bytes);
        Inserted::New
    }

    /// Puts `new` in the place of `old`: the same record in another
    /// envelope (signed again as one of a batch when it was gossiped), so
    /// this node serves the form its peers hold, and sync cursors, which
    /// are positions, stay valid. Does nothing unless `old` is held and
    /// `new` is not.
    pub fn replace(&mut self, project: &ProjectId, old: &[u8], new: Vec<u8>) -> bool {
        let Some(log) = self.projects.get_mut(project) else {
            return false;
        };
        let new_id = ContentId::of(&new);
        if log.seen.contains_key(&new_id) {
            return false;
        }
        let Some(pos) = log.seen.remove(&ContentId::of(old)) else {
            return false;
        };
        log.seen.insert(new_id, pos);
        let old = std::mem::replace(&mut log.records[pos], new.clone());
        if self.journal.is_some() {
            Self::journal(
                &mut self.journal,
                crate::state_store::JournalEntry::Replace {
                    project: *project,
                    old,
                    new,
                },
            );
        }
        true
    }

    fn journal(
        journal: &mut Option<crate::state_store::RecordJournal>,
        entry: crate::state_store::JournalEntry,
    ) {
        if let Some(j) = journal
            && j.send(entry).is_err()
        {
            tracing::warn!("the state writer stopped; new records are no longer persisted");
            *journal = None;
        }
    }

    /// Up to `limit` records from position `cursor`, with at most `max_bytes`
    /// in total, and where the next page starts (None when done).
    pub fn page(
        &self,
        project: &ProjectId,
        cursor: u64,
        limit: usize,
        max_bytes: usize,
    ) -> (Vec<Vec<u8>>, Option<u64>) {
        let Some(log) = self.projects.get(project) else {
            return (Vec::new(), None);
        };
        let start = usize::try_from(cursor)
            .unwrap_or(usize::MAX)
            .min(log.records.len());
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut pos = start;
        while pos < log.records.len() && out.len() < limit {
            let rec = &log.records[pos];
            // Per-record CBOR framing is a few bytes; 16 is a safe margin.
            if bytes + rec.len() + 16 > max_bytes && !out.is_empty() {
                break;
            }
            bytes += rec.len() + 16;
            out.push(rec.clone());
            pos += 1;
        }
        let next = (pos < log.records.len()).then_some(pos as u64);
        (out, next)
    }

    /// Every record of `project`, in arrival order.
    pub fn records(&self, project: &ProjectId) -> Vec<Vec<u8>> {
        self.projects
            .get(project)
            .map(|l| l.records.clone())
            .unwrap_or_default()
    }

    /// Number of records over all projects.
    pub fn len(&self) -> usize {
        self.projects.values().map(|l| l.records.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Projects with at least one record.
    pub fn projects(&self) -> Vec<ProjectId> {
        self.projects.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedups_and_pages() {
        let mut store = RecordStore::new(RecordLimits {
            max_projects: 1,
            max_per_project: 3,
        });
        let p = ContentId::of(b"p");
        assert_eq!(store.insert(p, vec![1]), Inserted::New);
        assert_eq!(store.insert(p, vec![1]), Inserted::Duplicate);
        assert_eq!(store.insert(p, vec![2]), Inserted::New);
        assert_eq!(store.insert(p, vec![3]), Inserted::New);
        assert_eq!(store.insert(p, vec![4]), Inserted::Full);
        assert_eq!(store.insert(ContentId::of(b"q"), vec![1]), Inserted::Full);
        let (page, next) = store.page(&p, 0, 2, 1 << 20);
        assert_eq!(page, vec![vec![1], vec![2]]);
        assert_eq!(next, Some(2));
        let (page, next) = store.page(&p, 2, 2, 1 << 20);
        assert_eq!(page, vec![vec![3]]);
        assert_eq!(next, None);
        assert_eq!(store.page(&p, 99, 2, 1 << 20), (vec![], None));
    }

    #[test]
    fn one_record_in_two_envelopes_is_held_once() {
        let mut store = RecordStore::new(RecordLimits::default());
        let p = ContentId::of(b"p");
        let id = Some(ContentId::of(b"record"));
        assert_eq!(store.insert_record(p, id, vec![1]), Inserted::New);
        assert_eq!(store.insert_record(p, id, vec![2]), Inserted::Duplicate);
        assert_eq!(
            store.insert_record(p, Some(ContentId::of(b"other")), vec![2]),
            Inserted::New
        );
        assert_eq!(store.records(&p), vec![vec![1], vec![2]]);
    }

    #[test]
    fn a_replaced_record_keeps_its_place() {
        let mut store = RecordStore::new(RecordLimits::default());
        let p = ContentId::of(b"p");
        for r in [vec![1], vec![2], vec![3]] {
            store.insert(p, r);
        }
        assert!(store.replace(&p, &[2], vec![20]));
        assert_eq!(store.records(&p), vec![vec![1], vec![20], vec![3]]);
        assert!(store.contains(&p, &[20]) && !store.contains(&p, &[2]));
        // Not held, or the new form already held: nothing changes.
        assert!(!store.replace(&p, &[2], vec![21]));
        assert!(!store.replace(&p, &[1], vec![3]));
        assert!(!store.replace(&ContentId::of(b"q"), &[1], vec![5]));
        assert_eq!(store.records(&p), vec![vec![1], vec![20], vec![3]]);
        assert_eq!(store.insert(p, vec![20]), Inserted::Duplicate);
    }
}
