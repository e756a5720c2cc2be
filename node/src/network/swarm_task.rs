//! The one task that owns the Swarm: it serves the client's commands, turns
//! swarm events into domain events, validates gossip, serves blobs and sync
//! pages, and manages connections.
//!
//! Nothing in here blocks: disk reads for blob chunks run on the blocking
//! pool and come back through a bounded channel; transfers are driven by the
//! client side (see `fetch`), the task only routes requests and responses.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use formic_protocol::DecodeError;
use formic_protocol::blob_transfer::{BlobRequest, BlobResponse};
use formic_protocol::messages::{Gossip, GossipBundle, ProjectId};
use formic_protocol::signed::VerifiedRoots;
use formic_protocol::sync::{
    MAX_RECORDS_PER_PAGE, MAX_SYNC_RESPONSE_BYTES, RecordBytes, SyncRequest, SyncResponse,
};
use futures::StreamExt;
use libp2p::gossipsub::{self, MessageAcceptance, TopicHash};
use libp2p::identity::Keypair;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::swarm::{DialError, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, identify, kad, mdns};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::behaviour::{Behaviour, BehaviourEvent, build_swarm, topic_score_params};
use super::client::{
    Command, PublishError, PublishOutcome, RequestError, SubscribeError, SyncReport,
};
use super::outbox::Outbox;
use super::records::{Inserted, RecordStore};
use super::{
    FaultInjection, KAD_PROTOCOL, NetworkConfig, NetworkEvent, NetworkLimits, NetworkStatus,
    NetworkStores, RecordVia, SETTLED_BOOTSTRAP_INTERVAL, SETTLED_ROUTING_TABLE, StartError, Topic,
    peers_file,
};
use crate::blob_store::{BlobStore, BlobStoreStats};
use crate::deadline::sleep_until_some;

/// How long `build` waits for the listeners to come up.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Housekeeping period: publish retries, pruning, peers file.
const TICK: Duration = Duration::from_secs(1);

/// How long a stopping node keeps its connections to let the gossip it still
/// held leave (only when it held some).
const SHUTDOWN_FLUSH: Duration = Duration::from_millis(200);

/// Connection pruning runs every this many ticks.
const PRUNE_EVERY_TICKS: u64 = 5;

/// The peers file is rewritten every this many ticks.
const SAVE_PEERS_EVERY_TICKS: u64 = 60;

/// Queued publications older than this are dropped (they stay in the record
/// store, so pull-sync still delivers them).
const PUBLISH_QUEUE_TTL: Duration = Duration::from_secs(600);

/// A re-bootstrap triggered by a new Kademlia peer waits at least this long
/// after the previous one, so a burst of identifies costs one query.
const REBOOTSTRAP_GAP: Duration = Duration::from_secs(1);

/// How often Kademlia may test a full bucket's oldest peer (a dial) to make
/// room for a new one.
const BUCKET_CHECK_EVERY: Duration = Duration::from_secs(60);

/// A bootstrap of ours still unfinished after this long is taken as lost.
const BOOTSTRAP_GIVE_UP: Duration = Duration::from_secs(300);

/// A node left with no peer dials its bootstrap list and remembered peers
/// again, first after about this long, doubling up to `REJOIN_MAX`.
const REJOIN_MIN: Duration = Duration::from_secs(1);
const REJOIN_MAX: Duration = Duration::from_secs(30);

/// A node this close to its connection cap trims idle connections every
/// tick, and counts a peer as idle after `NEWCOMER_GRACE` instead of the
/// configured `idle_after` (see `prune_connections`).
const HIGH_WATER_HEADROOM: u32 = 5;
const NEWCOMER_GRACE: Duration = Duration::from_secs(3);

/// Blob disk reads at once.
const BLOB_READERS: usize = 8;

/// Most pages pulled from one peer in one sync (a runaway cursor stops).
const MAX_SYNC_PAGES: u32 = 10_000;

/// Peers synced with at once for one `sync_records` call.
const SYNC_FANOUT: usize = 4;

/// Most blocked peers remembered (so a Sybil flood cannot grow it forever).
const MAX_BLOCKED: usize = 4096;

type BlobChannel = ResponseChannel<Result<BlobResponse, DecodeError>>;

/// Blob chunks read from disk, on their way back to the task.
pub(super) type BlobIo = mpsc::Receiver<(BlobChannel, BlobResponse)>;

struct QueuedPublish {
    topic: TopicHash,
    bytes: Vec<u8>,
    queued_at: Instant,
}

struct SyncJob {
    peer: PeerId,
    project: ProjectId,
    op: Option<u64>,
    pages: u32,
    /// Where the page in flight starts in the peer's record log.
    cursor: u64,
}

struct SyncOp {
    outstanding: usize,
    report: SyncReport,
    reply: oneshot::Sender<SyncReport>,
}

pub(super) struct Task {
    swarm: Swarm<Behaviour>,
    peer_id: PeerId,
    /// Where `peers.json` lives.
    peers_dir: PathBuf,
    limits: NetworkLimits,
    bootstrap_interval: Duration,
    fault: FaultInjection,
    store: Arc<BlobStore>,
    records: RecordStore,
    events: mpsc::Sender<NetworkEvent>,
    dropped_events: u64,
    blob_io: mpsc::Sender<(BlobChannel, BlobResponse)>,
    blob_readers: Arc<Semaphore>,
    /// The configured bootstrap list, dialled again by `rejoin_if_alone`.
    bootstrap_addrs: Vec<Multiaddr>,
    bootstrap_peers: HashSet<PeerId>,
    /// When a node with no peer next dials its bootstrap list again, and
    /// the backoff after that (see `rejoin_if_alone`).
    next_rejoin: Option<Instant>,
    rejoin_every: Duration,
    kad_peers: HashSet<PeerId>,
    last_bootstrap: Option<Instant>,
    /// The bootstrap this node started and that is still running.
    bootstrap_query: Option<kad::QueryId>,
    /// When Kademlia last tested each full bucket (by its index, at most
    /// 256), see `learn_address`.
    bucket_checked: HashMap<u32, Instant>,
    /// Current period of the sparse-table bootstrap: `bootstrap_interval`,
    /// doubled after each bootstrap that found no new peer (see
    /// `periodic_bootstrap`).
    sparse_bootstrap_every: Duration,
    /// Routing-table size at the last periodic bootstrap.
    table_at_bootstrap: usize,
    project_topics: HashMap<TopicHash, ProjectId>,
    publish_queue: VecDeque<QueuedPublish>,
    /// Records waiting to go out as one bundle per topic.
    outbox: Outbox,
    /// Projects with dropped record events, to report (see `report_missed`).
    missed: HashSet<ProjectId>,
    /// Batch signatures already checked: the rest of a batch's records,
    /// in the same bundle or a later sync page, cost hashes only.
    verified_roots: VerifiedRoots,
    pending_providers: HashMap<kad::QueryId, (HashSet<PeerId>, oneshot::Sender<HashSet<PeerId>>)>,
    pending_provide: HashMap<kad::QueryId, oneshot::Sender<Result<(), String>>>,
    pending_blob: HashMap<OutboundRequestId, oneshot::Sender<Result<BlobResponse, RequestError>>>,
    pending_sync: HashMap<OutboundRequestId, SyncJob>,
    sync_ops: HashMap<u64, SyncOp>,
    next_sync_op: u64,
    synced_with: HashSet<(PeerId, ProjectId)>,
    /// How far into each connected peer's record log of a project this node
    /// has synced: the next sync with it starts there. A peer's log only
    /// grows (a record's batch form replaces it in place), so the records
    /// before that position are already held here; the position is
    /// forgotten when the peer disconnects, since a restarted peer rebuilds
    /// its log in another order. Without it every sync pulled the whole
    /// project again: the demo's researcher, syncing every 2 s, spent a
    /// growing share of the run re-reading thousands of known records.
    sync_from: HashMap<(PeerId, ProjectId), u64>,
    strikes: HashMap<PeerId, u32>,
    blocked: HashSet<PeerId>,
    last_activity: HashMap<PeerId, Instant>,
    /// When each connected peer's first current connection opened: a
    /// connection younger than `NEWCOMER_GRACE` is never pruned.
    connected_since: HashMap<PeerId, Instant>,
    ticks: u64,
}

/// The record store, filled from the state store when the node keeps one
/// (records held before a restart serve pull-sync at once), and journaling
/// every new record to it.
fn open_records(
    limits: super::RecordLimits,
    state: Option<&Arc<crate::state_store::StateStore>>,
) -> Result<RecordStore, StartError> {
    let mut records = RecordStore::new(limits);
    if let Some(state) = state {
        let stored = state.records()?;
        let n = stored.len();
        for (project, bytes) in stored {
            // Decoded for the record id only (no signature check): another
            // envelope of a restored record is then a duplicate too.
            let id = Gossip::from_bytes(&bytes).ok().map(|g| g.record_id());
            records.insert_record(project, id, bytes);
        }
        tracing::info!(records = n, "records restored from the state store");
        records.set_journal(
            crate::state_store::spawn_record_writer(Arc::clone(state))
                .map_err(StartError::StateWriter)?,
        );
    }
    Ok(records)
}

/// Builds the swarm, starts listening and dialing, and returns the task
/// for the caller to run. Returns once every listener has an address.
pub(super) async fn build(
    config: &NetworkConfig,
    keypair: Keypair,
    stores: NetworkStores,
    events: mpsc::Sender<NetworkEvent>,
) -> Result<(Task, BlobIo, PeerId, Vec<Multiaddr>), StartError> {
    let peer_id = keypair.public().to_peer_id();
    let outbox_key = keypair.clone();
    let mut swarm = build_swarm(keypair, config)?;

    let mut listeners = HashSet::new();
    for addr in &config.listen {
        let id = swarm
            .listen_on(addr.clone())
            .map_err(|e| StartError::Listen {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
        listeners.insert(id);
    }
    let mut listen_addrs = Vec::new();
    let wait = async {
        while !listeners.is_empty() {
            match swarm.select_next_some().await {
                SwarmEvent::NewListenAddr {
                    listener_id,
                    address,
                } => {
                    tracing::info!(address = %address.clone().with_p2p(peer_id).unwrap_or_else(|a| a), "listening");
                    listeners.remove(&listener_id);
                    listen_addrs.push(address);
                }
                SwarmEvent::ListenerClosed {
                    listener_id,
                    reason,
                    addresses,
                } => {
                    return Err(StartError::Listen {
                        addr: addresses.first().cloned().unwrap_or_else(Multiaddr::empty),
                        reason: format!("listener {listener_id:?} closed: {reason:?}"),
                    });
                }
                SwarmEvent::ListenerError { error, .. } => {
                    return Err(StartError::Listen {
                        addr: Multiaddr::empty(),
                        reason: error.to_string(),
                    });
                }
                other => tracing::trace!(event = ?other, "swarm event before listening"),
            }
        }
        Ok(())
    };
    tokio::time::timeout(LISTEN_TIMEOUT, wait)
        .await
        .map_err(|_| StartError::ListenTimeout(LISTEN_TIMEOUT))??;

    let (blob_io, blob_io_rx) = mpsc::channel(64);
    let mut task = Task {
        swarm,
        peer_id,
        peers_dir: stores.peers_dir,
        limits: config.limits.clone(),
        bootstrap_interval: config.bootstrap_interval,
        fault: config.fault.clone(),
        store: stores.blobs,
        records: open_records(config.limits.records, stores.state.as_ref())?,
        events,
        dropped_events: 0,
        blob_io,
        blob_readers: Arc::new(Semaphore::new(BLOB_READERS)),
        bootstrap_addrs: config.bootstrap.clone(),
        bootstrap_peers: HashSet::new(),
        next_rejoin: None,
        rejoin_every: REJOIN_MIN,
        kad_peers: HashSet::new(),
        last_bootstrap: None,
        bootstrap_query: None,
        bucket_checked: HashMap::new(),
        sparse_bootstrap_every: config.bootstrap_interval,
        table_at_bootstrap: 0,
        project_topics: HashMap::new(),
        publish_queue: VecDeque::new(),
        outbox: Outbox::new(config.limits.bundle_window, Some(outbox_key)),
        missed: HashSet::new(),
        verified_roots: VerifiedRoots::default(),
        pending_providers: HashMap::new(),
        pending_provide: HashMap::new(),
        pending_blob: HashMap::new(),
        pending_sync: HashMap::new(),
        sync_ops: HashMap::new(),
        next_sync_op: 0,
        synced_with: HashSet::new(),
        sync_from: HashMap::new(),
        strikes: HashMap::new(),
        blocked: HashSet::new(),
        last_activity: HashMap::new(),
        connected_since: HashMap::new(),
        ticks: 0,
    };
    task.join();
    task.provide_stored_blobs().await;
    Ok((task, blob_io_rx, peer_id, listen_addrs))
}

/// `base` scaled by a random factor in [0.5, 1.5).
fn jittered(base: Duration) -> Duration {
    base.mul_f64(0.5 + rand::random::<f64>())
}

/// Splits `/…/p2p/<id>` into the id and the address before it.
fn split_p2p(addr: &Multiaddr) -> (Option<PeerId>, Multiaddr) {
    let mut base = addr.clone();
    match base.pop() {
        Some(libp2p::multiaddr::Protocol::P2p(peer)) => (Some(peer), base),
        _ => (None, addr.clone()),
    }
}

impl Task {
    /// Dials the bootstrap list and the peers remembered from the last run;
    /// returns how many dials it started.
    fn join(&mut self) -> usize {
        let mut dials = 0;
        for addr in self.bootstrap_addrs.clone() {
            let (peer, base) = split_p2p(&addr);
            if let Some(peer) = peer {
                self.bootstrap_peers.insert(peer);
                self.swarm.behaviour_mut().kad.add_address(&peer, base);
            }
            match self.swarm.dial(addr.clone()) {
                Ok(()) => dials += 1,
                Err(e) => tracing::warn!(address = %addr, error = %e, "cannot dial bootstrap peer"),
            }
        }
        for (peer, addrs) in peers_file::load(&self.peers_dir) {
            if peer == self.peer_id {
                continue;
            }
            for addr in &addrs {
                self.learn_address(peer, addr.clone());
            }
            let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
                .addresses(addrs)
                .build();
            match self.swarm.dial(opts) {
                Ok(()) => dials += 1,
                Err(e) => tracing::debug!(%peer, error = %e, "cannot dial remembered peer"),
            }
        }
        dials
    }

    /// A node with no peer at all dials its bootstrap list and remembered
    /// peers again, with jittered exponential backoff capped at
    /// `REJOIN_MAX`.
    ///
    /// Kademlia's periodic bootstrap alone was not enough: when a bootstrap
    /// finds nothing new it doubles its period, up to 5 minutes, which is
    /// right for a small settled network but left a node refused by busy
    /// peers waiting minutes between tries. Measured with 300 peers starting
    /// together: 27 still alone after 300 s without this, all in after
    /// 83–106 s with it. The jitter spreads the retries so they do not
    /// arrive together again.
    fn rejoin_if_alone(&mut self) {
        if self.swarm.connected_peers().next().is_some() {
            self.next_rejoin = None;
            self.rejoin_every = REJOIN_MIN;
            return;
        }
        let now = Instant::now();
        match self.next_rejoin {
            None => self.next_rejoin = Some(now + jittered(self.rejoin_every)),
            Some(at) if now >= at => {
                let dials = self.join();
                if dials > 0 {
                    tracing::info!(dials, retry_in = ?self.rejoin_every, "no peer connected: dialling the bootstrap list and remembered peers again");
                }
                self.rejoin_every = (self.rejoin_every * 2).min(REJOIN_MAX);
                self.next_rejoin = Some(now + jittered(self.rejoin_every));
            }
            Some(_) => {}
        }
    }

    /// Re-announces every stored blob (a restarted node is still a provider).
    async fn provide_stored_blobs(&mut self) {
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
                tracing::warn!(blob = %id.short(), error = %e, "cannot provide stored blob");
            }
        }
    }

    pub(super) async fn run(mut self, mut commands: mpsc::Receiver<Command>, mut blob_io: BlobIo) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                command = commands.recv() => match command {
                    Some(Command::Shutdown { reply }) => {
                        self.flush_outbox().await;
                        self.save_peers();
                        tracing::info!("network stopped");
                        let _ = reply.send(());
                        return;
                    }
                    Some(command) => self.on_command(command),
                    // Every client is gone: nobody can use the network.
                    None => {
                        self.flush_outbox().await;
                        self.save_peers();
                        return;
                    }
                },
                Some((channel, response)) = blob_io.recv() => {
                    let _ = self.swarm.behaviour_mut().blobs.send_response(channel, Ok(response));
                }
                _ = tick.tick() => self.on_tick(),
                _ = sleep_until_some(self.outbox.next_due().map(tokio::time::Instant::from_std)) => {
                    self.send_due_bundles()
                }
            }
        }
    }

    fn emit(&mut self, event: NetworkEvent) {
        match self.events.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(event)) => {
                // A dropped record is still in the store; the node is told
                // to read the project again once it catches up.
                if let NetworkEvent::Record { project, .. } = event {
                    self.missed.insert(project);
                }
                self.dropped_events += 1;
                if self.dropped_events.is_power_of_two() {
                    tracing::warn!(
                        peer = %self.peer_id,
                        dropped = self.dropped_events,
                        "node is not reading network events; dropping"
                    );
                }
            }
            // Nobody listens (e.g. a bare relay node): fine.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Tells the node which projects' records it missed, as far as the
    /// event queue has room again.
    fn report_missed(&mut self) {
        let projects: Vec<ProjectId> = self.missed.iter().copied().collect();
        for project in projects {
            match self
                .events
                .try_send(NetworkEvent::RecordsMissed { project })
            {
                Ok(()) => {
                    self.missed.remove(&project);
                }
                Err(mpsc::error::TrySendError::Full(_)) => return,
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.missed.clear();
                    return;
                }
            }
        }
    }

    fn touch(&mut self, peer: PeerId) {
        self.last_activity.insert(peer, Instant::now());
    }

    /// Counts a misbehaviour; blocks the peer once it has too many.
    fn strike(&mut self, peer: PeerId, reason: String) {
        tracing::warn!(%peer, %reason, "peer misbehaved");
        if self.strikes.len() > MAX_BLOCKED && !self.strikes.contains_key(&peer) {
            self.strikes.clear();
        }
        let n = self.strikes.entry(peer).or_insert(0);
        *n += 1;
        let n = *n;
        self.emit(NetworkEvent::PeerMisbehaved { peer, reason });
        if n >= self.limits.strikes_before_ban
            && !self.blocked.contains(&peer)
            && self.blocked.len() < MAX_BLOCKED
        {
            tracing::warn!(%peer, strikes = n, "blocking peer");
            self.blocked.insert(peer);
            self.swarm.behaviour_mut().blocked.block_peer(peer);
            self.emit(NetworkEvent::PeerBanned(peer));
        }
    }

    // ----- commands -----

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Subscribe { topic, reply } => {
                let _ = reply.send(self.subscribe(topic));
            }
            Command::Unsubscribe { topic, reply } => {
                let ident = topic.ident();
                self.swarm.behaviour_mut().gossipsub.unsubscribe(&ident);
                self.project_topics.remove(&ident.hash());
                let _ = reply.send(());
            }
            Command::Publish {
                topic,
                gossip,
                reply,
            } => {
                let _ = reply.send(self.publish(topic, &gossip));
            }
            Command::Dial { addr, reply } => {
                let (peer, base) = split_p2p(&addr);
                if let Some(peer) = peer {
                    self.swarm.behaviour_mut().kad.add_address(&peer, base);
                }
                let _ = reply.send(self.swarm.dial(addr).map_err(|e| e.to_string()));
            }
            Command::ConnectedPeers { reply } => {
                let _ = reply.send(self.swarm.connected_peers().copied().collect());
            }
            Command::RoutingTable { reply } => {
                let mut peers = Vec::new();
                for bucket in self.swarm.behaviour_mut().kad.kbuckets() {
                    peers.extend(bucket.iter().map(|e| *e.node.key.preimage()));
                }
                let _ = reply.send(peers);
            }
            Command::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Command::PeerScore { peer, reply } => {
                let _ = reply.send(self.swarm.behaviour().gossipsub.peer_score(&peer));
            }
            Command::StartProviding { id, reply } => {
                match self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .start_providing(kad::RecordKey::new(id.as_bytes()))
                {
                    Ok(qid) => {
                        self.pending_provide.insert(qid, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.to_string()));
                    }
                }
            }
            Command::GetProviders { id, reply } => {
                let qid = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .get_providers(kad::RecordKey::new(id.as_bytes()));
                self.pending_providers.insert(qid, (HashSet::new(), reply));
            }
            Command::BlobRequest {
                peer,
                request,
                reply,
            } => {
                let rid = self
                    .swarm
                    .behaviour_mut()
                    .blobs
                    .send_request(&peer, Ok(request));
                self.pending_blob.insert(rid, reply);
            }
            Command::SyncProject { project, reply } => self.start_sync_op(project, reply),
            Command::Projects { reply } => {
                let _ = reply.send(self.records.projects());
            }
            Command::Records { project, reply } => {
                let _ = reply.send(self.records.records(&project));
            }
            Command::ReportMisbehaviour { peer, reason } => self.strike(peer, reason),
            Command::Shutdown { .. } => {}
        }
    }

    fn subscribe(&mut self, topic: Topic) -> Result<(), SubscribeError> {
        let ident = topic.ident();
        let gs = &mut self.swarm.behaviour_mut().gossipsub;
        gs.subscribe(&ident)
            .map_err(|e| SubscribeError::Gossipsub(format!("{e:?}")))?;
        gs.set_topic_params(ident.clone(), topic_score_params())
            .map_err(|e| SubscribeError::Gossipsub(e.to_string()))?;
        if let Topic::Project(project) = topic {
            self.project_topics.insert(ident.hash(), project);
            // Peers already in the topic hold what we missed.
            let hash = ident.hash();
            let peers: Vec<PeerId> = self
                .swarm
                .behaviour()
                .gossipsub
                .all_peers()
                .filter(|(_, topics)| topics.contains(&&hash))
                .map(|(p, _)| *p)
                .collect();
            for peer in peers {
                self.auto_sync(peer, project);
            }
        }
        tracing::info!(topic = %topic.name(), "subscribed");
        Ok(())
    }

    fn publish(&mut self, topic: Topic, gossip: &Gossip) -> Result<PublishOutcome, PublishError> {
        let (_, project) = gossip.verify_in(&mut self.verified_roots)?;
        match topic {
            Topic::Project(p) if p != project => {
                return Err(PublishError::WrongTopic {
                    record: project,
                    topic: topic.name(),
                });
            }
            Topic::Announce if !matches!(gossip, Gossip::Announce(_)) => {
                return Err(PublishError::WrongTopic {
                    record: project,
                    topic: topic.name(),
                });
            }
            _ => {}
        }
        let bytes = gossip.to_bytes()?;
        // Stored at once, in the form signed alone: if it goes out signed
        // as one of a batch, that form takes its place when it is sent.
        self.records
            .insert_record(project, Some(gossip.record_id()), bytes.clone());
        let hash = topic.ident().hash();
        // Announcements go alone: they are rare, and a newcomer should hear
        // of a project at once.
        if matches!(topic, Topic::Announce) {
            return self.send_gossip(hash, bytes);
        }
        let ready = self
            .outbox
            .push(hash.clone(), project, gossip.clone(), bytes, Instant::now());
        let mut outcome = Ok(PublishOutcome::Bundled);
        for out in ready.send {
            // Only the last message can be this record alone; an earlier one
            // is a bundle sent early to make room.
            outcome = self.send_outgoing(hash.clone(), out);
        }
        if ready.held {
            Ok(PublishOutcome::Bundled)
        } else {
            outcome
        }
    }

    /// At shutdown: sends what the outbox still holds, then drives the
    /// swarm for at most [`SHUTDOWN_FLUSH`] so that the messages leave.
    /// Without it the records published in the last window before a stop
    /// would reach peers only by their next sync.
    async fn flush_outbox(&mut self) {
        let held = self.outbox.take_all(Instant::now());
        // With nobody connected the sends only queue; waiting is pointless.
        if held.is_empty() || self.swarm.connected_peers().next().is_none() {
            return;
        }
        for (topic, out) in held {
            if let Err(e) = self.send_outgoing(topic, out) {
                tracing::debug!(error = %e, "gossip bundle not sent at shutdown");
            }
        }
        let _ = tokio::time::timeout(SHUTDOWN_FLUSH, async {
            loop {
                let event = self.swarm.select_next_some().await;
                self.on_swarm_event(event);
            }
        })
        .await;
    }

    /// Sends the bundles whose window has closed.
    fn send_due_bundles(&mut self) {
        for (topic, out) in self.outbox.take_due(Instant::now()) {
            if let Err(e) = self.send_outgoing(topic, out) {
                tracing::debug!(error = %e, "gossip bundle not sent");
            }
        }
    }

    /// Stores the batch-signed forms of the records in `out`, then sends it.
    fn send_outgoing(
        &mut self,
        topic: TopicHash,
        out: super::outbox::Outgoing,
    ) -> Result<PublishOutcome, PublishError> {
        for (old, new) in out.resigned {
            self.records.replace(&out.project, &old, new);
        }
        self.send_gossip(topic, out.message)
    }

    /// Hands one message (a record or a bundle) to gossipsub, or queues it
    /// while nobody listens.
    fn send_gossip(
        &mut self,
        hash: TopicHash,
        bytes: Vec<u8>,
    ) -> Result<PublishOutcome, PublishError> {
        match self
            .swarm
            .behaviour_mut()
            .gossipsub
            .publish(hash.clone(), bytes.clone())
        {
            Ok(_) => Ok(PublishOutcome::Sent),
            Err(gossipsub::PublishError::Duplicate) => Ok(PublishOutcome::Duplicate),
            Err(
                gossipsub::PublishError::NoPeersSubscribedToTopic
                | gossipsub::PublishError::AllQueuesFull(_),
            ) => {
                if self.publish_queue.len() >= self.limits.publish_queue {
                    return Err(PublishError::QueueFull(self.publish_queue.len()));
                }
                self.publish_queue.push_back(QueuedPublish {
                    topic: hash,
                    bytes,
                    queued_at: Instant::now(),
                });
                Ok(PublishOutcome::Queued)
            }
            Err(e) => Err(PublishError::Gossipsub(e.to_string())),
        }
    }

    /// Retries queued publications (on a tick, or when a peer subscribes).
    fn retry_publish(&mut self) {
        let mut keep = VecDeque::with_capacity(self.publish_queue.len());
        while let Some(q) = self.publish_queue.pop_front() {
            if q.queued_at.elapsed() > PUBLISH_QUEUE_TTL {
                tracing::debug!(topic = %q.topic, "dropping stale queued publication");
                continue;
            }
            match self
                .swarm
                .behaviour_mut()
                .gossipsub
                .publish(q.topic.clone(), q.bytes.clone())
            {
                Ok(_) | Err(gossipsub::PublishError::Duplicate) => {
                    tracing::debug!(topic = %q.topic, "published queued message");
                }
                Err(
                    gossipsub::PublishError::NoPeersSubscribedToTopic
                    | gossipsub::PublishError::AllQueuesFull(_),
                ) => keep.push_back(q),
                Err(e) => {
                    tracing::warn!(topic = %q.topic, error = %e, "dropping queued publication")
                }
            }
        }
        self.publish_queue = keep;
    }

    fn status(&mut self) -> NetworkStatus {
        let peer_id = self.peer_id;
        let with_p2p = |a: &Multiaddr| {
            a.clone()
                .with_p2p(peer_id)
                .unwrap_or_else(|a| a)
                .to_string()
        };
        let listen_addrs = self.swarm.listeners().map(with_p2p).collect();
        let external_addrs = self.swarm.external_addresses().map(with_p2p).collect();
        let peers = self
            .swarm
            .connected_peers()
            .map(|p| p.to_string())
            .collect();
        let connections = self.swarm.network_info().num_peers();
        let b = self.swarm.behaviour_mut();
        let routing_table_size = b.kad.kbuckets().map(|bucket| bucket.num_entries()).sum();
        let kad_mode = b.kad.mode().to_string();
        let topics = b.gossipsub.topics().map(|t| t.to_string()).collect();
        let mesh_peers = b.gossipsub.all_mesh_peers().count();
        NetworkStatus {
            peer_id: peer_id.to_string(),
            listen_addrs,
            external_addrs,
            peers,
            connections,
            routing_table_size,
            kad_mode,
            topics,
            mesh_peers,
            records: self.records.len(),
            projects: self.records.projects().len(),
            publish_queue: self.publish_queue.len(),
            dropped_events: self.dropped_events,
            blob_store: BlobStoreStats::default(),
        }
    }

    // ----- swarm events -----

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(ev) => self.on_behaviour_event(ev),
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(address = %address.with_p2p(self.peer_id).unwrap_or_else(|a| a), "listening");
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                num_established,
                endpoint,
                ..
            } => {
                tracing::debug!(peer = %peer_id, address = %endpoint.get_remote_address(), "connected");
                // The peer may have restarted while an old connection to it
                // lingered (QUIC, a half-open TCP connection), so the close
                // that would forget its log position never came: a new
                // connection starts the next sync with it from the top.
                self.sync_from.retain(|(p, _), _| *p != peer_id);
                // A new connection is not activity: Kademlia re-dials peers we
                // pruned, and counting that would keep every one of them.
                self.last_activity
                    .entry(peer_id)
                    .or_insert_with(Instant::now);
                if num_established.get() == 1 {
                    self.connected_since.insert(peer_id, Instant::now());
                    self.emit(NetworkEvent::PeerConnected(peer_id));
                }
                // Reaching a bootstrap peer is the moment to look around,
                // unless the routing table is already full: peers reconnect
                // to a busy bootstrap peer that trimmed them, and a full
                // bootstrap (dialling dozens of peers) at each of those
                // reconnections kept a 100-peer network churning.
                if self.bootstrap_peers.contains(&peer_id)
                    && self.routing_table_size() < SETTLED_ROUTING_TABLE
                {
                    self.bootstrap();
                }
                // A peer dialled us directly: we are reachable from its
                // network, so serve the DHT. Waiting for AutoNAT alone left
                // a network's first node (everyone's bootstrap peer) in
                // client mode for good, answering no Kademlia queries:
                // peers could not find each other or any provider through
                // it. Only a dial from a public address counts, or any
                // dial when this node listens on loopback alone (tests, one
                // machine): a volunteer behind NAT dialled by a LAN peer
                // must not advertise private addresses to the world (a
                // LAN-only network names its bootstrap node `--kad-server`).
                if let libp2p::core::ConnectedPoint::Listener {
                    local_addr,
                    send_back_addr,
                } = &endpoint
                    && self.swarm.behaviour().kad.mode() == kad::Mode::Client
                    && !local_addr
                        .iter()
                        .any(|p| matches!(p, libp2p::multiaddr::Protocol::P2pCircuit))
                    && (is_public(send_back_addr) || self.swarm.listeners().all(is_loopback))
                {
                    tracing::info!(peer = %peer_id, address = %local_addr, "serving the DHT: a peer reached this node directly");
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .set_mode(Some(kad::Mode::Server));
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                tracing::debug!(peer = %peer_id, "disconnected");
                self.synced_with.retain(|(p, _)| *p != peer_id);
                self.sync_from.retain(|(p, _), _| *p != peer_id);
                self.connected_since.remove(&peer_id);
                self.emit(NetworkEvent::PeerDisconnected(peer_id));
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                // Nothing listens at any of its addresses: the peer is gone.
                // Forget it, so its bucket takes a live peer (`learn_address`).
                if let (Some(peer), DialError::Transport(errors)) = (peer_id, &error)
                    && !errors.is_empty()
                    && errors.iter().all(|(_, e)| connection_refused(e))
                    && !self.swarm.is_connected(&peer)
                    && !self.bootstrap_peers.contains(&peer)
                {
                    tracing::debug!(%peer, "peer is down: dropped from the routing table");
                    self.swarm.behaviour_mut().kad.remove_peer(&peer);
                }
                match &error {
                    // libp2p prints a denial as just "Dial error".
                    DialError::Denied { cause } => {
                        tracing::debug!(peer = ?peer_id, ?cause, "outgoing connection denied here")
                    }
                    _ => tracing::debug!(peer = ?peer_id, %error, "outgoing connection failed"),
                }
            }
            SwarmEvent::Dialing { peer_id, .. } => {
                tracing::trace!(peer = ?peer_id, "dialling");
            }
            SwarmEvent::IncomingConnectionError { error, .. } => {
                tracing::debug!(error = %error, "incoming connection failed");
            }
            SwarmEvent::ExternalAddrConfirmed { address } => {
                tracing::info!(%address, "external address confirmed");
            }
            _ => {}
        }
    }

    /// Kademlia's periodic bootstrap, driven here (see `behaviour`).
    ///
    /// A sparse routing table is re-bootstrapped often so a fresh network
    /// converges in seconds. But a table that stays sparse because the
    /// whole network is small (ten volunteers on a LAN) is not unsettled:
    /// each bootstrap that found no new peer doubles the period, up to the
    /// settled one. Otherwise every peer of an 11-peer network queries all
    /// the others every 5 s forever, which was most of an idle agent's CPU.
    /// Any new peer (here or via identify) resets the period.
    fn routing_table_size(&mut self) -> usize {
        self.swarm
            .behaviour_mut()
            .kad
            .kbuckets()
            .map(|b| b.num_entries())
            .sum()
    }

    /// Puts `peer` at `addr` into the Kademlia routing table, unless the
    /// peer is new and its bucket is full.
    ///
    /// Kademlia's own answer to a full bucket is to dial the bucket's
    /// least recently seen disconnected peer, to check it is still alive:
    /// with idle-connection pruning most peers in a bucket are disconnected,
    /// so in a large network nearly every new connection meant one more
    /// dial of a peer that pruning had just closed. A full bucket already
    /// holds enough peers to route through. A peer found down (its dials
    /// refused) is dropped from it, and once a minute per bucket Kademlia
    /// may still test the oldest peer, which makes room again.
    fn learn_address(&mut self, peer: PeerId, addr: Multiaddr) {
        let kad = &mut self.swarm.behaviour_mut().kad;
        if let Some(bucket) = kad.kbucket(peer) {
            let known = bucket.iter().any(|e| *e.node.key.preimage() == peer);
            if !known && bucket.num_entries() >= kad::K_VALUE.get() {
                // Still let Kademlia test a full bucket's oldest peer now
                // and then (once a minute per bucket), so a dead peer that
                // only times out, as one gone from the internet does, is
                // replaced too.
                let index = bucket.range().0.ilog2().unwrap_or(0);
                match self.bucket_checked.get(&index) {
                    Some(t) if t.elapsed() < BUCKET_CHECK_EVERY => return,
                    _ => {
                        self.bucket_checked.insert(index, Instant::now());
                    }
                }
            }
        }
        kad.add_address(&peer, addr);
    }

    fn periodic_bootstrap(&mut self) {
        let table = self.routing_table_size();
        let interval = if table >= SETTLED_ROUTING_TABLE {
            SETTLED_BOOTSTRAP_INTERVAL
        } else {
            self.sparse_bootstrap_every
        };
        if table > 0
            && !self.bootstrap_running()
            && self.last_bootstrap.is_none_or(|t| t.elapsed() >= interval)
        {
            self.sparse_bootstrap_every = if table == self.table_at_bootstrap {
                (self.sparse_bootstrap_every * 2).min(SETTLED_BOOTSTRAP_INTERVAL)
            } else {
                self.bootstrap_interval
            };
            self.table_at_bootstrap = table;
            self.bootstrap();
        }
    }

    fn bootstrap_running(&self) -> bool {
        self.bootstrap_query.is_some()
            && self
                .last_bootstrap
                .is_some_and(|t| t.elapsed() < BOOTSTRAP_GIVE_UP)
    }

    fn bootstrap(&mut self) {
        if self
            .last_bootstrap
            .is_some_and(|t| t.elapsed() < REBOOTSTRAP_GAP)
        {
            return;
        }
        // One at a time: a bootstrap is a lookup per bucket (13 of them at
        // 120 peers), each dialling up to 20 peers, and takes tens of
        // seconds while a forming network keeps peers busy. Started on
        // every trigger 1 s apart, five overlapped on each node of a
        // 120-peer network, which opened ~550 connections a second in all
        // for minutes after forming. (Each of a bootstrap's lookups times out after 15 s, so one still
        // running after `BOOTSTRAP_GIVE_UP` was lost: never wait on it.)
        if self.bootstrap_running() {
            return;
        }
        // While the table is sparse, one lookup of our own id: it finds our
        // closest peers and every peer on the way, which fills a sparse
        // table, and is all a joining node needs (Kademlia's own join). The
        // full bootstrap adds a lookup per farther bucket, up to 13 at 200
        // peers, each dialling peers that pruning then closes: ours runs
        // only on the settled period (and libp2p's own is cut short, see
        // `on_kad_event`).
        let table = self.routing_table_size();
        let id = if table == 0 {
            return;
        } else if table < SETTLED_ROUTING_TABLE {
            let me = self.peer_id;
            self.swarm.behaviour_mut().kad.get_closest_peers(me)
        } else {
            match self.swarm.behaviour_mut().kad.bootstrap() {
                Ok(id) => id,
                Err(_) => return,
            }
        };
        tracing::debug!(routing_table = table, "bootstrap started");
        self.last_bootstrap = Some(Instant::now());
        self.bootstrap_query = Some(id);
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            // Only peers that speak our Kademlia protocol go into the
            // routing table, with the addresses they listen on.
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })
                if info.protocols.iter().any(|p| p.as_ref() == KAD_PROTOCOL) =>
            {
                for addr in info.listen_addrs {
                    self.learn_address(peer_id, addr);
                }
                // A peer newly reachable over Kademlia: while the routing
                // table is sparse, look around again now rather than at the
                // next periodic bootstrap. Not once it is full: in a network
                // of a hundred peers starting together every node identifies
                // dozens of new peers, and a bootstrap (a lookup per bucket,
                // dialling the peers it finds) for each kept the whole
                // network dialling at its connection caps.
                if self.kad_peers.len() < 100_000
                    && self.kad_peers.insert(peer_id)
                    && self.routing_table_size() < SETTLED_ROUTING_TABLE
                {
                    self.sparse_bootstrap_every = self.bootstrap_interval;
                    self.bootstrap();
                }
            }
            BehaviourEvent::AutonatClient(event) => match event.result {
                Ok(()) => {
                    tracing::debug!(address = %event.tested_addr, server = %event.server, "address reachable")
                }
                Err(e) => {
                    tracing::debug!(address = %event.tested_addr, error = %e, "address not reachable")
                }
            },
            BehaviourEvent::Kad(event) => self.on_kad_event(event),
            BehaviourEvent::Gossipsub(event) => self.on_gossip_event(event),
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                for (peer, addr) in found {
                    self.learn_address(peer, addr.clone());
                    if !self.swarm.is_connected(&peer) {
                        let _ = self.swarm.dial(addr);
                    }
                }
            }
            BehaviourEvent::Blobs(event) => self.on_blob_event(event),
            BehaviourEvent::Sync(event) => self.on_sync_event(event),
            _ => {}
        }
    }

    fn on_kad_event(&mut self, event: kad::Event) {
        let kad::Event::OutboundQueryProgressed {
            id, result, step, ..
        } = event
        else {
            return;
        };
        tracing::trace!(query = ?id, step = step.count, last = step.last, kind = kad_query_kind(&result), "kad query progress");
        match result {
            kad::QueryResult::GetProviders(result) => {
                if let Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) = result
                    && let Some((found, _)) = self.pending_providers.get_mut(&id)
                {
                    found.extend(providers);
                }
                if step.last
                    && let Some((found, reply)) = self.pending_providers.remove(&id)
                {
                    let _ = reply.send(found);
                }
            }
            kad::QueryResult::StartProviding(result) => {
                if let Some(reply) = self.pending_provide.remove(&id) {
                    // With no peer reachable yet the record is still stored
                    // locally and republished later: not an error for the caller.
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "provider record not replicated yet");
                    }
                    let _ = reply.send(Ok(()));
                }
            }
            kad::QueryResult::Bootstrap(_) | kad::QueryResult::GetClosestPeers(_)
                if step.last && self.bootstrap_query == Some(id) =>
            {
                tracing::debug!(lookups = step.count, took = ?self.last_bootstrap.map(|t| t.elapsed()), "bootstrap finished");
                self.bootstrap_query = None;
            }
            // libp2p-kad also bootstraps by itself whenever a peer joins a
            // table of fewer than 20 (that cannot be switched off in 0.49):
            // a forming network of 200 ran two or three of these full
            // bootstraps per node, 35-60 s each, for minutes. Its first
            // step, the lookup of our own id, is the useful part; stop it
            // there, as our own sparse-table bootstrap does.
            kad::QueryResult::Bootstrap(_) if !step.last && self.bootstrap_query != Some(id) => {
                if let Some(mut query) = self.swarm.behaviour_mut().kad.query_mut(&id) {
                    query.finish();
                }
            }
            _ => {}
        }
    }

    fn on_gossip_event(&mut self, event: gossipsub::Event) {
        match event {
            gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            } => {
                self.touch(propagation_source);
                let verdict = self.validate_gossip(propagation_source, &message);
                let gs = &mut self.swarm.behaviour_mut().gossipsub;
                gs.report_message_validation_result(&message_id, &propagation_source, verdict);
            }
            gossipsub::Event::Subscribed { peer_id, topic } => {
                if let Some(project) = self.project_topics.get(&topic).copied() {
                    self.auto_sync(peer_id, project);
                }
                if !self.publish_queue.is_empty() {
                    self.retry_publish();
                }
            }
            gossipsub::Event::SlowPeer {
                peer_id,
                failed_messages,
            } => {
                tracing::debug!(peer = %peer_id, ?failed_messages, "slow gossip peer");
            }
            _ => {}
        }
    }

    /// Manual gossip validation: decode, verify, check the topic fits the
    /// record. Bad → Reject (peer scoring penalizes the forwarder), already
    /// known → Ignore, else Accept (forwarded) and reported to the node.
    ///
    /// A bundle is checked record by record. One bad record rejects the
    /// whole message (it is not forwarded, and the forwarder is struck),
    /// but the good records before it are kept: each stands on its own
    /// signature, whoever relayed it.
    fn validate_gossip(
        &mut self,
        forwarder: PeerId,
        message: &gossipsub::Message,
    ) -> MessageAcceptance {
        if !GossipBundle::is_bundle(&message.data) {
            return match self.accept_record(forwarder, &message.topic, message.data.clone()) {
                Ok(true) => MessageAcceptance::Accept,
                Ok(false) => MessageAcceptance::Ignore,
                Err(reason) => {
                    self.strike(forwarder, reason);
                    MessageAcceptance::Reject
                }
            };
        }
        let bundle = match GossipBundle::from_bytes(&message.data) {
            Ok(b) => b,
            Err(e) => {
                self.strike(
                    forwarder,
                    format!("malformed gossip bundle on {}: {e}", message.topic),
                );
                return MessageAcceptance::Reject;
            }
        };
        let mut new = false;
        let mut fault = None;
        for record in bundle.bundle {
            match self.accept_record(forwarder, &message.topic, record.into_vec()) {
                Ok(fresh) => new |= fresh,
                // One bad record condemns the bundle: checking the rest
                // would let one strike cost a thousand signature checks.
                Err(reason) => {
                    fault = Some(reason);
                    break;
                }
            }
        }
        match fault {
            Some(reason) => {
                self.strike(forwarder, format!("in a gossip bundle: {reason}"));
                MessageAcceptance::Reject
            }
            None if new => MessageAcceptance::Accept,
            None => MessageAcceptance::Ignore,
        }
    }

    /// Checks one record that came by gossip on `topic` and, if it is new,
    /// stores it and reports it to the node. Ok(true) when new, Ok(false)
    /// when already known (or over a store limit); Err says what is wrong
    /// with it.
    fn accept_record(
        &mut self,
        forwarder: PeerId,
        topic: &TopicHash,
        bytes: Vec<u8>,
    ) -> Result<bool, String> {
        // Bytes already held were checked when they first came. Inside a
        // bundle gossipsub's duplicate filter cannot help, so without this
        // a peer could make every node re-check a known record's signature
        // hundreds of times per message, for nothing but an Ignore.
        // Only under the topic's own project: a known record of another
        // project on this topic is still the forwarder's fault, or this
        // node would forward bundles its peers must refuse.
        if self
            .project_topics
            .get(topic)
            .is_some_and(|project| self.records.contains(project, &bytes))
        {
            return Ok(false);
        }
        let gossip =
            Gossip::from_bytes(&bytes).map_err(|e| format!("malformed gossip on {topic}: {e}"))?;
        let (_, project) = gossip
            .verify_in(&mut self.verified_roots)
            .map_err(|e| format!("gossip record does not verify: {e}"))?;
        // A subscribed project's topic is known by its hash; only other
        // topics need the hash computed (a string formatted and hashed,
        // per record).
        let topic_ok = match self.project_topics.get(topic) {
            Some(subscribed) => *subscribed == project,
            None if *topic == Topic::Announce.ident().hash() => {
                matches!(gossip, Gossip::Announce(_))
            }
            None => *topic == Topic::Project(project).ident().hash(),
        };
        if !topic_ok {
            return Err(format!(
                "record of project {} sent on topic {topic}",
                project.short()
            ));
        }
        let via = RecordVia::Gossip {
            propagation_source: forwarder,
        };
        Ok(self.keep_record(forwarder, via, project, gossip, bytes))
    }

    /// Stores a checked record and, if it is new (in any envelope), reports
    /// it to the node; whether it was new.
    fn keep_record(
        &mut self,
        source: PeerId,
        via: RecordVia,
        project: ProjectId,
        gossip: Gossip,
        bytes: Vec<u8>,
    ) -> bool {
        match self
            .records
            .insert_record(project, Some(gossip.record_id()), bytes)
        {
            Inserted::New => {
                self.emit(NetworkEvent::Record {
                    source,
                    via,
                    project,
                    gossip,
                });
                true
            }
            Inserted::Duplicate | Inserted::Full => false,
        }
    }

    // ----- blob exchange -----

    fn on_blob_event(
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
                    let _ = reply.send(Err(RequestError::Failed(error.to_string())));
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
        let corrupt = self.fault.corrupt_chunks;
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

    // ----- pull-sync -----

    fn auto_sync(&mut self, peer: PeerId, project: ProjectId) {
        if self.synced_with.insert((peer, project)) {
            self.start_sync_job(peer, project, None);
        }
    }

    /// Syncs `project` from `peer`, from where the last sync with it ended.
    fn start_sync_job(&mut self, peer: PeerId, project: ProjectId, op: Option<u64>) {
        let cursor = self.sync_from.get(&(peer, project)).copied().unwrap_or(0);
        self.send_sync(SyncJob {
            peer,
            project,
            op,
            pages: 0,
            cursor,
        });
    }

    /// Asks for the page at `job.cursor`.
    fn send_sync(&mut self, job: SyncJob) {
        let req = SyncRequest {
            project: job.project,
            cursor: job.cursor,
            limit: MAX_RECORDS_PER_PAGE,
        };
        let rid = self
            .swarm
            .behaviour_mut()
            .sync
            .send_request(&job.peer, Ok(req));
        self.pending_sync.insert(rid, job);
    }

    fn start_sync_op(&mut self, project: ProjectId, reply: oneshot::Sender<SyncReport>) {
        let hash = Topic::Project(project).ident().hash();
        let gs = &self.swarm.behaviour().gossipsub;
        let mut peers: Vec<PeerId> = gs
            .all_peers()
            .filter(|(_, topics)| topics.contains(&&hash))
            .map(|(p, _)| *p)
            .collect();
        if peers.is_empty() {
            peers = self.swarm.connected_peers().copied().collect();
        }
        peers.truncate(SYNC_FANOUT);
        if peers.is_empty() {
            let _ = reply.send(SyncReport::default());
            return;
        }
        let op = self.next_sync_op;
        self.next_sync_op += 1;
        self.sync_ops.insert(
            op,
            SyncOp {
                outstanding: peers.len(),
                report: SyncReport::default(),
                reply,
            },
        );
        for peer in peers {
            self.start_sync_job(peer, project, Some(op));
        }
    }

    fn finish_sync_job(&mut self, job: &SyncJob, failure: Option<String>) {
        let Some(op_id) = job.op else { return };
        let Some(op) = self.sync_ops.get_mut(&op_id) else {
            return;
        };
        match failure {
            None => op.report.peers_synced += 1,
            Some(reason) => op.report.failures.push((job.peer, reason)),
        }
        op.outstanding -= 1;
        if op.outstanding == 0
            && let Some(op) = self.sync_ops.remove(&op_id)
        {
            let _ = op.reply.send(op.report);
        }
    }

    fn on_sync_event(
        &mut self,
        event: request_response::Event<
            Result<SyncRequest, DecodeError>,
            Result<SyncResponse, DecodeError>,
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
                let response = match request {
                    Ok(req) => {
                        let limit = req.limit.min(MAX_RECORDS_PER_PAGE) as usize;
                        // Leave room for the page's own framing.
                        let (records, next) = self.records.page(
                            &req.project,
                            req.cursor,
                            limit,
                            MAX_SYNC_RESPONSE_BYTES - 1024,
                        );
                        SyncResponse::Page {
                            records: records.into_iter().map(RecordBytes).collect(),
                            next,
                        }
                    }
                    Err(e) => {
                        self.strike(peer, format!("malformed sync request: {e}"));
                        SyncResponse::Refused(format!("malformed request: {e}"))
                    }
                };
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .sync
                    .send_response(channel, Ok(response));
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
                let Some(mut job) = self.pending_sync.remove(&request_id) else {
                    return;
                };
                match response {
                    Ok(SyncResponse::Page { records, next }) => {
                        let mut new = 0;
                        // Pages are contiguous runs of the peer's log.
                        let end = job.cursor.saturating_add(records.len() as u64);
                        let received = records.len();
                        for RecordBytes(bytes) in records {
                            match self.accept_synced(peer, job.project, bytes) {
                                Ok(true) => new += 1,
                                Ok(false) => {}
                                Err(reason) => {
                                    self.strike(peer, reason.clone());
                                    self.finish_sync_job(&job, Some(reason));
                                    return;
                                }
                            }
                        }
                        if let Some(op) = job.op.and_then(|op| self.sync_ops.get_mut(&op)) {
                            op.report.new_records += new;
                            op.report.records_received += received;
                        }
                        if new > 0 {
                            tracing::debug!(%peer, project = %job.project.short(), new, "synced records");
                        }
                        job.pages += 1;
                        // Everything before here is held now.
                        let held_to = next.unwrap_or(end);
                        let from = self.sync_from.entry((job.peer, job.project)).or_insert(0);
                        *from = (*from).max(held_to);
                        match next {
                            Some(cursor) if job.pages < MAX_SYNC_PAGES => {
                                job.cursor = cursor;
                                self.send_sync(job)
                            }
                            _ => self.finish_sync_job(&job, None),
                        }
                    }
                    Ok(SyncResponse::Refused(reason)) => {
                        self.finish_sync_job(&job, Some(format!("refused: {reason}")))
                    }
                    Err(e) => {
                        let reason = format!("malformed sync response: {e}");
                        self.strike(peer, reason.clone());
                        self.finish_sync_job(&job, Some(reason));
                    }
                }
            }
            Event::OutboundFailure {
                request_id,
                error,
                peer,
                ..
            } => {
                tracing::debug!(%peer, %error, "sync request failed");
                if let Some(job) = self.pending_sync.remove(&request_id) {
                    self.finish_sync_job(&job, Some(error.to_string()));
                }
            }
            Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "inbound sync request failed");
            }
            Event::ResponseSent { .. } => {}
        }
    }

    /// Checks a record pulled from `peer` like gossip; returns whether it was
    /// new, or why it is bad.
    fn accept_synced(
        &mut self,
        peer: PeerId,
        project: ProjectId,
        bytes: Vec<u8>,
    ) -> Result<bool, String> {
        // Each sync page repeats records this node already holds; those were
        // verified when they first arrived, and re-verifying every signature
        // on every sync made syncing cost grow with the square of a
        // project's size.
        if self.records.holds(&bytes) {
            return Ok(false);
        }
        let gossip =
            Gossip::from_bytes(&bytes).map_err(|e| format!("malformed synced record: {e}"))?;
        let (_, record_project) = gossip
            .verify_in(&mut self.verified_roots)
            .map_err(|e| format!("synced record does not verify: {e}"))?;
        if record_project != project {
            return Err(format!(
                "sync for project {} returned a record of {}",
                project.short(),
                record_project.short()
            ));
        }
        Ok(self.keep_record(peer, RecordVia::Sync { peer }, project, gossip, bytes))
    }

    // ----- housekeeping -----

    fn on_tick(&mut self) {
        self.ticks += 1;
        self.rejoin_if_alone();
        self.periodic_bootstrap();
        self.stop_providing_evicted();
        // Also forgets topics gone quiet.
        self.send_due_bundles();
        if !self.missed.is_empty() {
            self.report_missed();
        }
        if !self.publish_queue.is_empty() {
            self.retry_publish();
        }
        if self.ticks.is_multiple_of(PRUNE_EVERY_TICKS) || self.near_connection_cap() {
            self.prune_connections();
        }
        if self.ticks.is_multiple_of(SAVE_PEERS_EVERY_TICKS) {
            self.save_peers();
        }
    }

    /// Withdraws this node as a provider of blobs the store's quota evicted,
    /// so fetchers are not sent to a peer that answers "not found". A blob
    /// stored again since (fetched anew) stays provided.
    fn stop_providing_evicted(&mut self) {
        for id in self.store.take_evicted() {
            if !self.store.has(&id) {
                self.swarm
                    .behaviour_mut()
                    .kad
                    .stop_providing(&kad::RecordKey::new(id.as_bytes()));
            }
        }
    }

    fn near_connection_cap(&self) -> bool {
        let established = self
            .swarm
            .network_info()
            .connection_counters()
            .num_established();
        established + HIGH_WATER_HEADROOM >= self.limits.max_connections
    }

    /// Left alone, Kademlia and gossipsub drift to all-to-all connections.
    /// Above `prune_above` peers, disconnect the longest-idle peers that are
    /// outside every gossip mesh and not mid-request.
    ///
    /// Bootstrap peers are not spared: a node with more than `prune_above`
    /// peers no longer needs its way in, and when every node kept its
    /// connection to the one well-known bootstrap peer, that peer sat at
    /// its cap for good (300 local peers: 50 connections after idling,
    /// against at most 25 for every other peer) and could only take
    /// newcomers by trimming someone. Unchanged below `prune_above`.
    ///
    /// Near the connection cap it trims harder (high and low water marks):
    /// a node at its cap refuses every newcomer, and for a network's
    /// bootstrap peer that means new peers cannot join at all. Measured with
    /// 100 peers starting together: the bootstrap peer sat at its cap for
    /// minutes, because idle connections were only trimmed after 10 s idle,
    /// every 5 s, while Kademlia kept re-dialling it. A connection counts as
    /// idle there after a short grace, long enough for a newcomer's identify
    /// and first Kademlia lookup.
    fn prune_connections(&mut self) {
        let min_idle = if self.near_connection_cap() {
            NEWCOMER_GRACE.min(self.limits.idle_after)
        } else {
            self.limits.idle_after
        };
        let connected = self.swarm.connected_peers().count();
        // Forget peers gone for a while (bounds the map); remembering recent
        // ones keeps a re-dialed, still idle peer prunable.
        let forget_after = self.limits.idle_after * 4;
        let swarm = &self.swarm;
        self.last_activity
            .retain(|p, t| swarm.is_connected(p) || t.elapsed() < forget_after);
        if connected <= self.limits.prune_above {
            return;
        }
        let mesh: HashSet<PeerId> = self
            .swarm
            .behaviour()
            .gossipsub
            .all_mesh_peers()
            .copied()
            .collect();
        let busy: HashSet<PeerId> = self.pending_sync.values().map(|j| j.peer).collect();
        let now = Instant::now();
        let mut idle: Vec<(Instant, PeerId)> = self
            .swarm
            .connected_peers()
            .filter(|p| !mesh.contains(p) && !busy.contains(p))
            // A connection just opened is in use: most are Kademlia dialling
            // a peer it is querying, and closing one mid-request fails that
            // step of the lookup, which then dials more peers or waits for
            // its 15 s timeout.
            .filter(|p| {
                self.connected_since
                    .get(p)
                    .is_none_or(|t| t.elapsed() >= NEWCOMER_GRACE)
            })
            .map(|p| (self.last_activity.get(p).copied().unwrap_or(now), *p))
            .filter(|(t, _)| now.duration_since(*t) >= min_idle)
            .collect();
        idle.sort();
        let excess = connected - self.limits.prune_above;
        for (_, peer) in idle.into_iter().take(excess) {
            tracing::debug!(%peer, "pruning idle connection outside the gossip mesh");
            let _ = self.swarm.disconnect_peer_id(peer);
        }
    }

    fn save_peers(&mut self) {
        let mut peers = Vec::new();
        for bucket in self.swarm.behaviour_mut().kad.kbuckets() {
            for entry in bucket.iter() {
                let addrs: Vec<Multiaddr> = entry.node.value.iter().cloned().collect();
                peers.push((*entry.node.key.preimage(), addrs));
            }
        }
        // Connected peers first: they are the most likely to be up next time.
        peers.sort_by_key(|(p, _)| !self.swarm.is_connected(p));
        peers_file::save(&self.peers_dir, &peers);
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
            tracing::warn!(error = %e, "cannot serve blob");
            BlobResponse::NotFound
        }
    }
}

/// Whether `addr` is an IP address reachable from the public internet (not
/// loopback, private, shared or link-local).
fn is_public(addr: &Multiaddr) -> bool {
    use libp2p::multiaddr::Protocol;
    addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => {
            let [a, b, ..] = ip.octets();
            !(ip.is_loopback()
                || ip.is_private()
                || ip.is_link_local()
                || ip.is_unspecified()
                || ip.is_broadcast()
                // 100.64.0.0/10, carrier-grade NAT.
                || (a == 100 && (64..128).contains(&b)))
        }
        Protocol::Ip6(ip) => {
            let first = ip.segments()[0];
            !(ip.is_loopback()
                || ip.is_unspecified()
                // fc00::/7 unique local, fe80::/10 link-local.
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80)
        }
        _ => false,
    })
}

/// Whether `addr` is a loopback IP address.
fn is_loopback(addr: &Multiaddr) -> bool {
    use libp2p::multiaddr::Protocol;
    addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_loopback(),
        Protocol::Ip6(ip) => ip.is_loopback(),
        _ => false,
    })
}

/// A short name for a Kademlia query result, for logs.
fn kad_query_kind(result: &kad::QueryResult) -> &'static str {
    match result {
        kad::QueryResult::Bootstrap(_) => "bootstrap",
        kad::QueryResult::GetClosestPeers(_) => "closest peers",
        kad::QueryResult::GetProviders(_) => "get providers",
        kad::QueryResult::StartProviding(_) => "start providing",
        kad::QueryResult::RepublishProvider(_) => "republish provider",
        kad::QueryResult::GetRecord(_) => "get record",
        kad::QueryResult::PutRecord(_) => "put record",
        kad::QueryResult::RepublishRecord(_) => "republish record",
    }
}

/// Whether a dial failed because nothing listens there (the peer is down),
/// as opposed to a failed handshake or a timeout, which a busy but live
/// peer also causes.
///
/// The socket's error reaches here several layers deep (DNS, the
/// transport choice, concurrent dials), and one of those layers does not
/// expose it as an error `source`, so the chain cannot be walked: its
/// debug form, which names the `ErrorKind`, is what can be read.
fn connection_refused(error: &libp2p::TransportError<std::io::Error>) -> bool {
    match error {
        libp2p::TransportError::Other(io) => format!("{io:?}").contains("ConnectionRefused"),
        libp2p::TransportError::MultiaddrNotSupported(_) => false,
    }
}

#[cfg(test)]
mod address_scope_tests {
    use super::*;

    #[test]
    fn only_internet_addresses_are_public() {
        let public = |s: &str| is_public(&s.parse::<Multiaddr>().expect("multiaddr"));
        assert!(public("/ip4/203.0.113.9/tcp/4001"));
        assert!(public("/ip6/2001:db8::1/udp/4001/quic-v1"));
        for private in [
            "/ip4/127.0.0.1/tcp/1",
            "/ip4/10.1.2.3/tcp/1",
            "/ip4/192.168.1.5/tcp/1",
            "/ip4/172.20.0.1/tcp/1",
            "/ip4/100.100.0.1/tcp/1",
            "/ip4/169.254.0.1/tcp/1",
            "/ip6/::1/tcp/1",
            "/ip6/fd00::1/tcp/1",
            "/ip6/fe80::1/tcp/1",
            "/dns4/example.org/tcp/1",
        ] {
            assert!(!public(private), "{private}");
        }
        assert!(is_loopback(
            &"/ip4/127.0.0.1/tcp/1".parse().expect("multiaddr")
        ));
        assert!(!is_loopback(
            &"/ip4/0.0.0.0/tcp/1".parse().expect("multiaddr")
        ));
    }

    #[test]
    fn only_a_refused_dial_says_the_peer_is_down() {
        use std::io::{Error, ErrorKind};
        let refused = || Error::from(ErrorKind::ConnectionRefused);
        // The socket's error as it is, and wrapped (a real refused dial is
        // checked by hand against this, in the late-bootstrap test of
        // tests/network_discovery.rs).
        assert!(connection_refused(
            &libp2p::TransportError::Other(refused())
        ));
        assert!(connection_refused(&libp2p::TransportError::Other(
            Error::other(refused())
        )));
        assert!(connection_refused(&libp2p::TransportError::Other(
            Error::other(Error::other(refused()))
        )));
        for live in [
            ErrorKind::TimedOut,
            ErrorKind::ConnectionReset,
            ErrorKind::BrokenPipe,
        ] {
            assert!(!connection_refused(&libp2p::TransportError::Other(
                Error::other(Error::from(live))
            )));
        }
        let unsupported = libp2p::TransportError::MultiaddrNotSupported(
            "/ip4/127.0.0.1/udp/1".parse().expect("multiaddr"),
        );
        assert!(!connection_refused(&unsupported));
    }
}
