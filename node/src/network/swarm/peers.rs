//! Connection management, the task's side: it carries out what
//! `connections` decides (logs, events, the block list, disconnections),
//! from what the swarm shows it. Without it Kademlia and gossipsub drift to
//! all-to-all connections and a busy bootstrap peer sits at its cap,
//! refusing newcomers.

use std::collections::HashSet;
use tokio::time::Instant;

use libp2p::PeerId;

use super::Task;
use super::connections::{PruneRound, near_cap};
use crate::network::NetworkEvent;

impl Task {
    pub(super) fn touch(&mut self, peer: PeerId) {
        self.connections.touch(peer, Instant::now());
    }

    /// Counts a misbehaviour; blocks the peer once it has too many.
    pub(super) fn strike(&mut self, peer: PeerId, reason: String) {
        tracing::warn!(%peer, %reason, "peer misbehaved");
        let (n, block) = self.connections.strike(peer);
        self.emit(NetworkEvent::PeerMisbehaved { peer, reason });
        if block {
            tracing::warn!(%peer, strikes = n, "blocking peer");
            self.swarm.behaviour_mut().blocked.block_peer(peer);
            self.emit(NetworkEvent::PeerBanned(peer));
        }
    }

    pub(super) fn near_connection_cap(&self) -> bool {
        let established = self
            .swarm
            .network_info()
            .connection_counters()
            .num_established();
        near_cap(established, self.limits.max_connections)
    }

    /// Disconnects the idle peers `Connections::prune` picks (see there
    /// for why and when).
    pub(super) fn prune_connections(&mut self) {
        let near_cap = self.near_connection_cap();
        let connected: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        // Only a round that may prune needs the mesh and the busy peers.
        let (mesh, busy): (HashSet<PeerId>, HashSet<PeerId>) =
            if connected.len() > self.limits.prune_above {
                (
                    self.swarm
                        .behaviour()
                        .gossipsub
                        .all_mesh_peers()
                        .copied()
                        .collect(),
                    self.pending_sync.values().map(|j| j.peer).collect(),
                )
            } else {
                Default::default()
            };
        let prune = self.connections.prune(PruneRound {
            now: Instant::now(),
            connected: &connected,
            mesh: &mesh,
            busy: &busy,
            near_cap,
        });
        for peer in prune {
            tracing::debug!(%peer, "pruning idle connection outside the gossip mesh");
            let _ = self.swarm.disconnect_peer_id(peer);
        }
    }
}
