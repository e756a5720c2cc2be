//! The composition root: the one place that opens a node's files and wires
//! its layers together. `formic node`, `formic publish`, `formic results`,
//! `formic demo` and the multi-node tests all start nodes here.
//!
//! In order (after rust-libp2p's `examples/file-sharing` and Lighthouse's
//! client builder):
//! 1. [`Opened::open`] loads the identity and opens the blob store and, for
//!    `formic node`, the state store, once each;
//! 2. [`network::new`] builds the swarm from networking settings and those
//!    stores, and the root spawns its task;
//! 3. the computing layer gets the network's client and events and the
//!    same stores in its own config;
//! 4. the control API starts last, with everything it reports passed in.
//!
//! So no layer reaches for another through a shared slot, and the network
//! knows nothing of the API or the computing layer.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use formic_work_units::SandboxConfig;
use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId};
use tokio::sync::mpsc;

use crate::api::{self, ApiContext, ApiServer};
use crate::blob_store::BlobStore;
use crate::computing::{self, ComputeConfig, ComputeHandle, Sabotage};
use crate::network::{self, NetworkClient, NetworkConfig, NetworkEvent, NetworkStores, StartError};
use crate::state_store::StateStore;

/// Everything needed to start a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Holds the identity, blobs, state, known peers and API files.
    pub data_dir: PathBuf,
    /// The node's key; `None` loads or creates `<data_dir>/identity.key`.
    pub keypair: Option<Keypair>,
    /// How it takes part in the network.
    pub network: NetworkConfig,
    /// When listening on `network.listen` fails (`formic node`'s default
    /// port is taken), listen on TCP and QUIC on a free port instead.
    pub free_port_fallback: bool,
    /// Serve the control API on this address (127.0.0.1 only).
    pub api_addr: Option<SocketAddr>,
    /// Keep records, held results and followed projects in
    /// `<data_dir>/state.redb`, so they survive a crash or a kill -9
    /// (`formic node`). Otherwise they live in memory only (short-lived
    /// sessions such as `publish`, tests).
    pub persist_state: bool,
    /// Byte quota of the blob store (the `disk_quota` preference); `None`:
    /// unlimited (short-lived sessions, tests).
    pub blob_quota: Option<u64>,
}

impl NodeConfig {
    /// A node with defaults: listens on all interfaces on `port` over TCP
    /// and QUIC, mDNS on, API on 127.0.0.1 with a free port.
    pub fn new(data_dir: PathBuf, port: u16) -> Self {
        Self {
            data_dir,
            keypair: None,
            network: NetworkConfig::new(port),
            free_port_fallback: false,
            api_addr: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            persist_state: false,
            blob_quota: None,
        }
    }

    /// A node for tests and local demos: loopback TCP on a free port, no
    /// mDNS, no API, Kademlia server mode.
    pub fn local(data_dir: PathBuf) -> Self {
        Self {
            network: NetworkConfig::local(),
            api_addr: None,
            ..Self::new(data_dir, 0)
        }
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Identity(#[from] crate::identity::KeyFileError),
    #[error(transparent)]
    BlobStore(#[from] crate::blob_store::BlobStoreError),
    #[error("opening the node's state {}", path.display())]
    State {
        path: PathBuf,
        #[source]
        source: crate::state_store::StateStoreError,
    },
    #[error(transparent)]
    Network(#[from] StartError),
    #[error(transparent)]
    Api(#[from] api::ApiError),
    #[error("cannot start the sandbox: cannot start the compute threads: {0}")]
    ComputeThreads(#[source] crate::compute_pool::PoolError),
}

/// What a node keeps in its data directory, opened once and shared by
/// every layer that uses it.
#[derive(Debug, Clone)]
pub struct Opened {
    /// The node's network identity; the computing layer signs with it too.
    pub keypair: Keypair,
    pub blobs: Arc<BlobStore>,
    /// Present when [`NodeConfig::persist_state`] is set.
    pub state: Option<Arc<StateStore>>,
}

impl Opened {
    /// Creates the data directory if needed, loads the identity (unless
    /// `config` has one) and opens the stores `config` asks for.
    pub fn open(config: &NodeConfig) -> Result<Self, NodeError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| NodeError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let keypair = match config.keypair.clone() {
            Some(k) => k,
            None => crate::identity::load_or_create_node_identity(&config.data_dir)?,
        };
        let state = if config.persist_state {
            let path = config.data_dir.join(crate::state_store::STATE_FILE);
            let store =
                StateStore::open(&path).map_err(|source| NodeError::State { path, source })?;
            Some(Arc::new(store))
        } else {
            None
        };
        let blobs = Arc::new(BlobStore::open_with_quota(
            &config.data_dir,
            config.blob_quota,
        )?);
        Ok(Self {
            keypair,
            blobs,
            state,
        })
    }

    fn network_stores(&self, config: &NodeConfig) -> NetworkStores {
        NetworkStores {
            blobs: Arc::clone(&self.blobs),
            state: self.state.clone(),
            peers_dir: config.data_dir.clone(),
        }
    }
}

/// A started node: its network task, client and events, and the control
/// API when it runs one.
pub struct RunningNode {
    peer_id: PeerId,
    listen_addrs: Vec<Multiaddr>,
    client: NetworkClient,
    blobs: Arc<BlobStore>,
    events: Option<mpsc::Receiver<NetworkEvent>>,
    task: tokio::task::JoinHandle<()>,
    api: Option<ApiServer>,
}

impl std::fmt::Debug for RunningNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningNode")
            .field("peer_id", &self.peer_id)
            .field("listen_addrs", &self.listen_addrs)
            .field("api", &self.api)
            .finish_non_exhaustive()
    }
}

/// Why a node did not shut down cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ShutdownError {
    #[error("the network task panicked or was cancelled: {0}")]
    Task(#[source] tokio::task::JoinError),
}

impl RunningNode {
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The addresses it listened on at start, without `/p2p/`.
    pub fn listen_addrs(&self) -> &[Multiaddr] {
        &self.listen_addrs
    }

    /// The listen addresses with `/p2p/<PeerId>`, ready to bootstrap from.
    pub fn dial_addrs(&self) -> Vec<Multiaddr> {
        self.listen_addrs
            .iter()
            .map(|a| a.clone().with_p2p(self.peer_id).unwrap_or_else(|a| a))
            .collect()
    }

    /// A handle to the network; clone it freely.
    pub fn client(&self) -> NetworkClient {
        self.client.clone()
    }

    /// The node's blob store (blocking I/O: use from `spawn_blocking`).
    pub fn blob_store(&self) -> &Arc<BlobStore> {
        &self.blobs
    }

    /// The event stream; `None` after it was taken.
    pub fn take_events(&mut self) -> Option<mpsc::Receiver<NetworkEvent>> {
        self.events.take()
    }

    /// The event stream, borrowed (panics never: returns `None` once taken).
    pub fn events(&mut self) -> Option<&mut mpsc::Receiver<NetworkEvent>> {
        self.events.as_mut()
    }

    /// Where the control API listens, if it runs.
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api.as_ref().map(|a| a.addr())
    }

    /// Stops the API, saves known peers, closes every connection and waits
    /// for the network task to end.
    pub async fn shutdown(self) -> Result<(), ShutdownError> {
        if let Some(api) = self.api {
            api.shutdown().await;
        }
        self.client.shutdown().await;
        self.task.await.map_err(ShutdownError::Task)
    }
}

/// Starts a node without a computing layer (the network tests): opens its
/// files, starts the network, then the control API when configured. Must
/// be called inside a Tokio runtime.
pub async fn start(config: NodeConfig) -> Result<RunningNode, NodeError> {
    let opened = Opened::open(&config)?;
    let mut node = start_network(&config, &opened).await?;
    // On an error the node is dropped, and with its client the network task
    // ends.
    node.api = serve_api(&config, ApiContextParts::network_only(node.client())).await?;
    Ok(node)
}

/// Builds the network from the opened stores and spawns its task.
async fn start_network(config: &NodeConfig, opened: &Opened) -> Result<RunningNode, NodeError> {
    let stores = opened.network_stores(config);
    let started = network::new(
        config.network.clone(),
        opened.keypair.clone(),
        stores.clone(),
    )
    .await;
    let (client, events, task) = match started {
        Err(StartError::Listen { addr, source }) if config.free_port_fallback => {
            tracing::warn!(%addr, error = %source, "default port is taken; listening on a free port instead");
            let network = NetworkConfig {
                listen: network::default_listen(0),
                ..config.network.clone()
            };
            network::new(network, opened.keypair.clone(), stores).await?
        }
        other => other?,
    };
    let peer_id = task.peer_id();
    let listen_addrs = task.listen_addrs().to_vec();
    let task = tokio::spawn(task.run());
    Ok(RunningNode {
        peer_id,
        listen_addrs,
        client,
        blobs: Arc::clone(&opened.blobs),
        events: Some(events),
        task,
        api: None,
    })
}

/// What the API reports besides the network, gathered by the root.
struct ApiContextParts {
    client: NetworkClient,
    governor: Option<tokio::sync::watch::Receiver<crate::governor::GovernorSnapshot>>,
    units: Option<crate::governor::UnitSet>,
    compute: Option<tokio::sync::watch::Receiver<computing::ComputeStatus>>,
}

impl ApiContextParts {
    fn network_only(client: NetworkClient) -> Self {
        Self {
            client,
            governor: None,
            units: None,
            compute: None,
        }
    }
}

/// Starts the control API when `config` asks for one.
async fn serve_api(
    config: &NodeConfig,
    parts: ApiContextParts,
) -> Result<Option<ApiServer>, NodeError> {
    let Some(addr) = config.api_addr else {
        return Ok(None);
    };
    let server = api::serve(ApiContext {
        client: parts.client,
        data_dir: config.data_dir.clone(),
        addr,
        governor: parts.governor,
        units: parts.units,
        compute: parts.compute,
    })
    .await?;
    Ok(Some(server))
}

/// What the computing layer of a session does.
#[derive(Debug, Clone, Default)]
pub struct Role {
    /// Units computed at once (0: follow and validate only).
    pub slots: usize,
    /// Follow every announced project.
    pub follow_all: bool,
    pub probation: u32,
    pub sabotage: Option<Sabotage>,
    /// Run units on idle-priority threads (volunteers) rather than Tokio's
    /// blocking threads.
    pub idle_priority: bool,
    /// The idle governor's unit set, when a governor runs.
    pub governed: Option<crate::governor::UnitSet>,
    /// The idle governor's decisions, for the control API's status.
    pub governor: Option<tokio::sync::watch::Receiver<crate::governor::GovernorSnapshot>>,
    /// Fault injection for tests (`ComputeConfig::host_faults`).
    #[cfg(feature = "test-support")]
    pub host_faults: u32,
}

impl Role {
    /// A volunteer computing `slots` units at once.
    pub fn volunteer(slots: usize) -> Self {
        Self {
            slots,
            follow_all: true,
            ..Self::default()
        }
    }

    /// An owner or researcher: follows what it is told, computes nothing.
    pub fn observer() -> Self {
        Self::default()
    }
}

/// A running node with its computing layer.
#[derive(Debug)]
pub struct Session {
    pub node: RunningNode,
    pub compute: ComputeHandle,
}

impl Session {
    /// Opens the node's files, then starts the node described by `config`
    /// and a computing layer in `role`. Must run inside a Tokio runtime.
    pub async fn start(config: NodeConfig, role: Role) -> Result<Self, NodeError> {
        let opened = Opened::open(&config)?;
        Self::start_opened(config, opened, role).await
    }

    /// [`start`](Self::start) with the files already opened (`formic node`
    /// opens them before its runtime, as it always did).
    pub async fn start_opened(
        config: NodeConfig,
        opened: Opened,
        role: Role,
    ) -> Result<Self, NodeError> {
        let mut node = start_network(&config, &opened).await?;
        let sandbox = computing::LazySandbox::new(SandboxConfig {
            cache_dir: Some(config.data_dir.join("wasm-cache")),
            // One unit per compute slot, so `--threads` beyond the pool's
            // default never meets a full pool.
            concurrent_units: u32::try_from(role.slots).unwrap_or(u32::MAX),
        });
        let events = node
            .take_events()
            .unwrap_or_else(|| tokio::sync::mpsc::channel(1).1);
        let pool = if role.idle_priority && role.slots > 0 {
            let pool = crate::compute_pool::ComputePool::new(
                crate::compute_pool::PoolConfig::with_threads(role.slots),
            )
            .map_err(NodeError::ComputeThreads)?;
            Some(Arc::new(pool))
        } else {
            None
        };
        let compute = computing::spawn(
            node.client(),
            events,
            ComputeConfig {
                keypair: opened.keypair,
                sandbox: Arc::new(sandbox),
                slots: role.slots,
                follow_all: role.follow_all,
                probation: role.probation,
                sabotage: role.sabotage,
                tick: Duration::from_millis(100),
                pool,
                governed: role.governed.clone(),
                blobs: opened.blobs,
                state: opened.state,
                #[cfg(feature = "test-support")]
                host_faults: role.host_faults,
            },
        );
        // Last: the API reports on everything started above.
        let parts = ApiContextParts {
            client: node.client(),
            governor: role.governor,
            units: role.governed,
            compute: Some(compute.status()),
        };
        node.api = match serve_api(&config, parts).await {
            Ok(api) => api,
            Err(e) => {
                // The computing task holds a client: stop it, so dropping
                // the node ends the network task.
                compute.stop();
                return Err(e);
            }
        };
        Ok(Self { node, compute })
    }

    pub fn client(&self) -> NetworkClient {
        self.node.client()
    }

    pub fn peer_id(&self) -> PeerId {
        self.node.peer_id()
    }

    /// Waits until at least `n` peers are connected, or `timeout` passes;
    /// returns how many are.
    pub async fn wait_for_peers(&self, n: usize, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let have = self
                .client()
                .connected_peers()
                .await
                .map(|p| p.len())
                .unwrap_or(0);
            if have >= n || tokio::time::Instant::now() >= deadline {
                return have;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops computing and the node.
    pub async fn shutdown(self) -> Result<(), ShutdownError> {
        self.compute.stop();
        self.node.shutdown().await
    }
}
