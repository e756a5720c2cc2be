//! The content-addressed blob store in `<data-dir>/blobs/`.
//!
//! Each blob is one file named by its ContentId (64 hex digits), written
//! atomically (temporary file, fsync, rename), so a crash never leaves a
//! file whose name does not match its content. Blobs are checked against
//! their id when written; a file found corrupt on read is reported, never
//! served. Chunks are read with a seek, so serving a 1 MiB chunk of a large
//! blob does not load the whole blob. All methods do blocking disk I/O: call
//! them from `spawn_blocking` in async code.
//!
//! ## Disk quota
//!
//! With a quota (the `disk_quota` preference), storing a blob first evicts
//! least-recently-used blobs until the new one fits, so the store's bytes
//! never exceed the quota after an insert. Never evicted:
//!
//! - **pinned** blobs: the store keeps a counted pin set that its callers
//!   maintain ([`BlobStore::pin`], [`BlobStore::unpin`]).
//!   `NetworkClient::put_blob` pins what this node creates (a published
//!   project's app, manifest, batch and inputs; its own large outputs),
//!   because the network may hold no other copy yet. Blobs fetched from
//!   peers are a cache: any of them can be fetched again from its
//!   providers, so they are evictable unless a caller pins them (e.g. the
//!   blobs of a followed project still being computed). Pins live in
//!   memory: after a restart nothing is pinned until callers pin again.
//! - blobs **being read** (a `get`, `manifest` or `chunk` in progress) and
//!   the blob being written.
//!
//! When pinned and busy blobs leave no room, the insert fails with
//! [`BlobStoreError::QuotaFull`]; a blob larger than the whole quota fails
//! with [`BlobStoreError::OverQuota`]. Evicted ids are queued for the
//! network to stop announcing itself as their provider
//! ([`BlobStore::take_evicted`]).
//!
//! Recency survives restarts in the files' modification times: a read
//! touches the file's mtime (at most once a minute per blob, so serving a
//! large blob chunk by chunk costs one extra syscall a minute), and
//! [`BlobStore::open`] rebuilds the index — size and last use of every
//! blob — from one directory scan. The quota is enforced by the process
//! that holds the store: bytes another process writes into the same folder
//! are counted once this one reopens it.

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use formic_protocol::ContentId;
use formic_protocol::blob_transfer::{BlobManifest, CHUNK_SIZE, MAX_BLOB_BYTES};
use formic_protocol::messages::BlobRef;

/// Folder of the store inside the data directory.
pub const BLOBS_DIR: &str = "blobs";

/// Manifests kept in memory; computing one means hashing the whole blob.
const MANIFEST_CACHE_ENTRIES: usize = 256;

/// A read refreshes a blob's file mtime only if the last refresh is older
/// than this: LRU order needs minutes, not microseconds, of precision.
const TOUCH_EVERY: Duration = Duration::from_secs(60);

/// Evicted ids waiting for the network to stop providing them; beyond this
/// the oldest are forgotten (their provider records simply expire).
const MAX_EVICTED_QUEUE: usize = 4096;

/// Errors of the blob store.
#[derive(Debug, thiserror::Error)]
pub enum BlobStoreError {
    #[error("cannot create blob folder {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("blob {id} is {size} bytes, over the {MAX_BLOB_BYTES}-byte limit")]
    TooLarge { id: ContentId, size: u64 },
    #[error("bytes do not match blob id {expected} (they hash to {found})")]
    Mismatch {
        expected: ContentId,
        found: ContentId,
    },
    #[error("blob {id} on disk is corrupt; it was removed")]
    Corrupt { id: ContentId },
    #[error(
        "blob {id} is {size} bytes, more than the whole blob store quota of {quota} bytes \
         (raise `disk_quota` in the preferences)"
    )]
    OverQuota {
        id: ContentId,
        size: u64,
        quota: u64,
    },
    #[error(
        "no room for blob {id} ({size} bytes): the quota is {quota} bytes and {pinned} bytes are \
         pinned or in use (raise `disk_quota` in the preferences)"
    )]
    QuotaFull {
        id: ContentId,
        size: u64,
        quota: u64,
        pinned: u64,
    },
    #[error("disk error on blob {id}: {source}")]
    Io {
        id: ContentId,
        source: std::io::Error,
    },
}

/// Count and total size of the stored blobs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BlobStoreStats {
    pub blobs: u64,
    pub bytes: u64,
    /// The byte quota, when one is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<u64>,
    /// Blobs evicted to stay under the quota since the node started.
    #[serde(default)]
    pub evicted: u64,
}

/// What the store knows of one blob file.
#[derive(Debug, Clone, Copy)]
struct Entry {
    size: u64,
    /// Last read or write, for LRU order.
    last_used: SystemTime,
    /// Order of that use within this process: breaks ties between uses
    /// the clock cannot tell apart (0 for blobs found on disk at open).
    seq: u64,
    /// The file's mtime as last set or read: a read that finds it older
    /// than [`TOUCH_EVERY`] refreshes it.
    stamped: SystemTime,
}

/// The in-memory index behind the quota: sizes, recency, pins, readers.
#[derive(Debug, Default)]
struct Index {
    quota: Option<u64>,
    entries: HashMap<ContentId, Entry>,
    /// Sum of `entries`' sizes.
    total: u64,
    /// Counted pins: a blob stays while any caller holds a pin.
    pins: HashMap<ContentId, u32>,
    /// Reads in progress per blob.
    readers: HashMap<ContentId, u32>,
    evicted_queue: Vec<ContentId>,
    evicted: u64,
    /// Source of [`Entry::seq`].
    uses: u64,
}

impl Index {
    fn insert(&mut self, id: ContentId, entry: Entry) {
        if let Some(old) = self.entries.insert(id, entry) {
            self.total -= old.size;
        }
        self.total += entry.size;
    }

    fn remove(&mut self, id: &ContentId) -> Option<Entry> {
        let e = self.entries.remove(id)?;
        self.total -= e.size;
        Some(e)
    }

    /// Evictable blobs other than `keep`, least recently used first (the
    /// id breaks ties, so the order is deterministic).
    fn lru(&self, keep: Option<&ContentId>) -> Vec<(SystemTime, ContentId, u64)> {
        let mut order: Vec<_> = self
            .entries
            .iter()
            .filter(|(k, _)| {
                Some(*k) != keep && !self.pins.contains_key(*k) && !self.readers.contains_key(*k)
            })
            .map(|(k, e)| ((e.last_used, e.seq, *k), e.size))
            .collect();
        order.sort_unstable();
        order
            .into_iter()
            .map(|((t, _, k), size)| (t, k, size))
            .collect()
    }

    fn next_seq(&mut self) -> u64 {
        self.uses += 1;
        self.uses
    }

    /// Removes least-recently-used evictable blobs from the index until
    /// `incoming` more bytes fit under the quota; returns them, or the
    /// error if even evicting every evictable blob would not make room.
    /// Nothing is removed on error.
    fn make_room(
        &mut self,
        id: &ContentId,
        incoming: u64,
    ) -> Result<Vec<(ContentId, Entry)>, BlobStoreError> {
        let Some(quota) = self.quota else {
            return Ok(Vec::new());
        };
        if incoming > quota {
            return Err(BlobStoreError::OverQuota {
                id: *id,
                size: incoming,
                quota,
            });
        }
        if self.total + incoming <= quota {
            return Ok(Vec::new());
        }
        let candidates = self.lru(Some(id));
        let mut freed = 0;
        let mut chosen = 0;
        for (_, _, size) in &candidates {
            if self.total - freed + incoming <= quota {
                break;
            }
            freed += size;
            chosen += 1;
        }
        if self.total - freed + incoming > quota {
            return Err(BlobStoreError::QuotaFull {
                id: *id,
                size: incoming,
                quota,
                pinned: self.total - freed,
            });
        }
        Ok(candidates[..chosen]
            .iter()
            .filter_map(|(_, k, _)| self.remove(k).map(|e| (*k, e)))
            .collect())
    }
}

/// A folder of blobs named by content id.
#[derive(Debug)]
pub struct BlobStore {
    dir: PathBuf,
    manifests: Mutex<HashMap<ContentId, BlobManifest>>,
    /// Serializes writes and evictions: two fetches of the same blob would
    /// otherwise share one temporary file name, and two inserts could each
    /// count on the same free room.
    writing: Mutex<()>,
    /// Held only briefly, never across disk I/O, so reads do not wait for a
    /// large write.
    index: Mutex<Index>,
}

/// Marks a blob as being read for as long as it lives.
struct Reading<'a> {
    store: &'a BlobStore,
    id: ContentId,
}

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        let mut index = self.store.lock_index();
        if let Some(n) = index.readers.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                index.readers.remove(&self.id);
            }
        }
    }
}

impl BlobStore {
    /// Opens (creating if needed) the store under `data_dir`, without a
    /// quota.
    pub fn open(data_dir: &Path) -> Result<Self, BlobStoreError> {
        Self::open_with_quota(data_dir, None)
    }

    /// Opens (creating if needed) the store under `data_dir` with a byte
    /// quota (`None`: unlimited). Indexes every blob file (one directory
    /// scan) and, if they already exceed the quota, evicts the least
    /// recently used unpinned ones.
    pub fn open_with_quota(data_dir: &Path, quota: Option<u64>) -> Result<Self, BlobStoreError> {
        let dir = data_dir.join(BLOBS_DIR);
        fs::create_dir_all(&dir).map_err(|source| BlobStoreError::CreateDir {
            path: dir.clone(),
            source,
        })?;
        let store = Self {
            dir,
            manifests: Mutex::new(HashMap::new()),
            writing: Mutex::new(()),
            index: Mutex::new(Index::default()),
        };
        {
            let mut index = store.lock_index();
            for id in store.list() {
                if let Some(entry) = store.entry_from_disk(&id) {
                    index.insert(id, entry);
                }
            }
        }
        store.set_quota(quota);
        Ok(store)
    }

    /// Changes the quota (e.g. after the preferences were reloaded) and
    /// evicts down to it. If pinned or busy blobs alone exceed it, evicts
    /// what it can and logs why the rest stays.
    pub fn set_quota(&self, quota: Option<u64>) {
        let _writing = self.lock_writing();
        let victims = {
            let mut index = self.lock_index();
            index.quota = quota;
            let Some(q) = quota else { return };
            if index.total <= q {
                return;
            }
            // Everything evictable, oldest first, until under the quota.
            let mut victims = Vec::new();
            for (_, k, _) in index.lru(None) {
                if index.total <= q {
                    break;
                }
                if let Some(e) = index.remove(&k) {
                    victims.push((k, e));
                }
            }
            if index.total > q {
                tracing::warn!(
                    quota = q,
                    used = index.total,
                    "the blob store stays over its quota: the rest is pinned or being read"
                );
            }
            victims
        };
        self.delete_victims(victims);
    }

    /// Keeps `id` from being evicted until a matching [`unpin`](Self::unpin).
    /// Pins count: pinning twice needs two unpins. The blob need not be
    /// stored yet.
    pub fn pin(&self, id: ContentId) {
        *self.lock_index().pins.entry(id).or_insert(0) += 1;
    }

    /// Releases one pin of `id`.
    pub fn unpin(&self, id: &ContentId) {
        let mut index = self.lock_index();
        if let Some(n) = index.pins.get_mut(id) {
            *n -= 1;
            if *n == 0 {
                index.pins.remove(id);
            }
        }
    }

    /// Whether any caller pins `id`.
    pub fn is_pinned(&self, id: &ContentId) -> bool {
        self.lock_index().pins.contains_key(id)
    }

    /// Ids evicted since the last call, for the network to stop providing.
    pub fn take_evicted(&self) -> Vec<ContentId> {
        std::mem::take(&mut self.lock_index().evicted_queue)
    }

    /// Bytes the index counts (what the quota applies to).
    pub fn used_bytes(&self) -> u64 {
        self.lock_index().total
    }

    fn path(&self, id: &ContentId) -> PathBuf {
        self.dir.join(id.to_string())
    }

    /// Whether the blob is stored.
    pub fn has(&self, id: &ContentId) -> bool {
        self.path(id).is_file()
    }

    /// Stores `bytes` under their own id and returns their reference.
    pub fn put(&self, bytes: &[u8]) -> Result<BlobRef, BlobStoreError> {
        let blob = BlobRef::of(bytes);
        self.put_verified(&blob, bytes)?;
        Ok(blob)
    }

    /// Stores `bytes` as `blob`, refusing them unless they hash to its id.
    pub fn put_verified(&self, blob: &BlobRef, bytes: &[u8]) -> Result<(), BlobStoreError> {
        if bytes.len() as u64 > MAX_BLOB_BYTES {
            return Err(BlobStoreError::TooLarge {
                id: blob.id,
                size: bytes.len() as u64,
            });
        }
        let found = ContentId::of(bytes);
        if found != blob.id {
            return Err(BlobStoreError::Mismatch {
                expected: blob.id,
                found,
            });
        }
        let _writing = self.lock_writing();
        if self.has(&blob.id) {
            // Already stored (maybe by another process): just index it.
            if let Some(entry) = self.entry_from_disk(&blob.id) {
                self.lock_index().insert(blob.id, entry);
            }
            self.touch(&blob.id);
        } else {
            let size = bytes.len() as u64;
            let victims = self.lock_index().make_room(&blob.id, size)?;
            self.delete_victims(victims);
            crate::data_dir::write_atomic(&self.path(&blob.id), bytes, false).map_err(
                |source| BlobStoreError::Io {
                    id: blob.id,
                    source,
                },
            )?;
            let now = SystemTime::now();
            let mut index = self.lock_index();
            let seq = index.next_seq();
            index.insert(
                blob.id,
                Entry {
                    size,
                    last_used: now,
                    seq,
                    stamped: now,
                },
            );
        }
        self.cache_manifest(blob.id, BlobManifest::of(bytes));
        Ok(())
    }

    /// The whole blob, checked against its id, or `None` if not stored.
    pub fn get(&self, id: &ContentId) -> Result<Option<Vec<u8>>, BlobStoreError> {
        let _reading = self.reading(id);
        let bytes = match fs::read(self.path(id)) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(BlobStoreError::Io { id: *id, source }),
        };
        if ContentId::of(&bytes) != *id {
            self.remove_corrupt(id);
            return Err(BlobStoreError::Corrupt { id: *id });
        }
        self.touch(id);
        Ok(Some(bytes))
    }

    /// The manifest of a stored blob (computed once, then cached).
    pub fn manifest(&self, id: &ContentId) -> Result<Option<BlobManifest>, BlobStoreError> {
        let cached = self.lock_manifests().get(id).cloned();
        if let Some(m) = cached {
            // A cached manifest of an evicted blob must not be served.
            if !self.has(id) {
                self.lock_manifests().remove(id);
                return Ok(None);
            }
            self.touch(id);
            return Ok(Some(m));
        }
        let Some(bytes) = self.get(id)? else {
            return Ok(None);
        };
        let manifest = BlobManifest::of(&bytes);
        self.cache_manifest(*id, manifest.clone());
        Ok(Some(manifest))
    }

    /// Chunk `index` of a stored blob, or `None` if the blob or chunk does not
    /// exist. The chunk is checked against the manifest before it is returned.
    pub fn chunk(&self, id: &ContentId, index: u32) -> Result<Option<Vec<u8>>, BlobStoreError> {
        let _reading = self.reading(id);
        let Some(manifest) = self.manifest(id)? else {
            return Ok(None);
        };
        let Some(expected) = manifest.chunks.get(index as usize) else {
            return Ok(None);
        };
        let len = BlobManifest::chunk_len(manifest.size, index) as usize;
        let io = |source| BlobStoreError::Io { id: *id, source };
        let mut file = match fs::File::open(self.path(id)) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        file.seek(SeekFrom::Start(u64::from(index) * CHUNK_SIZE as u64))
            .map_err(io)?;
        let mut buf = vec![0u8; len];
        file.read_exact(&mut buf).map_err(io)?;
        if ContentId::of(&buf) != *expected {
            self.remove_corrupt(id);
            return Err(BlobStoreError::Corrupt { id: *id });
        }
        Ok(Some(buf))
    }

    /// Ids of every stored blob (files whose names are not ids are skipped).
    pub fn list(&self) -> Vec<ContentId> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
            .collect()
    }

    /// Count and total size of stored blobs (from the folder itself, so
    /// blobs other processes wrote count too), the quota and evictions.
    /// The quota in force, if any (cheap: no directory scan).
    pub fn quota(&self) -> Option<u64> {
        self.lock_index().quota
    }

    pub fn stats(&self) -> BlobStoreStats {
        let (quota, evicted) = {
            let index = self.lock_index();
            (index.quota, index.evicted)
        };
        let mut stats = BlobStoreStats {
            quota,
            evicted,
            ..BlobStoreStats::default()
        };
        for id in self.list() {
            if let Ok(meta) = fs::metadata(self.path(&id)) {
                stats.blobs += 1;
                stats.bytes += meta.len();
            }
        }
        stats
    }

    fn remove_corrupt(&self, id: &ContentId) {
        tracing::warn!(blob = %id, "blob file is corrupt; removing it");
        self.lock_manifests().remove(id);
        self.lock_index().remove(id);
        let _ = fs::remove_file(self.path(id));
    }

    /// Size and mtime of a blob file, as an index entry.
    fn entry_from_disk(&self, id: &ContentId) -> Option<Entry> {
        let meta = fs::metadata(self.path(id)).ok()?;
        let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        Some(Entry {
            size: meta.len(),
            last_used: mtime,
            seq: 0,
            stamped: mtime,
        })
    }

    /// Deletes blobs already taken out of the index by an eviction.
    fn delete_victims(&self, victims: Vec<(ContentId, Entry)>) {
        if victims.is_empty() {
            return;
        }
        let mut deleted = Vec::with_capacity(victims.len());
        for (id, entry) in victims {
            self.lock_manifests().remove(&id);
            match fs::remove_file(self.path(&id)) {
                Ok(()) => deleted.push(id),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => deleted.push(id),
                Err(error) => {
                    // Still on disk: count it again rather than undercount.
                    tracing::warn!(blob = %id, %error, "cannot delete an evicted blob");
                    self.lock_index().insert(id, entry);
                }
            }
        }
        tracing::debug!(count = deleted.len(), "evicted least recently used blobs");
        let mut index = self.lock_index();
        index.evicted += deleted.len() as u64;
        index.evicted_queue.extend(deleted);
        let excess = index.evicted_queue.len().saturating_sub(MAX_EVICTED_QUEUE);
        index.evicted_queue.drain(..excess);
    }

    /// Marks `id` as being read until the guard drops.
    fn reading(&self, id: &ContentId) -> Reading<'_> {
        *self.lock_index().readers.entry(*id).or_insert(0) += 1;
        Reading {
            store: self,
            id: *id,
        }
    }

    /// Records a use of `id`; refreshes its file's mtime when the last
    /// refresh is older than [`TOUCH_EVERY`], so recency survives restarts.
    fn touch(&self, id: &ContentId) {
        let now = SystemTime::now();
        let stale = {
            let mut index = self.lock_index();
            let seq = index.next_seq();
            let Some(e) = index.entries.get_mut(id) else {
                return;
            };
            e.last_used = now;
            e.seq = seq;
            let stale = now
                .duration_since(e.stamped)
                .map_or(true, |d| d >= TOUCH_EVERY);
            if stale {
                e.stamped = now;
            }
            stale
        };
        if stale {
            // Best effort: a missed stamp only makes the blob look older
            // after a restart.
            if let Err(error) = fs::File::open(self.path(id)).and_then(|f| f.set_modified(now)) {
                tracing::debug!(blob = %id, %error, "cannot refresh a blob's mtime");
            }
        }
    }

    fn lock_writing(&self) -> MutexGuard<'_, ()> {
        self.writing.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_index(&self) -> MutexGuard<'_, Index> {
        // Every update keeps `total` equal to the sum of entries before it
        // can panic, so a poisoned index is still consistent.
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn cache_manifest(&self, id: ContentId, manifest: BlobManifest) {
        let mut cache = self.lock_manifests();
        // A crude bound: forgetting every manifest only costs re-hashing.
        if cache.len() >= MANIFEST_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(id, manifest);
    }

    fn lock_manifests(&self) -> std::sync::MutexGuard<'_, HashMap<ContentId, BlobManifest>> {
        // The cache holds no invariants a panicking holder could break.
        self.manifests.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_reads_and_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let bytes: Vec<u8> = (0..(CHUNK_SIZE + 10)).map(|i| (i % 251) as u8).collect();
        let blob = store.put(&bytes).unwrap();
        assert!(store.has(&blob.id));
        assert_eq!(store.get(&blob.id).unwrap().unwrap(), bytes);
        assert_eq!(
            store.chunk(&blob.id, 1).unwrap().unwrap(),
            bytes[CHUNK_SIZE..]
        );
        assert_eq!(store.chunk(&blob.id, 2).unwrap(), None);
        assert_eq!(
            store.stats(),
            BlobStoreStats {
                blobs: 1,
                bytes: bytes.len() as u64,
                quota: None,
                evicted: 0,
            }
        );
        let wrong = BlobRef {
            id: ContentId::of(b"other"),
            size: 3,
        };
        assert!(matches!(
            store.put_verified(&wrong, b"abc"),
            Err(BlobStoreError::Mismatch { .. })
        ));
    }

    #[test]
    fn corrupt_file_is_reported_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let blob = store.put(b"hello blob").unwrap();
        fs::write(
            dir.path().join(BLOBS_DIR).join(blob.id.to_string()),
            b"jello blob",
        )
        .unwrap();
        assert!(matches!(
            store.get(&blob.id),
            Err(BlobStoreError::Corrupt { .. })
        ));
        assert!(!store.has(&blob.id));
    }

    /// A blob of `len` bytes, distinct per `tag`.
    fn blob(tag: u8, len: usize) -> Vec<u8> {
        let mut b = vec![tag; len];
        b[0] = tag;
        b
    }

    fn quota_store(quota: u64) -> (tempfile::TempDir, BlobStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open_with_quota(dir.path(), Some(quota)).unwrap();
        (dir, store)
    }

    #[test]
    fn evicts_the_least_recently_used_blob() {
        let (_dir, store) = quota_store(3000);
        let a = store.put(&blob(1, 1000)).unwrap().id;
        let b = store.put(&blob(2, 1000)).unwrap().id;
        let c = store.put(&blob(3, 1000)).unwrap().id;
        // Reading `a` makes `b` the least recently used.
        store.get(&a).unwrap().unwrap();
        let d = store.put(&blob(4, 1000)).unwrap().id;
        assert!(store.has(&a) && !store.has(&b) && store.has(&c) && store.has(&d));
        assert_eq!(store.take_evicted(), vec![b]);
        assert!(store.take_evicted().is_empty());
        // Serving a chunk counts as a use too: now `c` goes first.
        store.chunk(&a, 0).unwrap().unwrap();
        store.chunk(&d, 0).unwrap().unwrap();
        let e = store.put(&blob(5, 1000)).unwrap().id;
        assert!(!store.has(&c) && store.has(&e));
        // A cached manifest of an evicted blob is not served.
        assert_eq!(store.manifest(&c).unwrap(), None);
        let stats = store.stats();
        assert_eq!((stats.blobs, stats.bytes), (3, 3000));
        assert_eq!((stats.quota, stats.evicted), (Some(3000), 2));
    }

    #[test]
    fn one_insert_evicts_as_many_as_needed_oldest_first() {
        let (_dir, store) = quota_store(4000);
        let ids: Vec<_> = (0..4)
            .map(|i| store.put(&blob(i, 1000)).unwrap().id)
            .collect();
        let big = store.put(&blob(9, 2500)).unwrap().id;
        assert_eq!(store.take_evicted(), ids[..3].to_vec());
        assert!(store.has(&ids[3]) && store.has(&big));
        assert_eq!(store.used_bytes(), 3500);
    }

    #[test]
    fn pinned_and_busy_blobs_are_never_evicted() {
        let (_dir, store) = quota_store(2000);
        let a = store.put(&blob(1, 1000)).unwrap().id;
        store.pin(a);
        let b = store.put(&blob(2, 1000)).unwrap().id;
        let c = store.put(&blob(3, 1000)).unwrap().id;
        assert!(store.has(&a) && !store.has(&b) && store.has(&c));

        // `c` is being read: nothing left to evict, a clear error, and the
        // store is untouched.
        let reading = store.reading(&c);
        let err = store.put(&blob(4, 1000)).unwrap_err();
        assert!(
            matches!(
                err,
                BlobStoreError::QuotaFull {
                    size: 1000,
                    quota: 2000,
                    pinned: 2000,
                    ..
                }
            ),
            "{err}"
        );
        assert!(store.has(&a) && store.has(&c));
        drop(reading);

        // Pins count: two pins need two unpins.
        store.pin(a);
        store.unpin(&a);
        assert!(store.is_pinned(&a));
        let d = store.put(&blob(4, 1000)).unwrap().id;
        assert!(store.has(&a) && !store.has(&c) && store.has(&d));
        store.unpin(&a);
        assert!(!store.is_pinned(&a));
        store.put(&blob(5, 1000)).unwrap();
        assert!(!store.has(&a), "unpinned, `a` is the oldest");
    }

    #[test]
    fn a_blob_larger_than_the_quota_is_a_typed_error() {
        let (dir, store) = quota_store(1000);
        let small = store.put(&blob(1, 600)).unwrap().id;
        let err = store.put(&blob(2, 1001)).unwrap_err();
        assert!(
            matches!(
                err,
                BlobStoreError::OverQuota {
                    size: 1001,
                    quota: 1000,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("disk_quota"), "{err}");
        // Nothing was evicted for a blob that could never fit.
        assert!(store.has(&small));
        let files = fs::read_dir(dir.path().join(BLOBS_DIR)).unwrap().count();
        assert_eq!(files, 1);
    }

    #[test]
    fn quota_is_never_exceeded_after_an_insert() {
        let quota = 10_000;
        let (_dir, store) = quota_store(quota);
        // A small deterministic generator: the same sequence every run.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut stored = Vec::new();
        for i in 0..300u32 {
            let len = 4 + (next() % 3000) as usize;
            let mut bytes = vec![0u8; len];
            bytes[..4].copy_from_slice(&i.to_le_bytes());
            match store.put(&bytes) {
                Ok(r) => stored.push(r.id),
                Err(BlobStoreError::QuotaFull { .. }) => {}
                Err(e) => panic!("unexpected error: {e}"),
            }
            // Now and then pin, unpin or read a stored blob.
            if let Some(&id) = stored.get((next() % (stored.len() as u64 + 1)) as usize) {
                match next() % 4 {
                    0 => store.pin(id),
                    1 => store.unpin(&id),
                    _ => {
                        let _ = store.get(&id).unwrap();
                    }
                }
            }
            let on_disk = store.stats().bytes;
            assert!(
                store.used_bytes() <= quota,
                "index over quota at insert {i}"
            );
            assert!(on_disk <= quota, "{on_disk} bytes on disk at insert {i}");
            assert_eq!(on_disk, store.used_bytes(), "index and disk disagree");
        }
        assert!(store.stats().evicted > 0);
    }

    fn set_age(dir: &Path, id: &ContentId, age: Duration) {
        let path = dir.join(BLOBS_DIR).join(id.to_string());
        let f = fs::File::open(path).unwrap();
        f.set_modified(SystemTime::now() - age).unwrap();
    }

    #[test]
    fn recency_survives_a_restart_through_file_mtimes() {
        let dir = tempfile::tempdir().unwrap();
        let hour = Duration::from_secs(3600);
        let (a, b, c) = {
            let store = BlobStore::open(dir.path()).unwrap();
            let a = store.put(&blob(1, 1000)).unwrap().id;
            let b = store.put(&blob(2, 1000)).unwrap().id;
            let c = store.put(&blob(3, 1000)).unwrap().id;
            (a, b, c)
        };
        // Written in the order a, b, c but last used c, then a, then b.
        set_age(dir.path(), &b, 3 * hour);
        set_age(dir.path(), &a, 2 * hour);
        set_age(dir.path(), &c, hour);
        {
            let store = BlobStore::open_with_quota(dir.path(), Some(3000)).unwrap();
            // A read after the restart refreshes `b`'s mtime...
            store.get(&b).unwrap().unwrap();
        }
        // ...so after another restart `a` is the oldest.
        let store = BlobStore::open_with_quota(dir.path(), Some(3000)).unwrap();
        store.put(&blob(4, 1000)).unwrap();
        assert_eq!(store.take_evicted(), vec![a]);
        assert!(store.has(&b) && store.has(&c));
    }

    #[test]
    fn lowering_the_quota_evicts_down_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let ids: Vec<_> = (0..5)
            .map(|i| store.put(&blob(i, 1000)).unwrap().id)
            .collect();
        store.pin(ids[0]);
        store.set_quota(Some(2500));
        assert_eq!(store.used_bytes(), 2000);
        assert_eq!(store.take_evicted(), ids[1..4].to_vec());
        assert!(store.has(&ids[0]) && store.has(&ids[4]));
        // Reopening with a quota below what is stored evicts at once.
        drop(store);
        let store = BlobStore::open_with_quota(dir.path(), Some(1000)).unwrap();
        assert_eq!(store.used_bytes(), 1000);
    }
}
