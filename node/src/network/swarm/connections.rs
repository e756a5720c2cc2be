//! Connection management's decisions: when a peer has misbehaved often
//! enough to block, which idle connections to close, when a node is near
//! its cap. Each threshold here was tuned against a forming network of
//! hundreds of peers (see `prune`), and such a network is too slow and too
//! noisy to test them in; kept pure, they are tested below with made-up
//! clocks instead.
//!
//! Pure bookkeeping, like `outbox`: the swarm task hands it the current
//! time and what it sees of the swarm, and carries out what it returns
//! (logs, events, disconnections, the block list).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;

use libp2p::PeerId;

/// A node this close to its connection cap trims idle connections every
/// tick, and counts a peer as idle after `NEWCOMER_GRACE` instead of the
/// configured `idle_after` (see `Connections::prune`).
const HIGH_WATER_HEADROOM: u32 = 5;
const NEWCOMER_GRACE: Duration = Duration::from_secs(3);

/// Most blocked peers remembered (so a Sybil flood cannot grow it forever).
const MAX_BLOCKED: usize = 4096;

/// Whether `established` connections are close enough to `max_connections`
/// to trim harder (see `Connections::prune`).
pub(super) fn near_cap(established: u32, max_connections: u32) -> bool {
    established + HIGH_WATER_HEADROOM >= max_connections
}

/// What one pruning round sees of the swarm.
#[derive(Debug)]
pub(super) struct PruneRound<'a> {
    pub(super) now: Instant,
    /// Every connected peer.
    pub(super) connected: &'a [PeerId],
    /// Peers in some gossip mesh.
    pub(super) mesh: &'a HashSet<PeerId>,
    /// Peers with a request of ours in flight.
    pub(super) busy: &'a HashSet<PeerId>,
    /// See [`near_cap`].
    pub(super) near_cap: bool,
}

/// Strikes, blocks and activity of peers.
#[derive(Debug)]
pub(super) struct Connections {
    /// Above this many connected peers, idle ones are pruned.
    prune_above: usize,
    /// A peer counts as idle after this long without a message or request.
    idle_after: Duration,
    /// Strikes after which a peer is blocked.
    strikes_before_ban: u32,
    strikes: HashMap<PeerId, u32>,
    blocked: HashSet<PeerId>,
    last_activity: HashMap<PeerId, Instant>,
    /// When each connected peer's first current connection opened: a
    /// connection younger than `NEWCOMER_GRACE` is never pruned.
    connected_since: HashMap<PeerId, Instant>,
}

impl Connections {
    pub(super) fn new(prune_above: usize, idle_after: Duration, strikes_before_ban: u32) -> Self {
        Self {
            prune_above,
            idle_after,
            strikes_before_ban,
            strikes: HashMap::new(),
            blocked: HashSet::new(),
            last_activity: HashMap::new(),
            connected_since: HashMap::new(),
        }
    }

    /// `peer` sent a message or a request.
    pub(super) fn touch(&mut self, peer: PeerId, now: Instant) {
        self.last_activity.insert(peer, now);
    }

    /// A connection to `peer` opened; `first` when it is the only one.
    pub(super) fn connected(&mut self, peer: PeerId, first: bool, now: Instant) {
        // A new connection is not activity: Kademlia re-dials peers we
        // pruned, and counting that would keep every one of them.
        self.last_activity.entry(peer).or_insert(now);
        if first {
            self.connected_since.insert(peer, now);
        }
    }

    /// The last connection to `peer` closed.
    pub(super) fn disconnected(&mut self, peer: &PeerId) {
        self.connected_since.remove(peer);
    }

    /// Counts a misbehaviour of `peer`: returns its strikes so far, and
    /// whether to block it now (once, when it reaches the limit, while the
    /// block list has room).
    pub(super) fn strike(&mut self, peer: PeerId) -> (u32, bool) {
        if self.strikes.len() > MAX_BLOCKED && !self.strikes.contains_key(&peer) {
            self.strikes.clear();
        }
        let n = self.strikes.entry(peer).or_insert(0);
        *n += 1;
        let n = *n;
        let block = n >= self.strikes_before_ban
            && !self.blocked.contains(&peer)
            && self.blocked.len() < MAX_BLOCKED;
        if block {
            self.blocked.insert(peer);
        }
        (n, block)
    }

    /// Left alone, Kademlia and gossipsub drift to all-to-all connections.
    /// Above `prune_above` peers, returns the longest-idle peers that are
    /// outside every gossip mesh and not mid-request, as many as are over
    /// `prune_above`, longest idle first, for the task to disconnect.
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
    pub(super) fn prune(&mut self, round: PruneRound<'_>) -> Vec<PeerId> {
        let now = round.now;
        let min_idle = if round.near_cap {
            NEWCOMER_GRACE.min(self.idle_after)
        } else {
            self.idle_after
        };
        // Forget peers gone for a while (bounds the map); remembering recent
        // ones keeps a re-dialed, still idle peer prunable.
        let forget_after = self.idle_after * 4;
        let connected: HashSet<&PeerId> = round.connected.iter().collect();
        self.last_activity.retain(|p, t| {
            connected.contains(p) || now.saturating_duration_since(*t) < forget_after
        });
        if round.connected.len() <= self.prune_above {
            return Vec::new();
        }
        let mut idle: Vec<(Instant, PeerId)> = round
            .connected
            .iter()
            .filter(|p| !round.mesh.contains(p) && !round.busy.contains(p))
            // A connection just opened is in use: most are Kademlia dialling
            // a peer it is querying, and closing one mid-request fails that
            // step of the lookup, which then dials more peers or waits for
            // its 15 s timeout.
            .filter(|p| {
                self.connected_since
                    .get(p)
                    .is_none_or(|t| now.saturating_duration_since(*t) >= NEWCOMER_GRACE)
            })
            .map(|p| (self.last_activity.get(p).copied().unwrap_or(now), *p))
            .filter(|(t, _)| now.saturating_duration_since(*t) >= min_idle)
            .collect();
        idle.sort();
        let excess = round.connected.len() - self.prune_above;
        idle.into_iter().take(excess).map(|(_, p)| p).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE_AFTER: Duration = Duration::from_secs(10);
    const SECOND: Duration = Duration::from_secs(1);

    fn peers(n: usize) -> Vec<PeerId> {
        (0..n).map(|_| PeerId::random()).collect()
    }

    /// `n` peers, connected long enough ago to be past the grace, idle
    /// since `t0`; returns the manager, the peers and `t0`.
    fn idle_network(prune_above: usize, n: usize) -> (Connections, Vec<PeerId>, Instant) {
        let t0 = Instant::now();
        let mut c = Connections::new(prune_above, IDLE_AFTER, 8);
        let ps = peers(n);
        for p in &ps {
            c.connected(*p, true, t0);
        }
        (c, ps, t0)
    }

    fn round<'a>(
        now: Instant,
        connected: &'a [PeerId],
        spared: &'a HashSet<PeerId>,
        near_cap: bool,
    ) -> PruneRound<'a> {
        PruneRound {
            now,
            connected,
            mesh: spared,
            busy: spared,
            near_cap,
        }
    }

    #[test]
    fn a_peer_is_blocked_once_at_the_limit() {
        let mut c = Connections::new(25, IDLE_AFTER, 3);
        let p = PeerId::random();
        assert_eq!(c.strike(p), (1, false));
        assert_eq!(c.strike(p), (2, false));
        assert_eq!(c.strike(p), (3, true));
        // Already blocked: counted, not blocked again.
        assert_eq!(c.strike(p), (4, false));
        // Strikes are per peer.
        assert_eq!(c.strike(PeerId::random()), (1, false));
    }

    #[test]
    fn the_block_list_is_bounded() {
        let mut c = Connections::new(25, IDLE_AFTER, 1);
        for p in peers(MAX_BLOCKED) {
            assert_eq!(c.strike(p), (1, true));
        }
        // Full: struck but not blocked.
        assert_eq!(c.strike(PeerId::random()), (1, false));
        assert_eq!(c.blocked.len(), MAX_BLOCKED);
        // The strike counts are bounded too: past the bound, a new peer's
        // strike clears them.
        assert_eq!(c.strikes.len(), MAX_BLOCKED + 1);
        c.strike(PeerId::random());
        assert_eq!(c.strikes.len(), 1);
    }

    #[test]
    fn near_the_cap_means_within_the_headroom() {
        assert!(!near_cap(44, 50));
        assert!(near_cap(45, 50));
        assert!(near_cap(50, 50));
    }

    #[test]
    fn nothing_is_pruned_at_or_below_the_threshold() {
        let (mut c, ps, t0) = idle_network(3, 3);
        let none = HashSet::new();
        assert!(
            c.prune(round(t0 + 60 * SECOND, &ps, &none, false))
                .is_empty()
        );
        assert!(
            c.prune(round(t0 + 60 * SECOND, &ps, &none, true))
                .is_empty()
        );
    }

    #[test]
    fn the_longest_idle_go_first_down_to_the_threshold() {
        let (mut c, ps, t0) = idle_network(2, 5);
        // Active later in order: ps[4] is the most recently active.
        for (i, p) in ps.iter().enumerate() {
            c.touch(*p, t0 + (i as u32) * SECOND);
        }
        let none = HashSet::new();
        let pruned = c.prune(round(t0 + 30 * SECOND, &ps, &none, false));
        assert_eq!(pruned, vec![ps[0], ps[1], ps[2]]);
    }

    #[test]
    fn mesh_busy_active_and_new_peers_are_spared() {
        let (mut c, mut ps, t0) = idle_network(0, 4);
        let now = t0 + 30 * SECOND;
        let mesh: HashSet<PeerId> = [ps[0]].into();
        let busy: HashSet<PeerId> = [ps[1]].into();
        // Active within `idle_after`.
        c.touch(ps[2], now - 9 * SECOND);
        // Connected within the grace, never active.
        let newcomer = PeerId::random();
        c.connected(newcomer, true, now - 2 * SECOND);
        ps.push(newcomer);
        let pruned = c.prune(PruneRound {
            now,
            connected: &ps,
            mesh: &mesh,
            busy: &busy,
            near_cap: false,
        });
        assert_eq!(pruned, vec![ps[3]]);
        // Past the grace the newcomer is idle since it connected.
        let later = now + 8 * SECOND;
        let pruned = c.prune(PruneRound {
            now: later,
            connected: &ps,
            mesh: &mesh,
            busy: &busy,
            near_cap: false,
        });
        assert_eq!(pruned, vec![ps[3], ps[2], newcomer]);
    }

    #[test]
    fn near_the_cap_a_peer_is_idle_after_the_grace() {
        let (mut c, ps, t0) = idle_network(1, 2);
        for p in &ps {
            c.touch(*p, t0);
        }
        let none = HashSet::new();
        let now = t0 + 4 * SECOND;
        assert!(c.prune(round(now, &ps, &none, false)).is_empty());
        assert_eq!(c.prune(round(now, &ps, &none, true)).len(), 1);
        // Exactly the grace counts; just before it does not.
        assert_eq!(
            c.prune(round(t0 + NEWCOMER_GRACE, &ps, &none, true)).len(),
            1
        );
        let before = t0 + NEWCOMER_GRACE - Duration::from_millis(1);
        assert!(c.prune(round(before, &ps, &none, true)).is_empty());
    }

    #[test]
    fn a_redialled_idle_peer_stays_prunable_until_forgotten() {
        let (mut c, ps, t0) = idle_network(1, 2);
        let none = HashSet::new();
        // ps[1] disconnects; its activity is remembered for a while.
        c.disconnected(&ps[1]);
        let alone = [ps[0]];
        assert!(
            c.prune(round(t0 + 20 * SECOND, &alone, &none, false))
                .is_empty()
        );
        // Back after 20 s (Kademlia re-dials it): still idle since t0, and
        // pruned as soon as it is past the grace.
        c.connected(ps[1], true, t0 + 20 * SECOND);
        c.touch(ps[0], t0 + 15 * SECOND);
        let pruned = c.prune(round(t0 + 23 * SECOND, &ps, &none, false));
        assert_eq!(pruned, vec![ps[1]]);
        // Gone longer than 4 × idle_after: forgotten, so back again it
        // starts idle from its new connection.
        c.disconnected(&ps[1]);
        assert!(
            c.prune(round(t0 + 70 * SECOND, &alone, &none, false))
                .is_empty()
        );
        c.connected(ps[1], true, t0 + 70 * SECOND);
        let soon = t0 + 75 * SECOND;
        assert_eq!(c.prune(round(soon, &ps, &none, false)), vec![ps[0]]);
    }
}
