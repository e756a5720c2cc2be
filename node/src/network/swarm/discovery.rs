//! Discovery: how a node finds peers and keeps finding them. Joining
//! (bootstrap list, remembered peers, rejoining when alone), Kademlia's
//! bootstrap and query events, and the peers file. The timings here were
//! each tuned against a measured failure of a forming or idle network (see
//! the comments on each); they are kept apart from gossip and sync because
//! they change for different reasons.

use std::time::Duration;

use tokio::time::Instant;

use libp2p::{Multiaddr, PeerId, kad};

use super::Task;
use super::reachability::ReachabilityState;
use crate::error_report::Chain;
use crate::network::{SETTLED_BOOTSTRAP_INTERVAL, SETTLED_ROUTING_TABLE, peers_file};

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
pub(super) const REJOIN_MIN: Duration = Duration::from_secs(1);
const REJOIN_MAX: Duration = Duration::from_secs(30);

/// Longest sparse-table bootstrap period of a node behind NAT. Others can
/// find it only through the DHT and it can find them only by looking, so
/// it keeps looking every half minute rather than backing off to minutes:
/// peers behind NAT that joined a moment apart otherwise missed each other
/// for good (each looked before the other was in the DHT).
const PRIVATE_SPARSE_BOOTSTRAP_MAX: Duration = Duration::from_secs(30);

/// `base` scaled by a random factor in [0.5, 1.5).
fn jittered(base: Duration) -> Duration {
    base.mul_f64(0.5 + rand::random::<f64>())
}

/// Splits `/…/p2p/<id>` into the id and the address before it.
pub(super) fn split_p2p(addr: &Multiaddr) -> (Option<PeerId>, Multiaddr) {
    let mut base = addr.clone();
    match base.pop() {
        Some(libp2p::multiaddr::Protocol::P2p(peer)) => (Some(peer), base),
        _ => (None, addr.clone()),
    }
}

impl Task {
    /// Dials the bootstrap list and the peers remembered from the last run;
    /// returns how many dials it started.
    pub(super) fn join(&mut self) -> usize {
        let mut dials = 0;
        for addr in self.bootstrap_addrs.clone() {
            let (peer, base) = split_p2p(&addr);
            if let Some(peer) = peer {
                self.bootstrap_peers.insert(peer);
                self.swarm.behaviour_mut().kad.add_address(&peer, base);
            }
            match self.swarm.dial(addr.clone()) {
                Ok(()) => dials += 1,
                Err(e) => {
                    tracing::warn!(address = %addr, error = %Chain(&e), "cannot dial bootstrap peer")
                }
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
                Err(e) => tracing::debug!(%peer, error = %Chain(&e), "cannot dial remembered peer"),
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
    pub(super) fn rejoin_if_alone(&mut self) {
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

    /// Kademlia's periodic bootstrap, driven here (see `behaviour`).
    ///
    /// A sparse routing table is re-bootstrapped often so a fresh network
    /// converges in seconds. But a table that stays sparse because the
    /// whole network is small (ten volunteers on a LAN) is not unsettled:
    /// each bootstrap that found no new peer doubles the period, up to the
    /// settled one. Otherwise every peer of an 11-peer network queries all
    /// the others every 5 s forever, which was most of an idle agent's CPU.
    /// Any new peer (here or via identify) resets the period.
    pub(super) fn routing_table_size(&mut self) -> usize {
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
    pub(super) fn learn_address(&mut self, peer: PeerId, addr: Multiaddr) {
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

    pub(super) fn periodic_bootstrap(&mut self) {
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
            let longest = if self.reachability.state() == ReachabilityState::Private {
                PRIVATE_SPARSE_BOOTSTRAP_MAX
            } else {
                SETTLED_BOOTSTRAP_INTERVAL
            };
            self.sparse_bootstrap_every = if table == self.table_at_bootstrap {
                (self.sparse_bootstrap_every * 2).min(longest)
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

    pub(super) fn bootstrap(&mut self) {
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

    pub(super) fn on_kad_event(&mut self, event: kad::Event) {
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
                        tracing::debug!(error = %Chain(&e), "provider record not replicated yet");
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

    pub(super) fn save_peers(&mut self) {
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

/// Which of the addresses a peer says it listens on go into the routing
/// table (and so to every peer that looks it up).
///
/// A dial tries all of a peer's addresses at once and stops at the first
/// connection, even one to the wrong peer: a remote peer's loopback
/// address reaches the dialler itself, and a private address behind
/// another home router may reach another device on the dialler's own LAN
/// (many homes use 192.168.1.0/24). Either aborted dials that the peer's
/// relayed address would have completed. So loopback addresses are kept
/// only when this node itself listens on loopback alone (tests, one
/// machine), and a peer that advertises a relayed address, being behind
/// NAT, is reached at its public and relayed addresses only (on its own
/// LAN mDNS finds it).
pub(super) fn addresses_to_learn(addrs: Vec<Multiaddr>, loopback_only: bool) -> Vec<Multiaddr> {
    if loopback_only {
        return addrs;
    }
    let behind_nat = addrs.iter().any(super::reachability::is_relayed);
    addrs
        .into_iter()
        .filter(|a| !is_loopback(a))
        .filter(|a| !behind_nat || super::reachability::is_relayed(a) || is_public(a))
        .collect()
}

/// Whether `addr` is an IP address reachable from the public internet (not
/// loopback, private, shared or link-local).
pub(super) fn is_public(addr: &Multiaddr) -> bool {
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
pub(super) fn is_loopback(addr: &Multiaddr) -> bool {
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
pub(super) fn connection_refused(error: &libp2p::TransportError<std::io::Error>) -> bool {
    match error {
        libp2p::TransportError::Other(io) => format!("{io:?}").contains("ConnectionRefused"),
        libp2p::TransportError::MultiaddrNotSupported(_) => false,
    }
}

#[cfg(test)]
mod address_scope_tests {
    use super::*;

    #[test]
    fn a_peer_behind_nat_is_learnt_at_its_public_and_relayed_addresses_only() {
        let parse = |s: &str| s.parse::<Multiaddr>().expect("multiaddr");
        let loopback = parse("/ip4/127.0.0.1/tcp/4001");
        let private = parse("/ip4/10.2.0.2/tcp/4001");
        let public = parse("/ip4/198.18.0.7/tcp/4001");
        let relayed = parse(
            "/ip4/198.18.0.2/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit",
        );
        let all = vec![
            loopback.clone(),
            private.clone(),
            public.clone(),
            relayed.clone(),
        ];
        assert_eq!(
            addresses_to_learn(all.clone(), false),
            vec![public.clone(), relayed]
        );
        // Not behind NAT: its LAN address may be how a LAN peer reaches it.
        assert_eq!(
            addresses_to_learn(
                vec![loopback.clone(), private.clone(), public.clone()],
                false
            ),
            vec![private, public]
        );
        // A node on loopback alone (tests) keeps everything.
        assert_eq!(addresses_to_learn(all.clone(), true), all);
    }

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
