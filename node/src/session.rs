//! A node and its computing layer started together in this process: what
//! `formic publish`, `formic results`, `formic demo` and the end-to-end
//! tests run. `formic node` is the long-running form of the same thing.

use std::sync::Arc;
use std::time::Duration;

use formic_work_units::SandboxConfig;
use libp2p::PeerId;

use crate::computing::{self, ComputeConfig, ComputeHandle, Sabotage};
use crate::network::{self, NetworkClient, NodeConfig, RunningNode};

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

/// Why a session could not start.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Start(#[from] network::StartError),
    #[error(transparent)]
    Identity(#[from] crate::identity::KeyFileError),
    #[error("cannot start the sandbox: {0}")]
    Sandbox(String),
}

/// A running node with its computing layer.
#[derive(Debug)]
pub struct Session {
    pub node: RunningNode,
    pub compute: ComputeHandle,
}

impl Session {
    /// Starts the node described by `config` and a computing layer in
    /// `role`. Must run inside a Tokio runtime.
    pub async fn start(mut config: NodeConfig, role: Role) -> Result<Self, SessionError> {
        // The key is loaded here (creating the data dir if needed) because
        // the computing layer signs with the same key the network uses.
        let keypair = match config.keypair.clone() {
            Some(k) => k,
            None => crate::identity::load_or_create_node_identity(&config.data_dir)?,
        };
        config.keypair = Some(keypair.clone());
        let cache_dir = config.data_dir.join("wasm-cache");
        let api_status = config.api_status.clone();
        let mut node = network::start(config).await?;
        let sandbox = computing::LazySandbox::new(SandboxConfig {
            cache_dir: Some(cache_dir),
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
            .map_err(|e| SessionError::Sandbox(format!("cannot start the compute threads: {e}")))?;
            Some(Arc::new(pool))
        } else {
            None
        };
        let compute = computing::spawn(
            node.client(),
            events,
            ComputeConfig {
                keypair,
                sandbox: Arc::new(sandbox),
                slots: role.slots,
                follow_all: role.follow_all,
                probation: role.probation,
                sabotage: role.sabotage,
                tick: Duration::from_millis(100),
                pool,
                governed: role.governed.clone(),
                host_faults: role.host_faults,
            },
        );
        // The control API (started with the network) reports these too.
        api_status.attach_compute(compute.status());
        if let Some(units) = role.governed {
            api_status.attach_units(units);
        }
        if let Some(governor) = role.governor {
            api_status.attach_governor(governor);
        }
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
    pub async fn shutdown(self) -> Result<(), network::ShutdownError> {
        self.compute.stop();
        self.node.shutdown().await
    }
}
