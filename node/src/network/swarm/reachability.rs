//! Reachability and NAT traversal: whether peers can dial this node, the
//! relays it listens through when they cannot, and what hole punching did.
//!
//! Most volunteers sit behind a home router that drops unsolicited inbound
//! connections. Such a node learns that it is private from AutoNAT v2 (a
//! peer's dial-back to its observed address fails) or, since a router that
//! silently drops the dial-back makes AutoNAT v2 time out without a verdict
//! (libp2p retries such a probe forever), from having only private listen
//! addresses and no confirmed external one a while after start. It
//! then reserves a slot on a
//! few relays (peers that advertise circuit relay v2's hop protocol and
//! listen on a public address), and advertises the resulting
//! `/p2p-circuit` addresses through identify and Kademlia. A peer that
//! dials it through a relay gets a relayed connection, which DCUtR then
//! tries to upgrade to a direct one by hole punching; once a direct
//! connection exists the relayed one is closed, so bulk traffic (blobs)
//! takes the direct path and the relay only carries what cannot.
//!
//! The decisions are in [`Reachability`], a pure state machine fed with
//! what the swarm reports and asked what to do next, tested below without
//! a network; the `Task` methods at the end translate swarm events into
//! its inputs and its decisions into swarm calls.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use libp2p::core::transport::ListenerId;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::ConnectionId;
use libp2p::{Multiaddr, PeerId, dcutr, relay};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::Task;
use super::discovery::is_public;
use crate::network::RelayServer;

/// The protocol a relay server advertises (circuit relay v2, hop).
pub(crate) const HOP_PROTOCOL: &str = "/libp2p/circuit/relay/0.2.0/hop";

/// Relays a private node listens through at once: one more than needed, so
/// losing one (a volunteer relay going offline) leaves the node reachable
/// while it reserves a replacement.
pub(crate) const MAX_RELAYS: usize = 2;

/// Hole punching tried again with a peer after a failed attempt: its
/// timing depends on both ends answering within a round trip, which a
/// loaded machine sometimes misses.
pub(crate) const HOLE_PUNCH_RETRIES: u32 = 3;

/// Peers whose hole-punching attempts are remembered at most.
const MAX_PUNCH_RETRY_PEERS: usize = 1024;

/// Wait before trying hole punching with a peer again.
const HOLE_PUNCH_RETRY_AFTER: Duration = Duration::from_secs(15);

/// Wait before asking a relay again after its reservation failed or closed.
const RESERVATION_RETRY: Duration = Duration::from_secs(30);

/// How long a node listening only on private addresses waits for AutoNAT
/// or UPnP to confirm an external address before calling itself private: a
/// few probe rounds (5 s each), so a node with a port forward or a mapping
/// is not sent to a relay for nothing.
pub(crate) const PRIVATE_AFTER: Duration = Duration::from_secs(12);

/// What peers can do to reach this node, as `formic status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ReachabilityState {
    /// Not known yet: no address confirmed, no probe failed.
    #[default]
    Unknown,
    /// A direct address of this node is confirmed reachable (AutoNAT,
    /// UPnP): peers dial it directly.
    Public,
    /// Probes of its addresses failed: peers reach it through relays.
    Private,
}

/// How one connection to a peer runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnectionKind {
    /// Straight to the peer (dialled, accepted or hole-punched).
    Direct,
    /// Through a relay's circuit.
    Relayed,
}

/// One connected peer and how this node reaches it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerConnection {
    /// The peer's PeerId.
    pub peer: String,
    /// `direct` when at least one direct connection is open, else `relayed`.
    pub kind: ConnectionKind,
}

/// Hole punching attempts this node took part in since it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct HolePunchStats {
    /// Relayed connections upgraded to direct ones.
    pub succeeded: u64,
    /// Attempts that gave up (the relayed connection stays).
    pub failed: u64,
}

/// A relay this node listens through.
#[derive(Debug, Clone)]
struct RelaySlot {
    listener: ListenerId,
    accepted: bool,
}

/// The pure part: reachability from the evidence, and the relays to use.
#[derive(Debug)]
pub(crate) struct Reachability {
    started: Instant,
    /// Confirmed external addresses that are not relayed ones.
    direct_external: HashSet<Multiaddr>,
    /// AutoNAT probes of this node's addresses that failed, since the last
    /// that succeeded.
    probes_failed: u32,
    /// Every address this node listens on is private (or loopback), and
    /// [`PRIVATE_AFTER`] has passed without a confirmed external address.
    private_addresses: bool,
    /// Connected peers offering to relay, with a public address to reach
    /// them at (ordered, so the choice is deterministic).
    candidates: BTreeMap<PeerId, Multiaddr>,
    slots: BTreeMap<PeerId, RelaySlot>,
    retry_after: HashMap<PeerId, Instant>,
    first_reservation: Option<Duration>,
}

impl Reachability {
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            started: now,
            direct_external: HashSet::new(),
            probes_failed: 0,
            private_addresses: false,
            candidates: BTreeMap::new(),
            slots: BTreeMap::new(),
            retry_after: HashMap::new(),
            first_reservation: None,
        }
    }

    pub(crate) fn state(&self) -> ReachabilityState {
        if !self.direct_external.is_empty() {
            ReachabilityState::Public
        } else if self.probes_failed > 0 || self.private_addresses {
            ReachabilityState::Private
        } else {
            ReachabilityState::Unknown
        }
    }

    /// An AutoNAT v2 probe of one of this node's addresses finished.
    pub(crate) fn probed(&mut self, reachable: bool) {
        if reachable {
            self.probes_failed = 0;
        } else {
            self.probes_failed = self.probes_failed.saturating_add(1);
        }
    }

    /// What this node listens on now: whether any address is public.
    pub(crate) fn listen_addresses(&mut self, any_public: bool, now: Instant) {
        self.private_addresses =
            !any_public && now.saturating_duration_since(self.started) >= PRIVATE_AFTER;
    }

    /// The swarm confirmed (or expired) an external address. Relayed
    /// addresses say nothing about direct reachability and are ignored.
    pub(crate) fn external_address(&mut self, addr: &Multiaddr, confirmed: bool) {
        if is_relayed(addr) {
            return;
        }
        if confirmed {
            self.direct_external.insert(addr.clone());
        } else {
            self.direct_external.remove(addr);
        }
    }

    /// `peer` offers to relay (`Some` with an address to reach it at) or
    /// no longer does (`None`: it stopped advertising, or disconnected).
    pub(crate) fn relay_candidate(&mut self, peer: PeerId, addr: Option<Multiaddr>) {
        match addr {
            Some(addr) => {
                self.candidates.insert(peer, addr);
            }
            None => {
                self.candidates.remove(&peer);
            }
        }
    }

    /// Relays to start listening through now: while private, candidates
    /// not in use and not waiting out a retry, up to [`MAX_RELAYS`]
    /// slots. Each returned relay must be reported back with
    /// [`listening`](Self::listening) or [`failed`](Self::failed).
    pub(crate) fn relays_to_reserve(&mut self, now: Instant) -> Vec<(PeerId, Multiaddr)> {
        if self.state() != ReachabilityState::Private {
            return Vec::new();
        }
        self.retry_after.retain(|_, t| *t > now);
        let free = MAX_RELAYS.saturating_sub(self.slots.len());
        self.candidates
            .iter()
            .filter(|(p, _)| !self.slots.contains_key(p) && !self.retry_after.contains_key(p))
            .take(free)
            .map(|(p, a)| (*p, a.clone()))
            .collect()
    }

    /// Listening through `relay` started as `listener`.
    pub(crate) fn listening(&mut self, relay: PeerId, listener: ListenerId) {
        self.slots.insert(
            relay,
            RelaySlot {
                listener,
                accepted: false,
            },
        );
    }

    /// Listening through `relay` could not start; try it again later.
    pub(crate) fn failed(&mut self, relay: PeerId, now: Instant) {
        self.slots.remove(&relay);
        self.retry_after.insert(relay, now + RESERVATION_RETRY);
    }

    /// `relay` accepted (or renewed) this node's reservation.
    pub(crate) fn accepted(&mut self, relay: PeerId, now: Instant) {
        if let Some(slot) = self.slots.get_mut(&relay) {
            slot.accepted = true;
        }
        if self.first_reservation.is_none() {
            self.first_reservation = Some(now.saturating_duration_since(self.started));
        }
    }

    /// A listener closed; if it was a relay's, that relay is retried later
    /// and another may take its place now.
    pub(crate) fn listener_closed(&mut self, listener: ListenerId, now: Instant) -> Option<PeerId> {
        let relay = self
            .slots
            .iter()
            .find(|(_, s)| s.listener == listener)
            .map(|(p, _)| *p)?;
        self.failed(relay, now);
        Some(relay)
    }

    /// Listeners of relays to drop: all of them once this node is public.
    pub(crate) fn relays_to_release(&mut self) -> Vec<ListenerId> {
        if self.state() != ReachabilityState::Public {
            return Vec::new();
        }
        std::mem::take(&mut self.slots)
            .into_values()
            .map(|s| s.listener)
            .collect()
    }

    /// Relays holding a reservation for this node.
    pub(crate) fn reserved(&self) -> Vec<PeerId> {
        self.slots
            .iter()
            .filter(|(_, s)| s.accepted)
            .map(|(p, _)| *p)
            .collect()
    }

    /// How long after start the first reservation was accepted.
    pub(crate) fn first_reservation(&self) -> Option<Duration> {
        self.first_reservation
    }
}

/// Whether `addr` goes through a relay.
pub(crate) fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}

/// The address to reach a relay at, from what it listens on: a public,
/// direct one (a relay reached through another relay cannot relay).
fn relay_address(listen_addrs: &[Multiaddr]) -> Option<Multiaddr> {
    listen_addrs
        .iter()
        .find(|a| !is_relayed(a) && is_public(a))
        .cloned()
}

/// Peers to try hole punching with again, and when. A retry closes the
/// peer's relayed connection, so a disconnection does not reset its count
/// (that would retry forever); the memory stays bounded by forgetting
/// everything past [`MAX_PUNCH_RETRY_PEERS`] peers.
#[derive(Debug, Default)]
pub(crate) struct PunchRetries {
    attempts: HashMap<PeerId, u32>,
    due: BTreeMap<PeerId, Instant>,
}

impl PunchRetries {
    /// Hole punching with `peer` failed at `now`: schedule another try,
    /// unless it has had its share.
    pub(crate) fn failed(&mut self, peer: PeerId, now: Instant) -> bool {
        if self.attempts.len() >= MAX_PUNCH_RETRY_PEERS && !self.attempts.contains_key(&peer) {
            self.attempts.clear();
            self.due.clear();
        }
        let n = self.attempts.entry(peer).or_insert(0);
        *n += 1;
        if *n > HOLE_PUNCH_RETRIES {
            return false;
        }
        self.due.insert(peer, now + HOLE_PUNCH_RETRY_AFTER);
        true
    }

    /// It worked, or the peer is gone: forget it.
    pub(crate) fn settled(&mut self, peer: &PeerId) {
        self.attempts.remove(peer);
        self.due.remove(peer);
    }

    /// Peers whose retry is due.
    pub(crate) fn take_due(&mut self, now: Instant) -> Vec<PeerId> {
        let due: Vec<PeerId> = self
            .due
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(p, _)| *p)
            .collect();
        for p in &due {
            self.due.remove(p);
        }
        due
    }
}

/// Open connections per peer, by kind.
#[derive(Debug, Default)]
pub(crate) struct ConnectionKinds {
    direct: HashMap<PeerId, BTreeSet<ConnectionId>>,
    relayed: HashMap<PeerId, BTreeSet<ConnectionId>>,
}

impl ConnectionKinds {
    pub(crate) fn opened(&mut self, peer: PeerId, id: ConnectionId, relayed: bool) {
        let map = if relayed {
            &mut self.relayed
        } else {
            &mut self.direct
        };
        map.entry(peer).or_default().insert(id);
    }

    pub(crate) fn closed(&mut self, peer: PeerId, id: ConnectionId) {
        for map in [&mut self.direct, &mut self.relayed] {
            if let Some(set) = map.get_mut(&peer) {
                set.remove(&id);
                if set.is_empty() {
                    map.remove(&peer);
                }
            }
        }
    }

    /// Relayed connections open to `peer`.
    pub(crate) fn relayed(&self, peer: &PeerId) -> Vec<ConnectionId> {
        self.relayed
            .get(peer)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Relayed connections to `peer` made redundant by a direct one.
    pub(crate) fn redundant_relayed(&self, peer: &PeerId) -> Vec<ConnectionId> {
        if !self.direct.contains_key(peer) {
            return Vec::new();
        }
        self.relayed
            .get(peer)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }

    pub(crate) fn kind(&self, peer: &PeerId) -> Option<ConnectionKind> {
        if self.direct.contains_key(peer) {
            Some(ConnectionKind::Direct)
        } else if self.relayed.contains_key(peer) {
            Some(ConnectionKind::Relayed)
        } else {
            None
        }
    }
}

impl Task {
    /// A peer identified itself: note whether it offers to relay.
    pub(super) fn note_relay_candidate(&mut self, peer: PeerId, info: &libp2p::identify::Info) {
        let offers = info.protocols.iter().any(|p| p.as_ref() == HOP_PROTOCOL);
        let addr = if offers {
            relay_address(&info.listen_addrs)
        } else {
            None
        };
        self.reachability.relay_candidate(peer, addr);
    }

    /// A node its operator declares public (`RelayServer::Always`, i.e.
    /// `--kad-server`) takes its public listen addresses as confirmed
    /// external ones: a relay hands its addresses to the peers it reserves
    /// for, and AutoNAT may find no peer to confirm them in a network made
    /// of peers behind NAT.
    pub(super) fn declare_public_address(&mut self, address: Multiaddr) {
        if self.relay_server == RelayServer::Always && is_public(&address) && !is_relayed(&address)
        {
            self.swarm.add_external_address(address);
        }
    }

    /// An AutoNAT v2 probe finished.
    pub(super) fn on_probe(&mut self, reachable: bool) {
        let before = self.reachability.state();
        self.reachability.probed(reachable);
        self.reachability_changed(before);
    }

    /// The swarm confirmed or expired one of our external addresses.
    pub(super) fn on_external_address(&mut self, addr: &Multiaddr, confirmed: bool) {
        let before = self.reachability.state();
        self.reachability.external_address(addr, confirmed);
        self.reachability_changed(before);
    }

    fn reachability_changed(&mut self, before: ReachabilityState) {
        let now = self.reachability.state();
        if now == before {
            return;
        }
        tracing::info!(reachability = ?now, "reachability changed");
        if self.relay_server == RelayServer::WhenReachable {
            let status = if now == ReachabilityState::Public {
                relay::Status::Enable
            } else {
                relay::Status::Disable
            };
            self.swarm
                .behaviour_mut()
                .relay_server
                .set_status(Some(status));
        }
        self.maintain_relays();
    }

    /// Re-reads the listen addresses (they change as interfaces come and
    /// go), then reserves or releases relays. Runs on the housekeeping tick.
    pub(super) fn check_reachability(&mut self) {
        let any_public = self
            .swarm
            .listeners()
            .any(|a| is_public(a) && !is_relayed(a));
        let before = self.reachability.state();
        self.reachability
            .listen_addresses(any_public, Instant::now());
        if self.reachability.state() == before {
            self.maintain_relays();
        } else {
            self.reachability_changed(before);
        }
    }

    /// Tries hole punching again with peers still reached only through a
    /// relay: DCUtR runs once per relayed connection, so the relayed
    /// connections are closed and the peer dialled again (through its
    /// relay), which starts a new attempt.
    fn retry_hole_punching(&mut self) {
        for peer in self.punch_retries.take_due(Instant::now()) {
            if self.connection_kinds.kind(&peer) != Some(ConnectionKind::Relayed) {
                self.punch_retries.settled(&peer);
                continue;
            }
            tracing::debug!(%peer, "trying hole punching again");
            for id in self.connection_kinds.relayed(&peer) {
                self.swarm.close_connection(id);
            }
            let _ = self.swarm.dial(peer);
        }
    }

    /// Reserves relays while private, releases them once public. Runs on
    /// every change and on the housekeeping tick (for retries).
    pub(super) fn maintain_relays(&mut self) {
        self.retry_hole_punching();
        for listener in self.reachability.relays_to_release() {
            self.swarm.remove_listener(listener);
        }
        if !self.relay_client {
            return;
        }
        let now = Instant::now();
        for (relay, addr) in self.reachability.relays_to_reserve(now) {
            let circuit = addr
                .with_p2p(relay)
                .unwrap_or_else(|a| a)
                .with(Protocol::P2pCircuit);
            match self.swarm.listen_on(circuit.clone()) {
                Ok(listener) => {
                    tracing::debug!(%relay, address = %circuit, "asking a relay for a reservation");
                    self.reachability.listening(relay, listener);
                }
                Err(error) => {
                    tracing::debug!(%relay, %error, "cannot listen through the relay");
                    self.reachability.failed(relay, now);
                }
            }
        }
    }

    pub(super) fn on_relay_client_event(&mut self, event: relay::client::Event) {
        match event {
            relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                renewal,
                ..
            } => {
                self.reachability.accepted(relay_peer_id, Instant::now());
                if !renewal {
                    tracing::info!(relay = %relay_peer_id, after = ?self.reachability.first_reservation(),
                        "reachable through a relay");
                    // Findable now (Kademlia serves our relayed address):
                    // look for peers at once rather than at the next,
                    // possibly minutes-away, periodic bootstrap, so peers
                    // behind NAT meet (through relays, then directly).
                    self.sparse_bootstrap_every = self.bootstrap_interval;
                    self.bootstrap();
                }
            }
            other => tracing::debug!(event = ?other, "relay client"),
        }
    }

    pub(super) fn on_dcutr_event(&mut self, event: dcutr::Event) {
        match event.result {
            Ok(_) => {
                self.hole_punches.succeeded += 1;
                self.punch_retries.settled(&event.remote_peer_id);
                tracing::info!(peer = %event.remote_peer_id, "hole punched: direct connection");
                self.close_redundant_relayed(event.remote_peer_id);
            }
            Err(error) => {
                self.hole_punches.failed += 1;
                let again = self
                    .punch_retries
                    .failed(event.remote_peer_id, Instant::now());
                tracing::debug!(peer = %event.remote_peer_id, %error, again, "hole punching failed; staying relayed");
            }
        }
    }

    /// Closes relayed connections to `peer` once a direct one is open:
    /// request-response spreads requests over every connection to a peer,
    /// so a leftover circuit would carry half the blob traffic through the
    /// relay, within its byte limit.
    pub(super) fn close_redundant_relayed(&mut self, peer: PeerId) {
        for id in self.connection_kinds.redundant_relayed(&peer) {
            self.swarm.close_connection(id);
        }
    }

    pub(super) fn on_relay_listener_closed(&mut self, listener: ListenerId) {
        if let Some(relay) = self.reachability.listener_closed(listener, Instant::now()) {
            tracing::info!(%relay, "relay reservation ended; trying another");
            self.maintain_relays();
        }
    }

    /// Connected peers and how each is reached.
    pub(super) fn peer_connections(&self) -> Vec<PeerConnection> {
        self.swarm
            .connected_peers()
            .map(|p| PeerConnection {
                peer: p.to_string(),
                kind: self
                    .connection_kinds
                    .kind(p)
                    .unwrap_or(ConnectionKind::Direct),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay_addr(i: u8) -> Multiaddr {
        format!("/ip4/198.18.0.{i}/tcp/4001").parse().unwrap()
    }

    fn listener() -> ListenerId {
        ListenerId::next()
    }

    #[test]
    fn reachability_follows_the_evidence() {
        let t0 = Instant::now();
        let mut r = Reachability::new(t0);
        assert_eq!(r.state(), ReachabilityState::Unknown);
        r.probed(false);
        assert_eq!(r.state(), ReachabilityState::Private);
        // A relayed address confirmed says nothing about direct reach.
        let circuit: Multiaddr = "/ip4/198.18.0.2/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit"
            .parse()
            .unwrap();
        r.external_address(&circuit, true);
        assert_eq!(r.state(), ReachabilityState::Private);
        let direct = relay_addr(100);
        r.external_address(&direct, true);
        assert_eq!(r.state(), ReachabilityState::Public);
        r.external_address(&direct, false);
        assert_eq!(r.state(), ReachabilityState::Private);
        r.probed(true);
        assert_eq!(r.state(), ReachabilityState::Unknown);
    }

    #[test]
    fn only_private_addresses_make_a_node_private_after_a_while() {
        let t0 = Instant::now();
        let mut r = Reachability::new(t0);
        r.listen_addresses(false, t0 + Duration::from_secs(1));
        assert_eq!(r.state(), ReachabilityState::Unknown, "too early");
        r.listen_addresses(false, t0 + PRIVATE_AFTER);
        assert_eq!(r.state(), ReachabilityState::Private);
        // A port mapping confirmed later wins.
        r.external_address(&relay_addr(100), true);
        assert_eq!(r.state(), ReachabilityState::Public);
        // A public listen address leaves it to AutoNAT.
        let mut r = Reachability::new(t0);
        r.listen_addresses(true, t0 + PRIVATE_AFTER);
        assert_eq!(r.state(), ReachabilityState::Unknown);
    }

    #[test]
    fn a_private_node_reserves_up_to_the_limit_and_replaces_a_lost_relay() {
        let t0 = Instant::now();
        let mut r = Reachability::new(t0);
        let peers: Vec<PeerId> = (0..3).map(|_| PeerId::random()).collect();
        for (i, p) in peers.iter().enumerate() {
            r.relay_candidate(*p, Some(relay_addr(2 + i as u8)));
        }
        // Not private yet: nothing to do.
        assert!(r.relays_to_reserve(t0).is_empty());
        r.probed(false);
        let first = r.relays_to_reserve(t0);
        assert_eq!(first.len(), MAX_RELAYS);
        let mut listeners = HashMap::new();
        for (p, _) in &first {
            let l = listener();
            listeners.insert(*p, l);
            r.listening(*p, l);
        }
        assert!(r.relays_to_reserve(t0).is_empty(), "slots are full");
        r.accepted(first[0].0, t0 + Duration::from_secs(3));
        assert_eq!(r.reserved(), vec![first[0].0]);
        assert_eq!(r.first_reservation(), Some(Duration::from_secs(3)));

        // The first relay goes away: the third candidate takes its slot,
        // and the lost one is not asked again before its retry time.
        let lost = first[0].0;
        assert_eq!(r.listener_closed(listeners[&lost], t0), Some(lost));
        let next = r.relays_to_reserve(t0);
        assert_eq!(next.len(), 1);
        assert!(next[0].0 != lost && !first.iter().any(|(p, _)| *p == next[0].0));
        r.listening(next[0].0, listener());
        r.relay_candidate(next[0].0, None);
        assert!(r.relays_to_reserve(t0 + RESERVATION_RETRY).len() <= 1);
        let unknown = listener();
        assert_eq!(r.listener_closed(unknown, t0), None);
    }

    #[test]
    fn a_relay_that_failed_is_retried_only_after_the_wait() {
        let t0 = Instant::now();
        let mut r = Reachability::new(t0);
        let relay = PeerId::random();
        r.relay_candidate(relay, Some(relay_addr(2)));
        r.probed(false);
        assert_eq!(r.relays_to_reserve(t0).len(), 1);
        r.failed(relay, t0);
        assert!(r.relays_to_reserve(t0 + Duration::from_secs(1)).is_empty());
        assert_eq!(
            r.relays_to_reserve(t0 + RESERVATION_RETRY + Duration::from_secs(1))
                .len(),
            1
        );
    }

    #[test]
    fn going_public_releases_every_relay() {
        let t0 = Instant::now();
        let mut r = Reachability::new(t0);
        let relay = PeerId::random();
        r.relay_candidate(relay, Some(relay_addr(2)));
        r.probed(false);
        let l = listener();
        r.listening(relay, l);
        assert!(r.relays_to_release().is_empty());
        r.external_address(&relay_addr(100), true);
        assert_eq!(r.relays_to_release(), vec![l]);
        assert!(r.relays_to_reserve(t0).is_empty());
    }

    #[test]
    fn only_public_direct_addresses_make_a_relay() {
        let private: Multiaddr = "/ip4/10.1.0.2/tcp/4001".parse().unwrap();
        let circuit: Multiaddr = "/ip4/198.18.0.2/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit"
            .parse()
            .unwrap();
        assert_eq!(relay_address(&[private.clone(), circuit.clone()]), None);
        assert_eq!(
            relay_address(&[private, circuit, relay_addr(7)]),
            Some(relay_addr(7))
        );
    }

    #[test]
    fn failed_hole_punching_is_retried_a_few_times_after_a_wait() {
        let t0 = Instant::now();
        let mut r = PunchRetries::default();
        let peer = PeerId::random();
        for attempt in 1..=HOLE_PUNCH_RETRIES {
            assert!(r.failed(peer, t0), "attempt {attempt} is retried");
            assert!(r.take_due(t0).is_empty(), "not before the wait");
            assert_eq!(r.take_due(t0 + HOLE_PUNCH_RETRY_AFTER), vec![peer]);
        }
        assert!(!r.failed(peer, t0), "then it gives up");
        assert!(r.take_due(t0 + HOLE_PUNCH_RETRY_AFTER).is_empty());
        r.settled(&peer);
        assert!(r.failed(peer, t0), "a new connection starts over");
    }

    #[test]
    fn a_direct_connection_makes_the_relayed_ones_redundant() {
        let mut k = ConnectionKinds::default();
        let peer = PeerId::random();
        let (relayed, direct) = (
            ConnectionId::new_unchecked(1),
            ConnectionId::new_unchecked(2),
        );
        k.opened(peer, relayed, true);
        assert_eq!(k.kind(&peer), Some(ConnectionKind::Relayed));
        assert!(k.redundant_relayed(&peer).is_empty());
        k.opened(peer, direct, false);
        assert_eq!(k.kind(&peer), Some(ConnectionKind::Direct));
        assert_eq!(k.redundant_relayed(&peer), vec![relayed]);
        k.closed(peer, relayed);
        k.closed(peer, direct);
        assert_eq!(k.kind(&peer), None);
    }
}
