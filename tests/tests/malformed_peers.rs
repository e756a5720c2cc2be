//! A raw peer (a bare libp2p swarm built here, speaking our protocols with
//! no checks of its own) sends malformed, forged and oversized gossip and
//! request-response messages. The node rejects each, penalizes the peer
//! (gossip score, strikes, then a ban), never panics, and keeps serving an
//! honest peer.

// Test code: a failing unwrap or expect is a test failure with its message
// (clippy.toml allows them only inside #[test] functions and test modules).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io;
use std::time::Duration;

use formic_node::network::{NetworkEvent, Topic};
use formic_protocol::blob_transfer::BLOB_PROTOCOL;
use formic_protocol::messages::{Gossip, MAX_GOSSIP_BYTES};
use formic_protocol::sync::SYNC_PROTOCOL;
use formic_protocol::{Signed, messages::Commit};
use formic_tests::*;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::identity::Keypair;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{PeerId, StreamProtocol, Swarm, gossipsub, noise, tcp, yamux};

/// Sends and receives bytes as they are.
#[derive(Clone, Default)]
struct RawCodec;

impl request_response::Codec for RawCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        io.take(16 << 20).read_to_end(&mut buf).await?;
        Ok(buf)
    }
    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        p: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        self.read_request(p, io).await
    }
    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()> {
        io.write_all(&req).await?;
        io.close().await
    }
    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        p: &StreamProtocol,
        io: &mut T,
        r: Vec<u8>,
    ) -> io::Result<()> {
        self.write_request(p, io, r).await
    }
}

#[derive(NetworkBehaviour)]
struct Raw {
    gossipsub: gossipsub::Behaviour,
    rr: request_response::Behaviour<RawCodec>,
}

fn raw_swarm() -> anyhow::Result<Swarm<Raw>> {
    let swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_behaviour(|_key| {
            // Far above the node's cap, so the raw peer can send oversized messages.
            // Formic gossip is anonymous (records carry their own
            // signatures), so the raw peer's malformed records reach the
            // node's own checks rather than gossipsub's envelope check.
            let config = gossipsub::ConfigBuilder::default()
                .max_transmit_size(1 << 20)
                .validation_mode(gossipsub::ValidationMode::Anonymous)
                // Content-addressed ids, as the node uses: anonymous
                // messages have no author and sequence number to tell apart.
                .message_id_fn(|m: &gossipsub::Message| {
                    gossipsub::MessageId::new(blake3::hash(&m.data).as_bytes())
                })
                .build()?;
            let gossipsub =
                gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Anonymous, config)?;
            let rr = request_response::Behaviour::with_codec(
                RawCodec,
                [
                    (StreamProtocol::new(BLOB_PROTOCOL), ProtocolSupport::Full),
                    (StreamProtocol::new(SYNC_PROTOCOL), ProtocolSupport::Full),
                ],
                request_response::Config::default(),
            );
            Ok(Raw { gossipsub, rr })
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    Ok(swarm)
}

/// Drives the raw swarm until `pred` picks an event, for at most 10 s.
async fn drive<T>(
    swarm: &mut Swarm<Raw>,
    what: &str,
    mut pred: impl FnMut(&SwarmEvent<RawEvent>) -> Option<T>,
) -> anyhow::Result<T> {
    let wait = async {
        loop {
            let ev = swarm.select_next_some().await;
            if let Some(t) = pred(&ev) {
                return t;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .map_err(|_| anyhow::anyhow!("raw peer timed out waiting for {what}"))
}

/// Sends `bytes` as a request on `protocol`'s behaviour and waits for the answer.
async fn raw_request(
    swarm: &mut Swarm<Raw>,
    peer: PeerId,
    bytes: Vec<u8>,
) -> anyhow::Result<Option<Vec<u8>>> {
    let id = swarm.behaviour_mut().rr.send_request(&peer, bytes);
    drive(swarm, "a response", |ev| match ev {
        SwarmEvent::Behaviour(RawEvent::Rr(request_response::Event::Message {
            message:
                request_response::Message::Response {
                    request_id,
                    response,
                },
            ..
        })) if *request_id == id => Some(Some(response.clone())),
        SwarmEvent::Behaviour(RawEvent::Rr(request_response::Event::OutboundFailure {
            request_id,
            ..
        })) if *request_id == id => Some(None),
        _ => None,
    })
    .await
}

/// Waits for the node to report the raw peer with a reason containing `needle`.
async fn expect_misbehaviour(
    events: &mut tokio::sync::mpsc::Receiver<NetworkEvent>,
    raw: PeerId,
    needle: &str,
) -> anyhow::Result<String> {
    wait_event(events, Duration::from_secs(10), needle, |ev| match ev {
        NetworkEvent::PeerMisbehaved { peer, reason }
            if *peer == raw && reason.contains(needle) =>
        {
            Some(reason.clone())
        }
        _ => None,
    })
    .await
}

/// A raw peer connected to the node and subscribed to `topic`, once the
/// node's subscription is known to it (so publishing reaches the node).
async fn connect_raw(
    addrs: &[libp2p::Multiaddr],
    node: PeerId,
    topic: &gossipsub::IdentTopic,
) -> anyhow::Result<Swarm<Raw>> {
    let mut raw = raw_swarm()?;
    raw.behaviour_mut().gossipsub.subscribe(topic)?;
    for addr in addrs {
        raw.dial(addr.clone())?;
    }
    drive(&mut raw, "the node's subscription", |ev| match ev {
        SwarmEvent::Behaviour(RawEvent::Gossipsub(gossipsub::Event::Subscribed {
            peer_id,
            ..
        })) if *peer_id == node => Some(()),
        _ => None,
    })
    .await?;
    Ok(raw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_messages_are_rejected_and_penalized() -> anyhow::Result<()> {
    init_tracing();
    let dirs: Vec<_> = (0..2)
        .map(|_| tempfile::tempdir())
        .collect::<Result<_, _>>()?;
    let mut config = test_config(dirs[0].path(), vec![]);
    // The last raw peer earns four strikes: one bad gossip, three bad requests.
    config.network.limits.strikes_before_ban = 4;
    let mut node = formic_node::node::start(config).await?;
    let honest = start_node(dirs[1].path(), node.dial_addrs()).await?;
    let project = project("malformed");
    let topic = Topic::Project(project);
    node.client().subscribe(topic).await?;
    honest.client().subscribe(topic).await?;
    let Some(mut events) = node.take_events() else {
        anyhow::bail!("events taken")
    };

    // A graylisted peer's gossip is no longer even read (one invalid message
    // takes its score to -100, under the -80 graylist threshold), so each
    // kind of bad gossip comes from a fresh raw peer.
    let gs_topic = gossipsub::IdentTopic::new(topic.name());
    let key = Keypair::generate_ed25519();
    let Gossip::Commit(signed) = commit(&key, project, 1) else {
        unreachable!()
    };
    let (payload, signer, mut sig) = signed.into_parts();
    sig[0] ^= 1;
    let forged = Gossip::Commit(Signed::<Commit>::from_parts(payload, signer, sig)).to_bytes()?;
    let cases: [(&str, Vec<u8>, &str); 3] = [
        // Not a Formic message at all.
        ("garbage", b"not cbor at all".to_vec(), "malformed gossip"),
        // A well-formed record with a forged signature.
        ("forged", forged, "does not verify"),
        // Over MAX_GOSSIP_BYTES but within the transport cap: refused by size.
        ("oversized", vec![0x82; MAX_GOSSIP_BYTES + 100], "over the"),
    ];
    let node_id = node.peer_id();
    let mut raw = None;
    for (name, bytes, needle) in cases {
        let mut swarm = connect_raw(&node.dial_addrs(), node_id, &gs_topic).await?;
        let raw_id = *swarm.local_peer_id();
        swarm
            .behaviour_mut()
            .gossipsub
            .publish(gs_topic.clone(), bytes)?;
        let drive_out = async {
            loop {
                swarm.select_next_some().await;
            }
        };
        let reason = tokio::select! {
            r = expect_misbehaviour(&mut events, raw_id, needle) => r?,
            _ = drive_out => unreachable!(),
        };
        assert!(reason.contains(needle), "{name}: {reason}");
        let score = node.client().peer_score(raw_id).await?.unwrap_or(0.0);
        assert!(score < 0.0, "{name}: raw peer's gossip score is {score}");
        raw = Some(swarm);
    }
    let Some(mut raw) = raw else { unreachable!() };
    let raw_id = *raw.local_peer_id();

    // Far over the transport cap: dropped by gossipsub's codec before it
    // reaches validation; the node must simply survive it.
    raw.behaviour_mut()
        .gossipsub
        .publish(gs_topic.clone(), vec![0u8; 300 * 1024])?;

    // 5. Request-response: garbage, oversized, and a sync request of garbage.
    let answer = raw_request(&mut raw, node_id, vec![0xff; 10]).await?;
    let reason = expect_misbehaviour(&mut events, raw_id, "malformed blob request").await?;
    assert!(reason.contains("malformed blob request"), "{reason}");
    if let Some(bytes) = answer {
        let parsed = formic_protocol::blob_transfer::BlobResponse::from_bytes(&bytes)?;
        assert!(
            matches!(
                parsed,
                formic_protocol::blob_transfer::BlobResponse::Refused(_)
            ),
            "{parsed:?}"
        );
    }
    raw_request(&mut raw, node_id, vec![0x82; 100_000]).await?;
    let reason = expect_misbehaviour(&mut events, raw_id, "blob request: message is").await?;
    assert!(reason.contains("over the"), "{reason}");

    // The fourth strike: the node bans the raw peer.
    let _ = raw_request(&mut raw, node_id, vec![0x00]).await?;
    wait_event(
        &mut events,
        Duration::from_secs(10),
        "the ban",
        |ev| match ev {
            NetworkEvent::PeerBanned(p) if *p == raw_id => Some(()),
            _ => None,
        },
    )
    .await?;
    wait_until(
        Duration::from_secs(10),
        "the raw peer is disconnected",
        || {
            let client = node.client();
            async move {
                client
                    .connected_peers()
                    .await
                    .is_ok_and(|p| !p.contains(&raw_id))
            }
        },
    )
    .await?;

    // The node is alive and still takes honest gossip.
    let good = commit(&key, project, 2);
    honest.client().publish(topic, good.clone()).await?;
    wait_record(&mut events, Duration::from_secs(10), &good).await?;

    honest.shutdown().await?;
    node.shutdown().await?;
    Ok(())
}
