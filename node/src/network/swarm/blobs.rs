//! Blobs, the task's side: serve requests from the store without blocking
//! the loop (reads go to the blocking pool and come back through
//! `BlobIo`), route responses to the client, and keep Kademlia's provider
//! records in step with what the store holds. Fetching itself is driven by
//! the client (`fetch`).

use std::sync::Arc;

use formic_protocol::DecodeError;
use formic_protocol::blob_transfer::{BlobRequest, BlobResponse};
use libp2p::kad;
use libp2p::request_response::{self, ResponseChannel};
use tokio::sync::mpsc;

use super::Task;
use crate::blob_store::BlobStore;
use crate::error_report::Chain;
use crate::network::client::RequestError;

/// Blob disk reads at once.
pub(super) const BLOB_READERS: usize = 8;

pub(super) type BlobChannel = ResponseChannel<Result<BlobResponse, DecodeError>>;

/// Blob chunks read from disk, on their way back to the task.
pub(in crate::network) type BlobIo = mpsc::Receiver<(BlobChannel, BlobResponse)>;

impl Task {
    /// Re-announces every stored blob (a restarted node is still a provider).
    pub(super) async fn provide_stored_blobs(&mut self) {
        let store = Arc::clone(&self.store);
        let ids = tokio::task::spawn_blocking(move || store.list())
            .await
            .unwrap_or_default();
        for id in ids {
            if let Err(e) = self
                .swarm
                .behaviour_mut()
                .kad
                .start_providing(kad::RecordKey::new(id.as_bytes()))
            {
                tracing::warn!(blob = %id.short(), error = %Chain(&e), "cannot provide stored blob");
            }
        }
    }

    pub(super) fn on_blob_event(
        &mut self,
        event: request_response::Event<
            Result<BlobRequest, DecodeError>,
            Result<BlobResponse, DecodeError>,
        >,
    ) {
        use request_response::{Event, Message};
        match event {
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                self.touch(peer);
                match request {
                    Ok(request) => self.serve_blob(request, channel),
                    Err(e) => {
                        self.strike(peer, format!("malformed blob request: {e}"));
                        let refusal = Ok(BlobResponse::Refused(format!("malformed request: {e}")));
                        let _ = self
                            .swarm
                            .behaviour_mut()
                            .blobs
                            .send_response(channel, refusal);
                    }
                }
            }
            Event::Message {
                peer,
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                self.touch(peer);
                if let Some(reply) = self.pending_blob.remove(&request_id) {
                    let _ = reply.send(response.map_err(RequestError::Malformed));
                }
            }
            Event::OutboundFailure {
                request_id,
                error,
                peer,
                ..
            } => {
                tracing::debug!(%peer, %error, "blob request failed");
                if let Some(reply) = self.pending_blob.remove(&request_id) {
                    let _ = reply.send(Err(RequestError::Failed(std::sync::Arc::new(error))));
                }
            }
            Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "inbound blob request failed");
            }
            Event::ResponseSent { .. } => {}
        }
    }

    /// Reads the manifest or chunk on the blocking pool; the answer comes
    /// back through `blob_io`.
    fn serve_blob(&mut self, request: BlobRequest, channel: BlobChannel) {
        let store = Arc::clone(&self.store);
        let readers = Arc::clone(&self.blob_readers);
        let tx = self.blob_io.clone();
        #[cfg(feature = "test-support")]
        let corrupt = self.fault.corrupt_chunks;
        #[cfg(not(feature = "test-support"))]
        let corrupt = false;
        tokio::spawn(async move {
            let Ok(_permit) = readers.acquire_owned().await else {
                return;
            };
            let response = tokio::task::spawn_blocking(move || read_blob(&store, request, corrupt))
                .await
                .unwrap_or_else(|e| BlobResponse::Refused(format!("internal error: {e}")));
            let _ = tx.send((channel, response)).await;
        });
    }

    /// Withdraws this node as a provider of blobs the store's quota evicted,
    /// so fetchers are not sent to a peer that answers "not found". A blob
    /// stored again since (fetched anew) stays provided.
    pub(super) fn stop_providing_evicted(&mut self) {
        for id in self.store.take_evicted() {
            if !self.store.has(&id) {
                self.swarm
                    .behaviour_mut()
                    .kad
                    .stop_providing(&kad::RecordKey::new(id.as_bytes()));
            }
        }
    }
}

/// Answers a blob request from the store (blocking).
fn read_blob(store: &BlobStore, request: BlobRequest, corrupt: bool) -> BlobResponse {
    let result = match request {
        BlobRequest::Manifest { id } => store.manifest(&id).map(|m| m.map(BlobResponse::Manifest)),
        BlobRequest::Chunk { id, index } => store.chunk(&id, index).map(|c| {
            c.map(|mut bytes| {
                if corrupt && let Some(b) = bytes.first_mut() {
                    *b ^= 0xff;
                }
                BlobResponse::Chunk(bytes)
            })
        }),
    };
    match result {
        Ok(Some(r)) => r,
        Ok(None) => BlobResponse::NotFound,
        Err(e) => {
            tracing::warn!(error = %Chain(&e), "cannot serve blob");
            BlobResponse::NotFound
        }
    }
}
