//! Start-up: the swarm is built and listening before `network::new`
//! returns, so callers get real listen addresses (port 0 resolved) to
//! print, dial or hand to other nodes, and a node restarted with a state
//! store serves its old records from the first request.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use formic_protocol::messages::Gossip;
use formic_protocol::signed::VerifiedRoots;
use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId};
use tokio::sync::{Semaphore, mpsc};

use super::Task;
use super::blobs::{BLOB_READERS, BlobIo};
use super::connections::Connections;
use super::discovery::REJOIN_MIN;
use crate::network::behaviour::build_swarm;
use crate::network::outbox::Outbox;
use crate::network::records::RecordStore;
use crate::network::{NetworkConfig, NetworkEvent, NetworkStores, StartError};

/// How long `build` waits for the listeners to come up.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);

/// The record store, filled from the state store when the node keeps one
/// (records held before a restart serve pull-sync at once), and journaling
/// every new record to it.
fn open_records(
    limits: crate::network::RecordLimits,
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
pub(in crate::network) async fn build(
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
                source: std::io::Error::other(e),
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
                        source: reason.err().unwrap_or_else(|| {
                            std::io::Error::other(format!("listener {listener_id:?} closed"))
                        }),
                    });
                }
                SwarmEvent::ListenerError { error, .. } => {
                    return Err(StartError::Listen {
                        addr: Multiaddr::empty(),
                        source: error,
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
        #[cfg(feature = "test-support")]
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
        connections: Connections::new(
            config.limits.prune_above,
            config.limits.idle_after,
            config.limits.strikes_before_ban,
        ),
        reachability: super::reachability::Reachability::new(tokio::time::Instant::now()),
        connection_kinds: Default::default(),
        hole_punches: Default::default(),
        punch_retries: Default::default(),
        relay_server: config.relay_server,
        relay_client: config.relay_client,
        ticks: 0,
    };
    for addr in &listen_addrs {
        task.declare_public_address(addr.clone());
    }
    task.join();
    task.provide_stored_blobs().await;
    Ok((task, blob_io_rx, peer_id, listen_addrs))
}
