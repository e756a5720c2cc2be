//! Connection management, the task's side: strikes and blocking of peers
//! that send malformed messages, and pruning of idle connections. Without
//! it Kademlia and gossipsub drift to all-to-all connections and a busy
//! bootstrap peer sits at its cap, refusing newcomers.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use libp2p::PeerId;

use super::Task;
use crate::network::NetworkEvent;

/// A node this close to its connection cap trims idle connections every
/// tick, and counts a peer as idle after `NEWCOMER_GRACE` instead of the
/// configured `idle_after` (see `prune_connections`).
const HIGH_WATER_HEADROOM: u32 = 5;
const NEWCOMER_GRACE: Duration = Duration::from_secs(3);

/// Most blocked peers remembered (so a Sybil flood cannot grow it forever).
const MAX_BLOCKED: usize = 4096;

impl Task {
    pub(super) fn touch(&mut self, peer: PeerId) {
        self.last_activity.insert(peer, Instant::now());
    }

    /// Counts a misbehaviour; blocks the peer once it has too many.
    pub(super) fn strike(&mut self, peer: PeerId, reason: String) {
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

    pub(super) fn near_connection_cap(&self) -> bool {
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
    pub(super) fn prune_connections(&mut self) {
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
}
