//! On-disk cache of compiled modules, so each app is compiled once per host.
//!
//! A file is named by the code id (BLAKE3 of the module compiled: the NaN
//! rewrite's output, or the app as is when it fell back) and the engine's
//! compatibility hash, and holds `checksum ‖ artifact`, where `checksum =
//! BLAKE3(code id ‖ compat ‖ artifact)`. The checksum is verified before
//! the artifact is handed to `Module::deserialize`, which trusts its input
//! completely (wasmtime accepted a bit-flipped artifact when this was
//! measured). Binding the code id and compatibility hash into the checksum
//! means a file renamed to another key is rejected too. Only artifacts this
//! host compiled are ever written here; nothing from peers.

use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use wasmtime::{Engine, Module};

const CHECKSUM_LEN: usize = 32;

pub(crate) struct ModuleCache {
    dir: PathBuf,
    compat: u64,
}

/// A stable-within-this-build fingerprint of everything that decides whether
/// an artifact is loadable: wasmtime version, target, and compiler settings.
fn compat_hash(engine: &Engine) -> u64 {
    // `DefaultHasher::new()` uses fixed keys, so the value is stable for a
    // given build of this program; a toolchain change that alters it merely
    // invalidates the cache, which is safe.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    crate::ENGINE_VERSION.hash(&mut h);
    h.finish()
}

impl ModuleCache {
    pub(crate) fn new(dir: PathBuf, engine: &Engine) -> Self {
        ModuleCache {
            dir,
            compat: compat_hash(engine),
        }
    }

    fn path(&self, code_id: &[u8; 32]) -> PathBuf {
        let hex = blake3::Hash::from_bytes(*code_id).to_hex();
        self.dir.join(format!("{hex}-{:016x}.cwasm", self.compat))
    }

    fn checksum(&self, code_id: &[u8; 32], artifact: &[u8]) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        h.update(b"formic.wasm-cache.v1");
        h.update(code_id);
        h.update(&self.compat.to_le_bytes());
        h.update(artifact);
        *h.finalize().as_bytes()
    }

    /// The cached module for `code_id`, or `None` when absent, unreadable,
    /// corrupt (the file is then deleted) or not loadable by this engine.
    pub(crate) fn load(&self, engine: &Engine, code_id: &[u8; 32]) -> Option<Module> {
        let path = self.path(code_id);
        let bytes = fs::read(&path).ok()?;
        let verified = bytes
            .split_at_checked(CHECKSUM_LEN)
            .and_then(|(sum, artifact)| {
                (sum == self.checksum(code_id, artifact).as_slice()).then_some(artifact)
            });
        let Some(artifact) = verified else {
            tracing::warn!(path = %path.display(), "corrupt compiled-module cache file; recompiling");
            discard(&path);
            return None;
        };
        // SAFETY: `Module::deserialize` requires bytes produced by
        // `Module::serialize` with a compatible engine, unmodified. This
        // artifact was written by `store` below from a module this process
        // compiled (never received from elsewhere), under a key that includes
        // the engine's compatibility hash, and its BLAKE3 checksum (which
        // also binds the code id and compatibility hash) was just verified, so
        // it is byte-for-byte what we serialized.
        match unsafe { Module::deserialize(engine, artifact) } {
            Ok(module) => Some(module),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cached module not loadable; recompiling");
                discard(&path);
                None
            }
        }
    }

    /// Stores `module` for `code_id`. Failures only cost a recompile later,
    /// so they are logged, not returned.
    pub(crate) fn store(&self, code_id: &[u8; 32], module: &Module) {
        if let Err(e) = self.try_store(code_id, module) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "could not cache compiled module");
        }
    }

    fn try_store(&self, code_id: &[u8; 32], module: &Module) -> std::io::Result<()> {
        let artifact = module
            .serialize()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        fs::create_dir_all(&self.dir)?;
        let path = self.path(code_id);
        // Write to a unique temporary name and rename, so concurrent
        // compilers and crashes never leave a torn file under the real name
        // (a torn one would be caught by the checksum anyway).
        let tmp = self.dir.join(format!(
            ".{}.tmp-{}-{:?}",
            path.file_name()
                .map_or_else(Default::default, |n| n.to_string_lossy()),
            std::process::id(),
            std::thread::current().id(),
        ));
        {
            let mut file = fs::File::create(&tmp)?;
            file.write_all(&self.checksum(code_id, &artifact))?;
            file.write_all(&artifact)?;
            file.sync_all()?;
        }
        fs::rename(&tmp, &path).inspect_err(|_| discard(&tmp))
    }

    /// Where the cached artifact for `code_id` lives (for tests and tools).
    pub(crate) fn file_for(&self, code_id: &[u8; 32]) -> PathBuf {
        self.path(code_id)
    }
}

fn discard(path: &Path) {
    if let Err(e) = fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), error = %e, "could not remove cache file");
    }
}
