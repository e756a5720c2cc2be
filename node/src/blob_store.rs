//! The content-addressed blob store in `<data-dir>/blobs/`.
//!
//! Each blob is one file named by its ContentId (64 hex digits), written
//! atomically (temporary file, fsync, rename), so a crash never leaves a
//! file whose name does not match its content. Blobs are checked against
//! their id when written; a file found corrupt on read is reported, never
//! served. Chunks are read with a seek, so serving a 1 MiB chunk of a large
//! blob does not load the whole blob. All methods do blocking disk I/O: call
//! them from `spawn_blocking` in async code.

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use formic_protocol::ContentId;
use formic_protocol::blob_transfer::{BlobManifest, CHUNK_SIZE, MAX_BLOB_BYTES};
use formic_protocol::messages::BlobRef;

/// Folder of the store inside the data directory.
pub const BLOBS_DIR: &str = "blobs";

/// Manifests kept in memory; computing one means hashing the whole blob.
const MANIFEST_CACHE_ENTRIES: usize = 256;

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
}

/// A folder of blobs named by content id.
#[derive(Debug)]
pub struct BlobStore {
    dir: PathBuf,
    manifests: Mutex<HashMap<ContentId, BlobManifest>>,
    /// Serializes writes: two fetches of the same blob would otherwise share
    /// one temporary file name.
    writing: Mutex<()>,
}

impl BlobStore {
    /// Opens (creating if needed) the store under `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, BlobStoreError> {
        let dir = data_dir.join(BLOBS_DIR);
        fs::create_dir_all(&dir).map_err(|source| BlobStoreError::CreateDir {
            path: dir.clone(),
            source,
        })?;
        Ok(Self {
            dir,
            manifests: Mutex::new(HashMap::new()),
            writing: Mutex::new(()),
        })
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
        let _guard = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        if !self.has(&blob.id) {
            crate::data_dir::write_atomic(&self.path(&blob.id), bytes, false).map_err(
                |source| BlobStoreError::Io {
                    id: blob.id,
                    source,
                },
            )?;
        }
        self.cache_manifest(blob.id, BlobManifest::of(bytes));
        Ok(())
    }

    /// The whole blob, checked against its id, or `None` if not stored.
    pub fn get(&self, id: &ContentId) -> Result<Option<Vec<u8>>, BlobStoreError> {
        let bytes = match fs::read(self.path(id)) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(BlobStoreError::Io { id: *id, source }),
        };
        if ContentId::of(&bytes) != *id {
            self.remove_corrupt(id);
            return Err(BlobStoreError::Corrupt { id: *id });
        }
        Ok(Some(bytes))
    }

    /// The manifest of a stored blob (computed once, then cached).
    pub fn manifest(&self, id: &ContentId) -> Result<Option<BlobManifest>, BlobStoreError> {
        if let Some(m) = self.lock_manifests().get(id) {
            return Ok(Some(m.clone()));
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

    /// Count and total size of stored blobs.
    pub fn stats(&self) -> BlobStoreStats {
        let mut stats = BlobStoreStats::default();
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
        let _ = fs::remove_file(self.path(id));
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
                bytes: bytes.len() as u64
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
}
