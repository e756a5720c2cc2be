//! The peer-to-peer layer: one task owns the libp2p Swarm; the rest of the
//! node talks to it through a typed [`NetworkClient`] and hears from it
//! through [`NetworkEvent`]s. [`new`] hands back the client, the events and
//! the [`NetworkTask`]; the composition root (`crate::node`) opens the
//! stores it is given, spawns the task and wires the other layers to it.
//! This layer imports neither the control API nor the computing layer
//! (`.ci/check-network-imports`).
//!
//! What runs here (see docs/ARCHITECTURE.md, "The network layer"):
//! - transports TCP and QUIC with noise, yamux and DNS;
//! - identify feeding Kademlia (`/formic/kad/1.0.0`) by hand, only for peers
//!   that speak it; Kademlia in client mode until an external address is
//!   confirmed, or server mode when forced (bootstrap nodes, LANs);
//! - gossipsub with anonymous messages (every record carries its author's
//!   own signature), one explicit size cap on every peer, message id =
//!   blake3 of the data, manual validation (decode + signature → Accept /
//!   Reject / Ignore) and peer scoring, records gathered into bundles per
//!   topic (`outbox`), plus a bounded queue that retries publishing until
//!   peers subscribe;
//! - the blob exchange (chunked, blake3-verified, providers in Kademlia) and
//!   pull-sync of per-project records, both request-response protocols with
//!   Formic's canonical codec;
//! - connection management: a cap on connections, pruning of idle peers
//!   outside the gossip mesh, a memory ceiling, and a block list for peers
//!   that keep sending malformed messages.
//!
//! Every channel between tasks is bounded, except the record journal to the
//! state store's writer thread. Events are dropped (and counted) rather than
//! blocking the swarm when the node does not keep up: the record store is
//! the authoritative copy and pull-sync recovers anything missed.

mod behaviour;
mod client;
pub mod codec;
mod fetch;
mod outbox;
mod peers_file;
pub mod records;
mod swarm;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use formic_protocol::messages::{Gossip, ProjectId};
use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

pub use client::{
    ClientError, DialError, NetworkClient, PublishError, PublishOutcome, PutBlobError,
    SubscribeError, SyncReport,
};
pub use fetch::{FetchError, FetchReport};
pub use records::{RecordLimits, RecordStore};
pub use swarm::reachability::{ConnectionKind, HolePunchStats, PeerConnection, ReachabilityState};

use crate::blob_store::{BlobStore, BlobStoreStats};
use crate::state_store::StateStore;

/// Kademlia protocol name: our own, so Formic peers never mix routing tables
/// with the public IPFS DHT.
pub const KAD_PROTOCOL: &str = "/formic/kad/1.0.0";

/// identify's protocol version string.
pub const IDENTIFY_PROTOCOL: &str = "/formic/id/1.0.0";

/// Name of the global announcement topic.
pub const ANNOUNCE_TOPIC: &str = "formic/announce";

/// Room gossipsub needs around our payload (protobuf framing, sender key,
/// signature, sequence number, topic).
pub const GOSSIP_ENVELOPE_OVERHEAD: usize = 2048;

/// Routing-table size from which Kademlia is considered settled (its
/// replication factor K).
pub const SETTLED_ROUTING_TABLE: usize = 20;

/// Re-bootstrap period of a settled routing table.
pub const SETTLED_BOOTSTRAP_INTERVAL: Duration = Duration::from_secs(300);

/// A gossipsub topic Formic uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    /// `formic/announce`: new projects and batches.
    Announce,
    /// `formic/p/<ProjectId>`: a project's claims, commits and reveals.
    Project(ProjectId),
}

impl Topic {
    /// The topic's name on the wire.
    pub fn name(&self) -> String {
        match self {
            Topic::Announce => ANNOUNCE_TOPIC.to_owned(),
            Topic::Project(p) => format!("formic/p/{p}"),
        }
    }

    pub(crate) fn ident(&self) -> libp2p::gossipsub::IdentTopic {
        libp2p::gossipsub::IdentTopic::new(self.name())
    }
}

/// Limits that keep a node's resources bounded.
#[derive(Debug, Clone)]
pub struct NetworkLimits {
    /// Most established connections in total.
    pub max_connections: u32,
    /// Most established connections to one peer.
    pub max_connections_per_peer: u32,
    /// Most connections being set up at once, each way.
    pub max_pending: u32,
    /// Above this many connected peers, idle peers outside the gossip mesh
    /// are disconnected (down to this number).
    pub prune_above: usize,
    /// A peer counts as idle after this long without a message or request.
    pub idle_after: Duration,
    /// Fraction of system memory above which new connections are refused.
    pub max_memory_fraction: f64,
    /// Gossip messages waiting for subscribers.
    pub publish_queue: usize,
    /// Records a topic publishes within this long of its last message wait
    /// and go out together as one bundle (see `outbox.rs`); zero sends each
    /// record alone at once.
    pub bundle_window: Duration,
    /// Events waiting for the node to read them.
    pub event_queue: usize,
    /// Commands waiting for the swarm task.
    pub command_queue: usize,
    /// Malformed messages after which a peer is disconnected and blocked.
    pub strikes_before_ban: u32,
    pub records: RecordLimits,
}

/// How long a busy topic gathers records into one gossip message. Long
/// enough to bundle dozens of records at the protocol's ceiling, short
/// against a unit's life (claim, commit and reveal each wait at most this,
/// and only when this node published on the topic within the window: a
/// node doing units of a second or more sends every record at once).
/// Measured on 2 cores with trivial units (builds run alternately): 10 ms
/// gave 866–932 validated/s at 1,000 units and 796 at 4,000; 25 ms
/// 893–1,178 and 963–1,020; 50 ms 798–1,180 and 1,053–1,102. Fewer, larger
/// bundles mean fewer messages, frames and batch signatures; past 25 ms the
/// last records of a run wait longer, which shorter runs feel.
pub const DEFAULT_BUNDLE_WINDOW: Duration = Duration::from_millis(25);

impl Default for NetworkLimits {
    fn default() -> Self {
        Self {
            max_connections: 50,
            max_connections_per_peer: 2,
            max_pending: 32,
            prune_above: 25,
            idle_after: Duration::from_secs(10),
            max_memory_fraction: 0.9,
            publish_queue: 256,
            bundle_window: DEFAULT_BUNDLE_WINDOW,
            event_queue: 1024,
            command_queue: 256,
            strikes_before_ban: 8,
            records: RecordLimits::default(),
        }
    }
}

/// Deliberate misbehaviour, for tests of the peers that must cope with it.
/// Only in builds with the `test-support` feature.
#[cfg(feature = "test-support")]
#[derive(Debug, Clone, Default)]
#[doc(hidden)]
pub struct FaultInjection {
    /// Serve every blob chunk with one byte flipped.
    pub corrupt_chunks: bool,
}

/// How the node takes part in the network: networking only. Where its
/// files are and what else runs beside it is the composition root's
/// business (`crate::node`).
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// Addresses to listen on (TCP and/or QUIC; port 0 picks one).
    pub listen: Vec<Multiaddr>,
    /// Peers to join through (with or without `/p2p/<PeerId>`).
    pub bootstrap: Vec<Multiaddr>,
    /// Discover peers on the local network.
    pub mdns: bool,
    /// Force Kademlia server mode (bootstrap nodes, LAN and test networks),
    /// instead of client mode until an external address is confirmed.
    pub kad_server: bool,
    /// How often Kademlia re-bootstraps while its routing table is sparse:
    /// short so a fresh network converges in seconds (the libp2p default of
    /// 5 minutes leaves peers isolated). Once the table holds
    /// [`SETTLED_ROUTING_TABLE`] peers it re-bootstraps every
    /// [`SETTLED_BOOTSTRAP_INTERVAL`] instead.
    pub bootstrap_interval: Duration,
    pub limits: NetworkLimits,
    /// Whether this node relays for peers behind NAT.
    pub relay_server: RelayServer,
    /// Whether this node, when it finds it is not reachable, listens
    /// through relays (and hole-punches from there).
    pub relay_client: bool,
    /// Ask the home router for a port mapping (UPnP IGD).
    pub upnp: bool,
    #[cfg(feature = "test-support")]
    #[doc(hidden)]
    pub fault: FaultInjection,
}

/// When a node serves circuit relay v2 for peers behind NAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayServer {
    /// While it has a confirmed direct external address (AutoNAT, UPnP):
    /// a volunteer that turns out to be public relays for the others.
    WhenReachable,
    /// From the start: a node its operator says is public (`--kad-server`),
    /// which everyone's first contact with the network usually is.
    Always,
    /// Never.
    Never,
}

impl NetworkConfig {
    /// Defaults: listens on all interfaces on `port` over TCP and QUIC,
    /// mDNS on.
    pub fn new(port: u16) -> Self {
        Self {
            listen: default_listen(port),
            bootstrap: Vec::new(),
            mdns: true,
            kad_server: false,
            bootstrap_interval: Duration::from_secs(5),
            limits: NetworkLimits::default(),
            relay_server: RelayServer::WhenReachable,
            relay_client: true,
            upnp: false,
            #[cfg(feature = "test-support")]
            fault: FaultInjection::default(),
        }
    }

    /// For tests and local demos: loopback TCP on a free port, no mDNS,
    /// Kademlia server mode.
    pub fn local() -> Self {
        Self {
            listen: vec![loopback_tcp()],
            mdns: false,
            kad_server: true,
            ..Self::new(0)
        }
    }
}

/// What the network keeps on disk, opened once by the composition root and
/// shared with the other layers that use the same stores.
#[derive(Debug, Clone)]
pub struct NetworkStores {
    /// The blobs this node serves, fetches and provides.
    pub blobs: Arc<BlobStore>,
    /// The crash-safe state store (`formic node`): records are loaded from
    /// it at start and every new one is written to it. `None`: records
    /// live in memory only (short-lived sessions such as `publish`, tests).
    pub state: Option<Arc<StateStore>>,
    /// Directory of `peers.json`, the peers known when the node last ran
    /// (the data directory).
    pub peers_dir: PathBuf,
}

/// `/ip4/0.0.0.0/tcp/<port>` and `/ip4/0.0.0.0/udp/<port>/quic-v1`.
pub fn default_listen(port: u16) -> Vec<Multiaddr> {
    use libp2p::multiaddr::Protocol;
    let any = Multiaddr::empty().with(Protocol::Ip4(std::net::Ipv4Addr::UNSPECIFIED));
    vec![
        any.clone().with(Protocol::Tcp(port)),
        any.with(Protocol::Udp(port)).with(Protocol::QuicV1),
    ]
}

/// `/ip4/127.0.0.1/tcp/0`.
pub fn loopback_tcp() -> Multiaddr {
    use libp2p::multiaddr::Protocol;
    Multiaddr::empty()
        .with(Protocol::Ip4(std::net::Ipv4Addr::LOCALHOST))
        .with(Protocol::Tcp(0))
}

/// `/ip4/127.0.0.1/udp/0/quic-v1`.
pub fn loopback_quic() -> Multiaddr {
    use libp2p::multiaddr::Protocol;
    Multiaddr::empty()
        .with(Protocol::Ip4(std::net::Ipv4Addr::LOCALHOST))
        .with(Protocol::Udp(0))
        .with(Protocol::QuicV1)
}

/// How a record reached this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordVia {
    /// Gossip, forwarded by `propagation_source`.
    Gossip { propagation_source: PeerId },
    /// Pull-sync from that peer.
    Sync { peer: PeerId },
}

/// What the network tells the rest of the node.
#[derive(Debug, Clone)]
pub enum NetworkEvent {
    /// A new, verified record (each record is reported once).
    Record {
        /// The peer it came from: the one that forwarded it (gossip is
        /// anonymous; a record's author is its own signature) or served it
        /// (sync).
        source: PeerId,
        via: RecordVia,
        project: ProjectId,
        gossip: Gossip,
    },
    PeerConnected(PeerId),
    PeerDisconnected(PeerId),
    /// A peer sent something malformed, oversized or forged.
    PeerMisbehaved {
        peer: PeerId,
        reason: String,
    },
    /// A peer misbehaved too often and was disconnected and blocked.
    PeerBanned(PeerId),
    /// Records of `project` were stored but their `Record` events were
    /// dropped because the node read events too slowly (a burst of sync
    /// pages outruns any queue). The records are in the store: read them
    /// again with `NetworkClient::records`. Sent once there is room again.
    RecordsMissed {
        project: ProjectId,
    },
}

/// What `formic status` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetworkStatus {
    pub peer_id: String,
    /// Listen addresses, each ending in `/p2p/<PeerId>`.
    pub listen_addrs: Vec<String>,
    pub external_addrs: Vec<String>,
    /// Connected peers.
    pub peers: Vec<String>,
    pub connections: usize,
    pub routing_table_size: usize,
    pub kad_mode: String,
    pub topics: Vec<String>,
    pub mesh_peers: usize,
    pub records: usize,
    pub projects: usize,
    pub publish_queue: usize,
    pub dropped_events: u64,
    pub blob_store: BlobStoreStats,
    /// Whether peers can dial this node directly: `public`, `private`
    /// (they reach it through relays) or `unknown`.
    #[serde(default)]
    pub reachability: ReachabilityState,
    /// PeerIds of the relays holding a reservation for this node.
    #[serde(default)]
    pub relays: Vec<String>,
    /// Connected peers, each `direct` or `relayed`.
    #[serde(default)]
    pub peer_connections: Vec<PeerConnection>,
    /// Hole punching this node took part in since it started.
    #[serde(default)]
    pub hole_punches: HolePunchStats,
    /// Milliseconds from start to the first relay reservation, if any.
    #[serde(default)]
    pub first_reservation_ms: Option<u64>,
}

/// A cause whose type differs between libp2p's builder steps (some are
/// `Infallible`, some `&'static str`); boxed so the chain still reaches
/// `main`'s report.
pub type BoxedError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why the network could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot set up the transports")]
    Transport(#[source] BoxedError),
    #[error("cannot set up the network behaviour ({part})")]
    Behaviour {
        part: &'static str,
        #[source]
        source: BoxedError,
    },
    #[error("cannot listen on {addr}")]
    Listen {
        addr: Multiaddr,
        #[source]
        source: std::io::Error,
    },
    #[error("no listen address came up within {0:?}")]
    ListenTimeout(Duration),
    #[error(transparent)]
    State(#[from] crate::state_store::StateStoreError),
    #[error("cannot start the state writer thread: {0}")]
    StateWriter(#[source] std::io::Error),
}

/// The network task, built and listening but not yet running: the caller
/// spawns [`run`](Self::run) (in the shape of rust-libp2p's file-sharing
/// example, where `new` hands back the client, the events and the loop).
pub struct NetworkTask {
    peer_id: PeerId,
    listen_addrs: Vec<Multiaddr>,
    task: swarm::Task,
    commands: mpsc::Receiver<client::Command>,
    blob_io: swarm::BlobIo,
}

impl std::fmt::Debug for NetworkTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetworkTask")
            .field("peer_id", &self.peer_id)
            .field("listen_addrs", &self.listen_addrs)
            .finish_non_exhaustive()
    }
}

impl NetworkTask {
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The addresses it listens on, without `/p2p/`.
    pub fn listen_addrs(&self) -> &[Multiaddr] {
        &self.listen_addrs
    }

    /// Runs the swarm until the client asks it to shut down (or every
    /// client is gone).
    pub async fn run(self) {
        // What the task logs names its node: tests, benchmarks and the demo
        // run many nodes in one process.
        let span = tracing::info_span!("node", peer = %self.peer_id);
        tracing::Instrument::instrument(self.task.run(self.commands, self.blob_io), span).await
    }
}

/// Builds the swarm, listens (returning once every listener has an
/// address), dials the bootstrap peers and the remembered ones, and hands
/// back the client, the event stream and the task to spawn. Must be called
/// inside a Tokio runtime.
pub async fn new(
    config: NetworkConfig,
    keypair: Keypair,
    stores: NetworkStores,
) -> Result<(NetworkClient, mpsc::Receiver<NetworkEvent>, NetworkTask), StartError> {
    let (cmd_tx, cmd_rx) = mpsc::channel(config.limits.command_queue);
    let (ev_tx, ev_rx) = mpsc::channel(config.limits.event_queue);
    let blobs = Arc::clone(&stores.blobs);
    let (task, blob_io, peer_id, listen_addrs) =
        swarm::build(&config, keypair, stores, ev_tx).await?;
    let client = NetworkClient::new(cmd_tx, peer_id, blobs);
    Ok((
        client,
        ev_rx,
        NetworkTask {
            peer_id,
            listen_addrs,
            task,
            commands: cmd_rx,
            blob_io,
        },
    ))
}
