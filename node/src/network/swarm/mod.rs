//! The one task that owns the Swarm. libp2p lets only one owner drive a
//! Swarm, so everything that touches it (the client's commands, swarm
//! events, timers) meets here, in one loop that never blocks; the work each
//! concern does lives beside it, as `impl Task` blocks over the same state:
//!
//! - `startup`: building the swarm and waiting for the listeners;
//! - `discovery`: joining, Kademlia bootstrap and its events, the peers file;
//! - `gossip`: publishing through the outbox and validating what comes in;
//! - `sync`: pull-sync of per-project records;
//! - `blobs`: serving and providing blobs;
//! - `peers`: strikes, blocking and pruning of connections, as decided by
//!   `connections` (pure, unit-tested).
//!
//! This file keeps what crosses them: the task's state, the loop and its
//! dispatch of commands and events, the housekeeping tick, and the event
//! channel to the node.
//!
//! Nothing in here blocks: disk reads for blob chunks run on the blocking
//! pool and come back through a bounded channel; transfers are driven by the
//! client side (see `fetch`), the task only routes requests and responses.

mod blobs;
mod connections;
mod discovery;
mod gossip;
mod peers;
pub(crate) mod reachability;
mod startup;
mod sync;

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use formic_protocol::blob_transfer::BlobResponse;
use formic_protocol::messages::{Gossip, ProjectId};
use formic_protocol::signed::VerifiedRoots;
use futures::StreamExt;
use libp2p::gossipsub::TopicHash;
use libp2p::request_response::OutboundRequestId;
use libp2p::swarm::{DialError, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, identify, kad, mdns};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::behaviour::{Behaviour, BehaviourEvent};
use super::client::{Command, RequestError};
use super::outbox::Outbox;
use super::records::{Inserted, RecordStore};
use super::{
    KAD_PROTOCOL, NetworkEvent, NetworkLimits, NetworkStatus, RecordVia, SETTLED_ROUTING_TABLE,
};
use crate::blob_store::{BlobStore, BlobStoreStats};
use crate::deadline::sleep_until_some;

use blobs::BlobChannel;
pub(super) use blobs::BlobIo;
use connections::Connections;
use discovery::{connection_refused, is_loopback, is_public, split_p2p};
use gossip::QueuedPublish;
pub(super) use startup::build;
use sync::{SyncJob, SyncOp};

/// Housekeeping period: publish retries, pruning, peers file.
const TICK: Duration = Duration::from_secs(1);

/// Connection pruning runs every this many ticks.
const PRUNE_EVERY_TICKS: u64 = 5;

/// Reachability is re-checked and relay reservations are retried or
/// replaced every this many ticks.
const RELAY_CHECK_EVERY_TICKS: u64 = 3;

/// The peers file is rewritten every this many ticks.
const SAVE_PEERS_EVERY_TICKS: u64 = 60;

/// ...and at these ticks after start, so a command started beside a node
/// that has just joined (`formic publish` on its data dir) finds its peers
/// without waiting a minute.
const EARLY_SAVE_TICKS: [u64; 3] = [5, 15, 30];

pub(super) struct Task {
    swarm: Swarm<Behaviour>,
    peer_id: PeerId,
    /// Where `peers.json` lives.
    peers_dir: PathBuf,
    limits: NetworkLimits,
    bootstrap_interval: Duration,
    #[cfg(feature = "test-support")]
    fault: super::FaultInjection,
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
    pending_provide: HashMap<kad::QueryId, oneshot::Sender<Result<(), kad::store::Error>>>,
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
    /// Strikes, blocks and activity of peers.
    connections: Connections,
    /// Whether peers can dial us, and the relays we listen through.
    reachability: reachability::Reachability,
    /// Open connections per peer, direct or relayed.
    connection_kinds: reachability::ConnectionKinds,
    hole_punches: reachability::HolePunchStats,
    punch_retries: reachability::PunchRetries,
    relay_server: super::RelayServer,
    relay_client: bool,
    ticks: u64,
}

impl Task {
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
                _ = sleep_until_some(self.outbox.next_due()) => {
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
                let _ = reply.send(self.swarm.dial(addr));
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
                        let _ = reply.send(Err(e));
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
        let peer_connections = self.peer_connections();
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
            reachability: self.reachability.state(),
            relays: self
                .reachability
                .reserved()
                .iter()
                .map(|p| p.to_string())
                .collect(),
            peer_connections,
            hole_punches: self.hole_punches,
            first_reservation_ms: self
                .reachability
                .first_reservation()
                .map(|d| d.as_millis() as u64),
        }
    }

    // ----- swarm events -----

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(ev) => self.on_behaviour_event(ev),
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(address = %address.clone().with_p2p(self.peer_id).unwrap_or_else(|a| a), "listening");
                self.declare_public_address(address);
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                num_established,
                endpoint,
                ..
            } => {
                tracing::debug!(peer = %peer_id, address = %endpoint.get_remote_address(), relayed = endpoint.is_relayed(), "connected");
                let relayed = endpoint.is_relayed();
                self.connection_kinds
                    .opened(peer_id, connection_id, relayed);
                if !relayed {
                    self.close_redundant_relayed(peer_id);
                }
                // The peer may have restarted while an old connection to it
                // lingered (QUIC, a half-open TCP connection), so the close
                // that would forget its log position never came: a new
                // connection starts the next sync with it from the top.
                self.sync_from.retain(|(p, _), _| *p != peer_id);
                let first = num_established.get() == 1;
                self.connections.connected(peer_id, first, Instant::now());
                if first {
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
                connection_id,
                num_established,
                ..
            } => {
                self.connection_kinds.closed(peer_id, connection_id);
                if num_established > 0 {
                    return;
                }
                self.reachability.relay_candidate(peer_id, None);
                tracing::debug!(peer = %peer_id, "disconnected");
                self.synced_with.retain(|(p, _)| *p != peer_id);
                self.sync_from.retain(|(p, _), _| *p != peer_id);
                self.connections.disconnected(&peer_id);
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
                self.on_external_address(&address, true);
            }
            SwarmEvent::ExternalAddrExpired { address } => {
                tracing::info!(%address, "external address expired");
                self.on_external_address(&address, false);
            }
            SwarmEvent::ListenerClosed { listener_id, .. } => {
                self.on_relay_listener_closed(listener_id);
            }
            _ => {}
        }
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            // Only peers that speak our Kademlia protocol go into the
            // routing table, with the addresses they listen on.
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                self.note_relay_candidate(peer_id, &info);
                if !info.protocols.iter().any(|p| p.as_ref() == KAD_PROTOCOL) {
                    return;
                }
                let loopback_only = self.swarm.listeners().all(is_loopback);
                for addr in discovery::addresses_to_learn(info.listen_addrs, loopback_only) {
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
            BehaviourEvent::AutonatClient(event) => {
                match &event.result {
                    Ok(()) => {
                        tracing::debug!(address = %event.tested_addr, server = %event.server, "address reachable")
                    }
                    Err(e) => {
                        tracing::debug!(address = %event.tested_addr, error = %e, "address not reachable")
                    }
                }
                self.on_probe(event.result.is_ok());
            }
            BehaviourEvent::RelayClient(event) => self.on_relay_client_event(event),
            BehaviourEvent::Dcutr(event) => self.on_dcutr_event(event),
            BehaviourEvent::RelayServer(event) => tracing::debug!(?event, "relay server"),
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
        if self.ticks.is_multiple_of(RELAY_CHECK_EVERY_TICKS) {
            self.check_reachability();
        }
        if self.ticks.is_multiple_of(SAVE_PEERS_EVERY_TICKS)
            || EARLY_SAVE_TICKS.contains(&self.ticks)
        {
            self.save_peers();
        }
    }
}
