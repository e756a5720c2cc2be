//! Fetching a blob from providers, verified chunk by chunk.
//!
//! 1. Ask a provider for the manifest (size + blake3 of each chunk) and
//!    check it matches the BlobRef's size.
//! 2. Fetch chunks from all providers in turn, a few at a time; each chunk
//!    is checked against its digest. A provider sending a bad chunk is
//!    dropped (and reported to the swarm task, which counts it toward a
//!    ban) and the chunk is fetched again from another.
//! 3. Check the whole against the BlobRef id. If that fails, the manifest
//!    lied: drop its provider and start again with the next one.
//! 4. Store the blob and provide it in turn.
//!
//! It runs in the caller's task, using the client's primitive commands, so
//! the swarm task never waits on a transfer. `NetworkClient::fetch_blob` is
//! defined here, so `client.rs` does not depend on this file.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use formic_protocol::ContentId;
use formic_protocol::blob_transfer::{
    BlobManifest, BlobRequest, BlobResponse, CHUNK_SIZE, MAX_BLOB_BYTES,
};
use formic_protocol::messages::BlobRef;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use libp2p::PeerId;

use super::client::{ClientError, NetworkClient, RequestError};
use crate::blob_store::BlobStoreError;
use crate::error_report::Chain;

/// Why a blob could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("blob of {0} bytes is over the size limit")]
    TooLarge(u64),
    #[error("no provider of blob {0} was found")]
    NoProviders(ContentId),
    #[error("every provider of blob {id} failed ({tried} tried); last error: {last}")]
    AllProvidersFailed {
        id: ContentId,
        tried: usize,
        last: String,
    },
    #[error(transparent)]
    Store(#[from] BlobStoreError),
    #[error("the blob-store task failed")]
    Join(#[source] tokio::task::JoinError),
}

/// How a blob fetch went: who served it and who was caught lying.
#[derive(Debug, Clone, Default)]
pub struct FetchReport {
    /// Peers that served at least one verified chunk.
    pub served_by: Vec<PeerId>,
    /// Peers dropped for sending data that failed verification.
    pub rejected: Vec<(PeerId, String)>,
    /// Chunks fetched again after a failure.
    pub refetched_chunks: usize,
}

impl NetworkClient {
    /// Fetches a blob (from the local store, else from providers found in
    /// Kademlia), verifying every chunk and the whole, then stores and
    /// provides it.
    pub async fn fetch_blob(&self, blob: BlobRef) -> Result<Vec<u8>, FetchError> {
        self.fetch_blob_with(blob, Vec::new())
            .await
            .map(|(bytes, _)| bytes)
    }

    /// Like [`fetch_blob`](Self::fetch_blob), trying `preferred` peers
    /// before the providers Kademlia finds, and reporting who served what.
    pub async fn fetch_blob_with(
        &self,
        blob: BlobRef,
        preferred: Vec<PeerId>,
    ) -> Result<(Vec<u8>, FetchReport), FetchError> {
        fetch(self, blob, preferred).await
    }
}

/// Chunk requests in flight at once for one fetch.
const PARALLEL_CHUNKS: usize = 4;

/// Provider lookups before giving up when Kademlia finds nobody yet (a
/// provider record may still be propagating).
const PROVIDER_LOOKUPS: usize = 3;

/// Connected peers asked after the providers Kademlia finds (or instead).
const CONNECTED_FALLBACK: usize = 16;

enum ChunkResult {
    Good(Vec<u8>),
    /// The peer sent data that does not match: drop and report it.
    Bad(String),
    /// The peer could not serve it (offline, not found, busy): drop it.
    Unavailable(String),
    /// The connection the request went over closed under it: ask again,
    /// a few times, since the peer may still be connected another way (a
    /// relayed connection is closed once hole punching gives a direct one).
    Interrupted(String),
}

/// Requests to one peer that may be cut by a closing connection before the
/// peer counts as unavailable for the rest of a fetch.
const INTERRUPTIONS_PER_PEER: u32 = 3;

async fn request_chunk(
    client: &NetworkClient,
    peer: PeerId,
    id: ContentId,
    index: u32,
    manifest: &BlobManifest,
) -> ChunkResult {
    let expected_len = BlobManifest::chunk_len(manifest.size, index) as usize;
    match client
        .blob_request(peer, BlobRequest::Chunk { id, index })
        .await
    {
        Ok(BlobResponse::Chunk(bytes)) => {
            if bytes.len() != expected_len {
                ChunkResult::Bad(format!(
                    "chunk {index} is {} bytes, expected {expected_len}",
                    bytes.len()
                ))
            } else if manifest.chunks.get(index as usize) != Some(&ContentId::of(&bytes)) {
                ChunkResult::Bad(format!(
                    "chunk {index} of blob {} does not match its blake3 digest",
                    id.short()
                ))
            } else {
                ChunkResult::Good(bytes)
            }
        }
        Ok(BlobResponse::NotFound) => ChunkResult::Unavailable("not found".into()),
        Ok(BlobResponse::Refused(r)) => ChunkResult::Unavailable(format!("refused: {r}")),
        Ok(BlobResponse::Manifest(_)) => {
            ChunkResult::Bad("answered a chunk request with a manifest".into())
        }
        Err(RequestError::Malformed(e)) => ChunkResult::Bad(format!("malformed response: {e}")),
        Err(RequestError::Failed(failure))
            if matches!(
                *failure,
                libp2p::request_response::OutboundFailure::ConnectionClosed
            ) =>
        {
            ChunkResult::Interrupted(failure.to_string())
        }
        Err(e) => ChunkResult::Unavailable(e.to_string()),
    }
}

async fn candidates(
    client: &NetworkClient,
    blob: &BlobRef,
    preferred: &[PeerId],
) -> Result<Vec<PeerId>, FetchError> {
    let me = client.local_peer_id();
    let mut out: Vec<PeerId> = Vec::new();
    for p in preferred {
        if *p != me && !out.contains(p) {
            out.push(*p);
        }
    }
    for attempt in 0..PROVIDER_LOOKUPS {
        let found = client.find_providers(blob.id).await?;
        for p in found {
            if !out.contains(&p) {
                out.push(p);
            }
        }
        if !out.is_empty() {
            break;
        }
        tracing::debug!(blob = %blob.id.short(), attempt, "no provider found yet");
        tokio::time::sleep(std::time::Duration::from_millis(500 * (attempt as u64 + 1))).await;
    }
    // After the providers, the peers we are connected to: Kademlia may
    // know no provider yet (a publisher that has just joined is often
    // still in client mode, so its provider records have nowhere to
    // live), or only providers we cannot reach (behind NAT, with no relay
    // address known). A connected peer is reachable by definition, and
    // one without the blob just answers NotFound.
    let connected = client.connected_peers().await.unwrap_or_default();
    let extra: Vec<PeerId> = connected
        .into_iter()
        .filter(|p| *p != me && !out.contains(p))
        .take(CONNECTED_FALLBACK)
        .collect();
    out.extend(extra);
    if out.is_empty() {
        return Err(FetchError::NoProviders(blob.id));
    }
    Ok(out)
}

/// See the module docs.
async fn fetch(
    client: &NetworkClient,
    blob: BlobRef,
    preferred: Vec<PeerId>,
) -> Result<(Vec<u8>, FetchReport), FetchError> {
    if blob.size > MAX_BLOB_BYTES {
        return Err(FetchError::TooLarge(blob.size));
    }
    // A blob the store could never keep is refused before a byte is
    // fetched: a node with a small `disk_quota` downloaded such a blob
    // whole, failed to store it, and downloaded it again on every retry.
    if let Some(quota) = client.blob_store().quota()
        && blob.size > quota
    {
        return Err(FetchError::Store(BlobStoreError::OverQuota {
            id: blob.id,
            size: blob.size,
            quota,
        }));
    }
    let store = Arc::clone(client.blob_store());
    let id = blob.id;
    let local = tokio::task::spawn_blocking(move || store.get(&id))
        .await
        .map_err(FetchError::Join)??;
    if let Some(bytes) = local {
        return Ok((bytes, FetchReport::default()));
    }

    let mut report = FetchReport::default();
    let providers = candidates(client, &blob, &preferred).await?;
    let tried = providers.len();
    let mut bad: HashSet<PeerId> = HashSet::new();
    let mut last_error = String::from("no provider answered");

    for manifest_source in providers.clone() {
        if bad.contains(&manifest_source) {
            continue;
        }
        let manifest = match client
            .blob_request(manifest_source, BlobRequest::Manifest { id: blob.id })
            .await
        {
            Ok(BlobResponse::Manifest(m)) => match m.check(&blob) {
                Ok(()) => m,
                Err(e) => {
                    reject(
                        client,
                        &mut report,
                        &mut bad,
                        manifest_source,
                        format!("bad manifest: {e}"),
                    )
                    .await;
                    last_error = e.to_string();
                    continue;
                }
            },
            Ok(other) => {
                last_error = format!(
                    "{manifest_source} answered the manifest request with {}",
                    describe(&other)
                );
                bad.insert(manifest_source);
                continue;
            }
            Err(e) => {
                last_error = format!("{manifest_source}: {e}");
                bad.insert(manifest_source);
                continue;
            }
        };

        let started = tokio::time::Instant::now();
        let fetched =
            fetch_chunks(client, &blob, &manifest, &providers, &mut bad, &mut report).await;
        let took = started.elapsed();
        match fetched {
            Ok(bytes) if ContentId::of(&bytes) == blob.id => {
                let store = Arc::clone(client.blob_store());
                let stored = tokio::task::spawn_blocking(move || {
                    store.put_verified(&blob, &bytes).map(|()| bytes)
                })
                .await
                .map_err(FetchError::Join)??;
                // Provide it in turn, so the blob survives its publisher
                // going offline. Failing to announce is not failing to fetch.
                if let Err(e) = client.provide(blob.id).await {
                    tracing::warn!(blob = %blob.id.short(), error = %Chain(&e), "fetched blob but could not provide it");
                }
                tracing::info!(blob = %blob.id.short(), size = blob.size, served_by = report.served_by.len(),
                    rejected = report.rejected.len(), took_ms = took.as_millis() as u64,
                    mb_per_s = format_args!("{:.1}", blob.size as f64 / 1e6 / took.as_secs_f64().max(1e-6)),
                    "fetched blob");
                return Ok((stored, report));
            }
            Ok(_) => {
                // Every chunk matched the manifest but the whole does not
                // match the id: the manifest itself was forged.
                last_error =
                    format!("manifest from {manifest_source} does not add up to the blob id");
                reject(
                    client,
                    &mut report,
                    &mut bad,
                    manifest_source,
                    last_error.clone(),
                )
                .await;
            }
            Err(e) => last_error = e,
        }
    }
    Err(FetchError::AllProvidersFailed {
        id: blob.id,
        tried,
        last: last_error,
    })
}

fn describe(r: &BlobResponse) -> &'static str {
    match r {
        BlobResponse::Manifest(_) => "a manifest",
        BlobResponse::Chunk(_) => "a chunk",
        BlobResponse::NotFound => "not found",
        BlobResponse::Refused(_) => "a refusal",
    }
}

async fn reject(
    client: &NetworkClient,
    report: &mut FetchReport,
    bad: &mut HashSet<PeerId>,
    peer: PeerId,
    reason: String,
) {
    tracing::warn!(%peer, %reason, "blob provider sent bad data; dropping it");
    bad.insert(peer);
    report.rejected.push((peer, reason.clone()));
    let _ = client.report_misbehaviour(peer, reason).await;
}

/// Fetches every chunk of `manifest` from the providers not in `bad`.
async fn fetch_chunks(
    client: &NetworkClient,
    blob: &BlobRef,
    manifest: &BlobManifest,
    providers: &[PeerId],
    bad: &mut HashSet<PeerId>,
    report: &mut FetchReport,
) -> Result<Vec<u8>, String> {
    let count = manifest.chunks.len();
    let mut chunks: Vec<Option<Vec<u8>>> = vec![None; count];
    let mut todo: VecDeque<u32> = (0..count as u32).collect();
    let mut unavailable: HashSet<PeerId> = HashSet::new();
    let mut interrupted: HashMap<PeerId, u32> = HashMap::new();
    let mut next_peer = 0usize;
    let mut in_flight = FuturesUnordered::new();
    let mut last_error = String::from("no usable provider");

    loop {
        while in_flight.len() < PARALLEL_CHUNKS {
            let Some(index) = todo.pop_front() else { break };
            let usable: Vec<PeerId> = providers
                .iter()
                .filter(|p| !bad.contains(p) && !unavailable.contains(p))
                .copied()
                .collect();
            if usable.is_empty() {
                return Err(format!(
                    "no provider left for blob {} ({last_error})",
                    blob.id.short()
                ));
            }
            let peer = usable[next_peer % usable.len()];
            next_peer += 1;
            in_flight.push(async move {
                (
                    peer,
                    index,
                    request_chunk(client, peer, blob.id, index, manifest).await,
                )
            });
        }
        let Some((peer, index, result)) = in_flight.next().await else {
            break;
        };
        match result {
            ChunkResult::Good(bytes) => {
                if !report.served_by.contains(&peer) {
                    report.served_by.push(peer);
                }
                chunks[index as usize] = Some(bytes);
            }
            ChunkResult::Bad(reason) => {
                if !bad.contains(&peer) {
                    reject(client, report, bad, peer, reason.clone()).await;
                }
                last_error = reason;
                report.refetched_chunks += 1;
                todo.push_back(index);
            }
            ChunkResult::Unavailable(reason) => {
                tracing::debug!(%peer, %reason, chunk = index, "provider could not serve a chunk");
                unavailable.insert(peer);
                last_error = format!("{peer}: {reason}");
                report.refetched_chunks += 1;
                todo.push_back(index);
            }
            ChunkResult::Interrupted(reason) => {
                let count = interrupted.entry(peer).or_insert(0);
                *count += 1;
                tracing::debug!(%peer, %reason, chunk = index, interruptions = *count, "chunk request cut off; asking again");
                if *count >= INTERRUPTIONS_PER_PEER {
                    unavailable.insert(peer);
                }
                last_error = format!("{peer}: {reason}");
                report.refetched_chunks += 1;
                todo.push_back(index);
            }
        }
    }
    let mut whole = Vec::with_capacity(
        usize::try_from(manifest.size)
            .unwrap_or(0)
            .min(count * CHUNK_SIZE),
    );
    for chunk in chunks {
        match chunk {
            Some(c) => whole.extend_from_slice(&c),
            None => return Err("a chunk went missing".into()),
        }
    }
    Ok(whole)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob_store::BlobStore;
    use crate::network::{NetworkConfig, NetworkStores};

    /// A node alone on loopback, with a blob store of `quota`; its network
    /// task runs until the client shuts it down.
    async fn lone_node(
        quota: Option<u64>,
    ) -> (
        tempfile::TempDir,
        NetworkClient,
        tokio::task::JoinHandle<()>,
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let stores = NetworkStores {
            blobs: Arc::new(BlobStore::open_with_quota(dir.path(), quota).expect("blob store")),
            state: None,
            peers_dir: dir.path().to_path_buf(),
        };
        let keypair = libp2p::identity::Keypair::generate_ed25519();
        let (client, _events, task) = crate::network::new(NetworkConfig::local(), keypair, stores)
            .await
            .expect("network starts");
        (dir, client, tokio::spawn(task.run()))
    }

    /// The provider-lookup backoff runs on Tokio's clock, so with time
    /// paused a lone node reports "no provider" after the whole backoff has
    /// elapsed on that clock, without the test waiting it out.
    #[tokio::test(start_paused = true)]
    async fn a_lone_node_finds_no_provider_after_its_whole_backoff() {
        let (_dir, client, running) = lone_node(None).await;
        let t0 = tokio::time::Instant::now();
        let blob = BlobRef::of(b"held by nobody");
        let err = client
            .fetch_blob(blob)
            .await
            .expect_err("nobody holds the blob");
        assert!(
            matches!(err, FetchError::NoProviders(id) if id == blob.id),
            "{err}"
        );
        // 0.5 s + 1 s + 1.5 s between the three lookups.
        let backoff: u64 = (0..PROVIDER_LOOKUPS as u64).map(|a| 500 * (a + 1)).sum();
        assert!(t0.elapsed() >= std::time::Duration::from_millis(backoff));
        client.shutdown().await;
        let _ = running.await;
    }

    /// A blob larger than the whole store is refused at once, before any
    /// provider is looked up or a byte fetched.
    #[tokio::test(start_paused = true)]
    async fn a_blob_over_the_quota_is_refused_before_fetching() {
        let quota = 16 << 20;
        let (_dir, client, running) = lone_node(Some(quota)).await;
        let mut blob = BlobRef::of(b"stand-in");
        blob.size = quota + 1;
        let t0 = tokio::time::Instant::now();
        let err = client.fetch_blob(blob).await.expect_err("over the quota");
        assert!(
            matches!(err, FetchError::Store(BlobStoreError::OverQuota { .. })),
            "{err}"
        );
        assert_eq!(
            t0.elapsed(),
            std::time::Duration::ZERO,
            "no lookup, no backoff"
        );
        client.shutdown().await;
        let _ = running.await;
    }
}
