//! The composed libp2p behaviour and the swarm built around it.
//!
//! Each sub-behaviour is configured here, in one place, with the reasons for
//! every non-default setting; the swarm task only drives it.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use formic_protocol::blob_transfer::BLOB_PROTOCOL;
use formic_protocol::messages::MAX_GOSSIP_BYTES;
use formic_protocol::sync::SYNC_PROTOCOL;
use libp2p::identity::Keypair;
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    StreamProtocol, Swarm, allow_block_list, autonat, connection_limits, dcutr, gossipsub,
    identify, kad, mdns, memory_connection_limits, noise, ping, relay, request_response, tcp, upnp,
    yamux,
};

use super::codec::{BlobCodec, SyncCodec};
use super::{
    GOSSIP_ENVELOPE_OVERHEAD, IDENTIFY_PROTOCOL, KAD_PROTOCOL, NetworkConfig, RelayServer,
    StartError,
};

/// How long an idle connection (no open stream) stays up. The libp2p default
/// of 10 s closes connections between blob chunk requests.
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

/// Request timeouts: a 1 MiB chunk over a slow volunteer uplink takes a few
/// seconds; a sync page up to 4 MiB a little more.
const BLOB_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const SYNC_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Concurrent inbound+outbound streams per connection and protocol.
const MAX_CONCURRENT_STREAMS: usize = 16;

/// Weight of an invalid message in a topic's score (P4). One forged or
/// malformed message (-100 × 1² × topic weight 1) sends a peer below the
/// graylist threshold (-80): its gossip is ignored until the penalty decays.
const INVALID_MESSAGE_WEIGHT: f64 = -100.0;

#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    pub(crate) limits: connection_limits::Behaviour,
    pub(crate) memory: memory_connection_limits::Behaviour,
    pub(crate) blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    pub(crate) identify: identify::Behaviour,
    /// AutoNAT v2: asks peers to dial our candidate addresses back; a
    /// confirmed one switches Kademlia from client to server mode.
    pub(crate) autonat_client: autonat::v2::client::Behaviour,
    /// Answers other peers' AutoNAT v2 probes.
    pub(crate) autonat_server: autonat::v2::server::Behaviour,
    pub(crate) ping: ping::Behaviour,
    /// Circuit relay v2 server: relays for peers behind NAT while this
    /// node is reachable (see [`relay_server_config`] for what it costs).
    /// Advertised only while the swarm task says so (`reachability.rs`).
    pub(crate) relay_server: relay::Behaviour,
    /// Circuit relay v2 client: listens through relays when this node is
    /// not reachable, and dials peers through theirs.
    pub(crate) relay_client: relay::client::Behaviour,
    /// Upgrades relayed connections to direct ones by hole punching.
    pub(crate) dcutr: dcutr::Behaviour,
    /// Asks the home router for a port mapping (UPnP IGD), so a volunteer
    /// behind a router that allows it becomes reachable.
    pub(crate) upnp: Toggle<upnp::tokio::Behaviour>,
    pub(crate) kad: kad::Behaviour<kad::store::MemoryStore>,
    pub(crate) gossipsub: gossipsub::Behaviour,
    pub(crate) mdns: Toggle<mdns::tokio::Behaviour>,
    pub(crate) blobs: request_response::Behaviour<BlobCodec>,
    pub(crate) sync: request_response::Behaviour<SyncCodec>,
}

/// Scoring parameters for one of our topics. Formic topics are quiet (a few
/// records per unit), so the mesh-delivery penalties (P3, P3b), which punish
/// peers for not forwarding enough messages, are off: they would punish
/// honest peers on a quiet topic.
pub(crate) fn topic_score_params() -> gossipsub::TopicScoreParams {
    gossipsub::TopicScoreParams {
        topic_weight: 1.0,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        invalid_message_deliveries_weight: INVALID_MESSAGE_WEIGHT,
        invalid_message_deliveries_decay: 0.9,
        ..Default::default()
    }
}

fn gossipsub() -> Result<gossipsub::Behaviour, StartError> {
    let config = gossipsub::ConfigBuilder::default()
        // Every peer uses the same explicit cap (the payload cap plus the
        // envelope), so no honest message is dropped by a stricter peer.
        .max_transmit_size(MAX_GOSSIP_BYTES + GOSSIP_ENVELOPE_OVERHEAD)
        // No gossipsub-level author, sequence number or signature: every
        // record carries its author's own signature, checked before it is
        // accepted or forwarded, so a second signature per message (signed
        // on publish, verified at every hop) only doubled the ed25519 work,
        // which dominated the protocol's CPU profile.
        .validation_mode(gossipsub::ValidationMode::Anonymous)
        // Manual validation: nothing is forwarded before the swarm task has
        // decoded it and checked its signature.
        .validate_messages()
        // Content-addressed ids: the same record published twice (by two
        // peers, or after a restart) is one message.
        .message_id_fn(|m: &gossipsub::Message| {
            gossipsub::MessageId::new(blake3::hash(&m.data).as_bytes())
        })
        .duplicate_cache_time(Duration::from_secs(120))
        // Bounded per-connection send queue: a slow peer loses messages
        // (recovered by sync) instead of growing our memory.
        .connection_handler_queue_len(1000)
        .build()
        .map_err(|e| StartError::Behaviour {
            part: "gossipsub config",
            source: e.into(),
        })?;
    let mut behaviour =
        gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Anonymous, config).map_err(
            |e| StartError::Behaviour {
                part: "gossipsub",
                source: e.into(),
            },
        )?;
    let params = gossipsub::PeerScoreParams {
        // Local test networks and demos run many peers on one address;
        // co-location still counts for every other address.
        ip_colocation_factor_whitelist: HashSet::from([
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ]),
        ..Default::default()
    };
    behaviour
        .with_peer_score(params, gossipsub::PeerScoreThresholds::default())
        .map_err(|e| StartError::Behaviour {
            part: "gossipsub scoring",
            source: e.into(),
        })?;
    Ok(behaviour)
}

fn kademlia(keypair: &Keypair, config: &NetworkConfig) -> kad::Behaviour<kad::store::MemoryStore> {
    let peer_id = keypair.public().to_peer_id();
    let mut cfg = kad::Config::new(StreamProtocol::new(KAD_PROTOCOL));
    // The swarm task bootstraps on its own schedule: often while the
    // routing table is sparse, rarely once it is full, because every
    // bootstrap query re-dials peers that pruning just disconnected.
    cfg.set_periodic_bootstrap_interval(None);
    cfg.set_query_timeout(Duration::from_secs(15));
    // Peers enter the routing table only through the swarm task, with the
    // listen addresses identify reports (`learn_address`): left to itself,
    // Kademlia inserts on every connection and, when the bucket is full,
    // dials an old peer to test it, which with pruning never settles.
    cfg.set_kbucket_inserts(kad::BucketInserts::Manual);
    // Provider records must outlive the short test runs and a volunteer's
    // reboot; libp2p republishes them itself.
    let store_cfg = kad::store::MemoryStoreConfig {
        max_records: 16 * 1024,
        // The default 1024 provided keys is far below a busy node's blobs.
        max_provided_keys: 100_000,
        ..Default::default()
    };
    let store = kad::store::MemoryStore::with_config(peer_id, store_cfg);
    let mut kad = kad::Behaviour::with_config(peer_id, store, cfg);
    if config.kad_server {
        kad.set_mode(Some(kad::Mode::Server));
    }
    kad
}

fn request_response_config(timeout: Duration) -> request_response::Config {
    request_response::Config::default()
        .with_request_timeout(timeout)
        .with_max_concurrent_streams(MAX_CONCURRENT_STREAMS)
}

/// What a relaying node gives peers behind NAT. A reservation is a slot a
/// private peer listens through; a circuit is one relayed connection.
/// Formic's traffic over a circuit is control messages, records and, when
/// hole punching fails, blobs: 64 MiB and 10 minutes per circuit carry a
/// typical app and its inputs, and a peer that needs more opens another.
/// Rate limits are libp2p's defaults (per peer and per IP).
pub(crate) fn relay_server_config() -> relay::Config {
    relay::Config {
        max_reservations: 128,
        max_reservations_per_peer: 4,
        reservation_duration: Duration::from_secs(60 * 60),
        max_circuits: 64,
        max_circuits_per_peer: 8,
        max_circuit_duration: Duration::from_secs(10 * 60),
        max_circuit_bytes: 64 << 20,
        ..relay::Config::default()
    }
}

fn behaviour(
    keypair: &Keypair,
    config: &NetworkConfig,
    relay_client: relay::client::Behaviour,
) -> Result<Behaviour, StartError> {
    let peer_id = keypair.public().to_peer_id();
    let l = &config.limits;
    let limits = connection_limits::ConnectionLimits::default()
        .with_max_established(Some(l.max_connections))
        .with_max_established_per_peer(Some(l.max_connections_per_peer))
        .with_max_pending_incoming(Some(l.max_pending))
        .with_max_pending_outgoing(Some(l.max_pending));
    let mdns = if config.mdns {
        Some(
            mdns::tokio::Behaviour::new(mdns::Config::default(), peer_id).map_err(|e| {
                StartError::Behaviour {
                    part: "mDNS",
                    source: e.into(),
                }
            })?,
        )
    } else {
        None
    };
    Ok(Behaviour {
        limits: connection_limits::Behaviour::new(limits),
        memory: memory_connection_limits::Behaviour::with_max_percentage(l.max_memory_fraction),
        blocked: allow_block_list::Behaviour::default(),
        identify: identify::Behaviour::new(
            identify::Config::new(IDENTIFY_PROTOCOL.to_owned(), keypair.public())
                .with_push_listen_addr_updates(true)
                .with_cache_size(256),
        ),
        autonat_client: autonat::v2::client::Behaviour::default(),
        autonat_server: autonat::v2::server::Behaviour::default(),
        ping: ping::Behaviour::default(),
        relay_server: {
            let mut server = relay::Behaviour::new(peer_id, relay_server_config());
            // Never libp2p's automatic choice: it also counts a relayed
            // address as "reachable", and a peer behind NAT must not offer
            // to relay for others.
            server.set_status(Some(match config.relay_server {
                RelayServer::Always => relay::Status::Enable,
                RelayServer::WhenReachable | RelayServer::Never => relay::Status::Disable,
            }));
            server
        },
        relay_client,
        dcutr: dcutr::Behaviour::new(peer_id),
        upnp: config.upnp.then(upnp::tokio::Behaviour::default).into(),
        kad: kademlia(keypair, config),
        gossipsub: gossipsub()?,
        mdns: mdns.into(),
        blobs: request_response::Behaviour::with_codec(
            BlobCodec::default(),
            [(
                StreamProtocol::new(BLOB_PROTOCOL),
                request_response::ProtocolSupport::Full,
            )],
            request_response_config(BLOB_REQUEST_TIMEOUT),
        ),
        sync: request_response::Behaviour::with_codec(
            SyncCodec::default(),
            [(
                StreamProtocol::new(SYNC_PROTOCOL),
                request_response::ProtocolSupport::Full,
            )],
            request_response_config(SYNC_REQUEST_TIMEOUT),
        ),
    })
}

/// Builds the swarm: TCP (noise, yamux) and QUIC, DNS, relayed
/// connections (noise, yamux over a relay circuit), our behaviour.
pub(crate) fn build_swarm(
    keypair: Keypair,
    config: &NetworkConfig,
) -> Result<Swarm<Behaviour>, StartError> {
    // The builder wants the behaviour from a closure whose error is boxed;
    // ours is kept here, typed, and returned instead.
    let mut failed: Option<StartError> = None;
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| StartError::Transport(e.into()))?
        .with_quic()
        .with_dns()
        .map_err(|e| StartError::Transport(e.into()))?
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| StartError::Transport(e.into()))?
        .with_behaviour(|key, relay_client| {
            behaviour(key, config, relay_client).map_err(|e| {
                failed = Some(e);
                Box::<dyn std::error::Error + Send + Sync>::from("the behaviour failed")
            })
        })
        .map_err(|e| {
            failed.take().unwrap_or(StartError::Behaviour {
                part: "swarm",
                source: e.into(),
            })
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT))
        .build();
    Ok(swarm)
}
