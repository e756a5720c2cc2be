//! The typed client of the network task: every operation the rest of the
//! node may ask of the swarm, as an async method with its own error type.
//!
//! Each method sends a command over a bounded channel and awaits a oneshot
//! reply, so callers never touch the Swarm and a slow swarm task pushes back
//! on its callers instead of queueing without bound. Fetching a blob is
//! built on these primitives in `fetch.rs`, which depends on this file and
//! not the other way round.

use std::collections::HashSet;
use std::sync::Arc;

use formic_protocol::blob_transfer::{BlobRequest, BlobResponse};
use formic_protocol::messages::{BlobRef, Gossip, ProjectId};
use formic_protocol::{ContentId, DecodeError, EncodeError, VerifyError};
use libp2p::{Multiaddr, PeerId};
use tokio::sync::{mpsc, oneshot};

use super::{NetworkStatus, Topic};
use crate::blob_store::{BlobStore, BlobStoreError};

/// The network task is gone (node shut down).
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    #[error("the network task has stopped")]
    Stopped,
}

#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("gossipsub refused the subscription")]
    Gossipsub(#[source] libp2p::gossipsub::SubscriptionError),
    #[error("gossipsub refused the topic's score parameters: {0}")]
    TopicParams(&'static str),
}

#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("the swarm refused to dial")]
    Refused(#[from] libp2p::swarm::DialError),
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("cannot encode the record: {0}")]
    Encode(#[from] EncodeError),
    #[error("the record does not verify: {0}")]
    Invalid(#[from] VerifyError),
    #[error("the record belongs to project {record}, not to topic {topic}")]
    WrongTopic { record: ProjectId, topic: String },
    #[error("{0} messages already wait for subscribers; try again later")]
    QueueFull(usize),
    #[error("gossipsub refused the message")]
    Gossipsub(#[source] libp2p::gossipsub::PublishError),
}

/// What happened to a published message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishOutcome {
    /// Handed to gossipsub for peers subscribed to the topic.
    Sent,
    /// No peer is subscribed yet; it is sent once one subscribes.
    Queued,
    /// The same bytes were published already.
    Duplicate,
    /// Held for at most the bundle window, to go out with the topic's next
    /// bundle (see `NetworkLimits::bundle_window`).
    Bundled,
}

#[derive(Debug, thiserror::Error)]
pub enum PutBlobError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Store(#[from] BlobStoreError),
    #[error("cannot announce the blob in Kademlia")]
    Provide(#[source] libp2p::kad::store::Error),
    #[error("the blob-store task failed")]
    Join(#[source] tokio::task::JoinError),
}

/// Why one request to one peer failed.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum RequestError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("request failed")]
    Failed(#[source] Arc<libp2p::request_response::OutboundFailure>),
    #[error("malformed response: {0}")]
    Malformed(DecodeError),
}

/// Outcome of a pull-sync of one project.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Peers that served every page asked.
    pub peers_synced: usize,
    /// Records that were new to this node.
    pub new_records: usize,
    /// Records the peers sent, known ones included. Each sync with a peer
    /// starts where the last one with it ended, so this counts only what
    /// the peers added since.
    pub records_received: usize,
    /// Peers whose sync failed, with why.
    pub failures: Vec<(PeerId, String)>,
}

pub(crate) type Reply<T> = oneshot::Sender<T>;

/// Requests to the network task.
pub(crate) enum Command {
    Subscribe {
        topic: Topic,
        reply: Reply<Result<(), SubscribeError>>,
    },
    Unsubscribe {
        topic: Topic,
        reply: Reply<()>,
    },
    Publish {
        topic: Topic,
        gossip: Box<Gossip>,
        reply: Reply<Result<PublishOutcome, PublishError>>,
    },
    Dial {
        addr: Multiaddr,
        reply: Reply<Result<(), libp2p::swarm::DialError>>,
    },
    ConnectedPeers {
        reply: Reply<Vec<PeerId>>,
    },
    RoutingTable {
        reply: Reply<Vec<PeerId>>,
    },
    Status {
        reply: Reply<NetworkStatus>,
    },
    PeerScore {
        peer: PeerId,
        reply: Reply<Option<f64>>,
    },
    StartProviding {
        id: ContentId,
        reply: Reply<Result<(), libp2p::kad::store::Error>>,
    },
    GetProviders {
        id: ContentId,
        reply: Reply<HashSet<PeerId>>,
    },
    BlobRequest {
        peer: PeerId,
        request: BlobRequest,
        reply: Reply<Result<BlobResponse, RequestError>>,
    },
    SyncProject {
        project: ProjectId,
        reply: Reply<SyncReport>,
    },
    Records {
        project: ProjectId,
        reply: Reply<Vec<Vec<u8>>>,
    },
    Projects {
        reply: Reply<Vec<ProjectId>>,
    },
    ReportMisbehaviour {
        peer: PeerId,
        reason: String,
    },
    Shutdown {
        reply: Reply<()>,
    },
}

/// A cloneable handle to the node's network.
#[derive(Clone)]
pub struct NetworkClient {
    tx: mpsc::Sender<Command>,
    peer_id: PeerId,
    /// The blob store `put_blob` and `fetch_blob` write to (shared with
    /// the swarm task, which serves from it).
    store: Arc<BlobStore>,
}

impl std::fmt::Debug for NetworkClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetworkClient")
            .field("peer_id", &self.peer_id)
            .finish()
    }
}

impl NetworkClient {
    pub(crate) fn new(tx: mpsc::Sender<Command>, peer_id: PeerId, store: Arc<BlobStore>) -> Self {
        Self { tx, peer_id, store }
    }

    /// The projects this node holds records of.
    pub async fn projects(&self) -> Result<Vec<ProjectId>, ClientError> {
        self.ask(|reply| Command::Projects { reply }).await
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, ClientError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| ClientError::Stopped)?;
        rx.await.map_err(|_| ClientError::Stopped)
    }

    pub(crate) async fn tell(&self, cmd: Command) -> Result<(), ClientError> {
        self.tx.send(cmd).await.map_err(|_| ClientError::Stopped)
    }

    /// This node's PeerId.
    pub fn local_peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The blob store fetches go to (blocking I/O: use from
    /// `spawn_blocking`). The rest of the node gets the store from the
    /// composition root, not from here.
    pub(super) fn blob_store(&self) -> &Arc<BlobStore> {
        &self.store
    }

    /// Joins a topic; for a project topic, also pulls the project's records
    /// from peers already in it.
    pub async fn subscribe(&self, topic: Topic) -> Result<(), SubscribeError> {
        self.ask(|reply| Command::Subscribe { topic, reply })
            .await?
    }

    pub async fn unsubscribe(&self, topic: Topic) -> Result<(), ClientError> {
        self.ask(|reply| Command::Unsubscribe { topic, reply })
            .await
    }

    /// Publishes a signed record on `topic`, after checking it verifies and
    /// belongs there. With no subscriber yet it is queued (bounded) and sent
    /// once one appears; either way it is stored and served by pull-sync.
    pub async fn publish(
        &self,
        topic: Topic,
        gossip: Gossip,
    ) -> Result<PublishOutcome, PublishError> {
        self.ask(|reply| Command::Publish {
            topic,
            gossip: Box::new(gossip),
            reply,
        })
        .await?
    }

    /// Dials an address (with or without `/p2p/`).
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), DialError> {
        Ok(self.ask(|reply| Command::Dial { addr, reply }).await??)
    }

    pub async fn connected_peers(&self) -> Result<Vec<PeerId>, ClientError> {
        self.ask(|reply| Command::ConnectedPeers { reply }).await
    }

    /// Peers in the Kademlia routing table.
    pub async fn routing_table(&self) -> Result<Vec<PeerId>, ClientError> {
        self.ask(|reply| Command::RoutingTable { reply }).await
    }

    /// Gossipsub's score of `peer` (negative after misbehaviour).
    pub async fn peer_score(&self, peer: PeerId) -> Result<Option<f64>, ClientError> {
        self.ask(|reply| Command::PeerScore { peer, reply }).await
    }

    /// Everything `formic status` shows.
    pub async fn status(&self) -> Result<NetworkStatus, ClientError> {
        let mut status = self.ask(|reply| Command::Status { reply }).await?;
        let store = Arc::clone(&self.store);
        if let Ok(stats) = tokio::task::spawn_blocking(move || store.stats()).await {
            status.blob_store = stats;
        }
        Ok(status)
    }

    /// Stores `bytes`, pins them (this node created them, so the network
    /// may hold no other copy: the blob store's quota never evicts them
    /// while this process runs) and announces this node as a provider.
    pub async fn put_blob(&self, bytes: Vec<u8>) -> Result<BlobRef, PutBlobError> {
        let store = Arc::clone(&self.store);
        let blob = tokio::task::spawn_blocking(move || {
            let blob = BlobRef::of(&bytes);
            // Pinned before it is written, so no concurrent insert can
            // evict it in between.
            store.pin(blob.id);
            store
                .put_verified(&blob, &bytes)
                .map(|()| blob)
                .inspect_err(|_| {
                    store.unpin(&blob.id);
                })
        })
        .await
        .map_err(PutBlobError::Join)??;
        self.provide(blob.id).await.map_err(|e| match e {
            ProvideError::Client(c) => PutBlobError::Client(c),
            ProvideError::Kad(e) => PutBlobError::Provide(e),
        })?;
        Ok(blob)
    }

    pub(crate) async fn provide(&self, id: ContentId) -> Result<(), ProvideError> {
        self.ask(|reply| Command::StartProviding { id, reply })
            .await?
            .map_err(ProvideError::Kad)
    }

    /// Providers of `id` found through Kademlia (never this node).
    pub async fn find_providers(&self, id: ContentId) -> Result<HashSet<PeerId>, ClientError> {
        let mut found = self
            .ask(|reply| Command::GetProviders { id, reply })
            .await?;
        found.remove(&self.peer_id);
        Ok(found)
    }

    pub(crate) async fn blob_request(
        &self,
        peer: PeerId,
        request: BlobRequest,
    ) -> Result<BlobResponse, RequestError> {
        self.ask(|reply| Command::BlobRequest {
            peer,
            request,
            reply,
        })
        .await?
    }

    /// Pulls `project`'s records from up to a few peers in its topic; new
    /// ones are stored and reported as events.
    pub async fn sync_records(&self, project: ProjectId) -> Result<SyncReport, ClientError> {
        self.ask(|reply| Command::SyncProject { project, reply })
            .await
    }

    /// Every verified record of `project` this node holds.
    pub async fn records(&self, project: ProjectId) -> Result<Vec<Gossip>, ClientError> {
        let raw = self
            .ask(|reply| Command::Records { project, reply })
            .await?;
        // The store holds records that decoded and verified on the way in
        // (or were restored from this node's own state store), but bytes
        // carry no mark of that: they are checked again here, where the
        // records of one batch share one signature check, and arrive
        // marked as checked. Anything that no longer verifies is skipped.
        let mut roots = formic_protocol::signed::VerifiedRoots::default();
        Ok(raw
            .iter()
            .filter_map(|b| {
                let g = Gossip::from_bytes(b).ok()?;
                g.verify_in(&mut roots).ok()?;
                Some(g)
            })
            .collect())
    }

    /// Tells the network task that `peer` sent bad data (counts toward a ban).
    pub async fn report_misbehaviour(
        &self,
        peer: PeerId,
        reason: String,
    ) -> Result<(), ClientError> {
        self.tell(Command::ReportMisbehaviour { peer, reason })
            .await
    }

    /// Asks the network task to stop; returns when it has.
    pub(crate) async fn shutdown(&self) {
        let _ = self.ask(|reply| Command::Shutdown { reply }).await;
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ProvideError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Kad(libp2p::kad::store::Error),
}
