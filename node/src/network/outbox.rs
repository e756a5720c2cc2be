//! Records waiting to be gossiped together: the sender's half of
//! [`GossipBundle`].
//!
//! Nagle's rule, per topic: a record published when the topic has sent
//! nothing for a whole window goes out at once, alone, so a quiet node adds
//! no latency; records published within the window of the last send wait
//! until that window closes and go out as one bundle. A busy topic thus
//! sends at most one message per window whatever its record rate, and no
//! record waits longer than one window. A bundle that would outgrow
//! [`MAX_GOSSIP_BYTES`] is sent early.
//!
//! A claim still waiting when its worker's commit for the same unit joins
//! it is left out of the bundle (see `Gossip::supersedes_claim`): with
//! short units claim and commit are made within a window of each other,
//! and the commit alone says all the claim would. It is still signed with
//! the batch and kept in the store, so sync serves it like any record.
//!
//! Pure bookkeeping: the swarm task hands it the current time and sends
//! what it returns.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::error_report::Chain;
use formic_protocol::messages::{
    Gossip, GossipBundle, MAX_BUNDLE_RECORDS, MAX_GOSSIP_BYTES, ProjectId, UnitRef,
};
use formic_protocol::signed::{MAX_BATCH_PROOF_BYTES, SignerKey};
use libp2p::gossipsub::TopicHash;
use libp2p::identity::Keypair;

/// Records larger than this keep their own signature: a batch proof would
/// push the largest (spot-check keys) over the gossip size limit, and they
/// are rare.
const MAX_BATCH_SIGNED_BYTES: usize = 4 * 1024;

/// A record waiting for its bundle.
#[derive(Debug)]
struct Held {
    record: Gossip,
    bytes: Vec<u8>,
    /// For a claim: whose and of which unit, to find it when its commit
    /// comes.
    claim: Option<(SignerKey, UnitRef)>,
    /// Superseded by its worker's commit: signed and stored, not sent.
    silent: bool,
}

#[derive(Debug)]
struct Pending {
    project: ProjectId,
    records: Vec<Held>,
    bytes: usize,
    /// When this topic last sent a message.
    last_sent: Option<Instant>,
}

/// One gossip message to send, and the records in it that were signed
/// again as a batch: (bytes handed in, bytes sent), so the record store can
/// keep the form its peers have.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub project: ProjectId,
    pub message: Vec<u8>,
    pub resigned: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Records per topic waiting for their bundle.
pub(crate) struct Outbox {
    window: Duration,
    /// This node's key: its own records in a bundle are signed again as one
    /// batch, so each receiver checks one signature per bundle.
    keypair: Option<(Keypair, SignerKey)>,
    topics: HashMap<TopicHash, Pending>,
}

/// What the swarm task does with a record handed to [`Outbox::push`].
#[derive(Debug)]
pub(crate) struct Ready {
    /// Messages to publish now, in order (each a record or a bundle).
    pub send: Vec<Outgoing>,
    /// Whether the record itself waits for a later bundle.
    pub held: bool,
}

impl Outbox {
    /// An outbox that bundles what a topic publishes within `window` of its
    /// last message; a zero window sends every record alone at once.
    /// `keypair` signs this node's own records in a bundle as one batch.
    pub(crate) fn new(window: Duration, keypair: Option<Keypair>) -> Self {
        Self {
            window,
            keypair: keypair.and_then(|k| SignerKey::of(&k).ok().map(|me| (k, me))),
            topics: HashMap::new(),
        }
    }

    /// Takes one verified record of `project` for `topic`, as decoded and as
    /// its wire bytes.
    pub(crate) fn push(
        &mut self,
        topic: TopicHash,
        project: ProjectId,
        record: Gossip,
        bytes: Vec<u8>,
        now: Instant,
    ) -> Ready {
        let window = self.window;
        let p = self.topics.entry(topic).or_insert_with(|| Pending {
            project,
            records: Vec::new(),
            bytes: 0,
            last_sent: None,
        });
        // The same record twice in one batch would get two proofs, two
        // valid envelopes of one record.
        if p.records.iter().any(|h| h.bytes == bytes) {
            return Ready {
                send: Vec::new(),
                held: true,
            };
        }
        let quiet = p.last_sent.is_none_or(|t| now >= t + window);
        if p.records.is_empty() && quiet {
            p.last_sent = Some(now);
            return Ready {
                send: vec![Outgoing {
                    project,
                    message: bytes,
                    resigned: Vec::new(),
                }],
                held: false,
            };
        }
        let mut send = Vec::new();
        let size = bytes.len() + MAX_BATCH_PROOF_BYTES;
        let grown = p.bytes + size + GossipBundle::overhead(p.records.len() + 1);
        if !p.records.is_empty()
            && (grown > MAX_GOSSIP_BYTES || p.records.len() >= MAX_BUNDLE_RECORDS)
        {
            send.extend(take(p, self.keypair.as_ref(), now));
        }
        // After any early send: a claim is left out only when its commit
        // goes in the same bundle.
        if let Some(key) = record.supersedes_claim()
            && let Some(claim) = p
                .records
                .iter_mut()
                .find(|h| !h.silent && h.claim == Some(key))
        {
            claim.silent = true;
        }
        p.bytes += size;
        p.records.push(Held {
            claim: record.claimed(),
            record,
            bytes,
            silent: false,
        });
        Ready { send, held: true }
    }

    /// When the earliest waiting bundle is due, if any waits.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.topics
            .values()
            .filter(|p| !p.records.is_empty())
            .filter_map(|p| p.last_sent.map(|t| t + self.window))
            .min()
    }

    /// The messages due by `now`, by topic; forgets topics quiet for a whole
    /// window, so the map holds only topics in use.
    pub(crate) fn take_due(&mut self, now: Instant) -> Vec<(TopicHash, Outgoing)> {
        let window = self.window;
        let mut out = Vec::new();
        for (topic, p) in &mut self.topics {
            if !p.records.is_empty() && p.last_sent.is_none_or(|t| now >= t + window) {
                out.extend(
                    take(p, self.keypair.as_ref(), now)
                        .into_iter()
                        .map(|m| (topic.clone(), m)),
                );
            }
        }
        self.topics
            .retain(|_, p| !p.records.is_empty() || p.last_sent.is_some_and(|t| now < t + window));
        out
    }

    /// Every message still held, due or not (at shutdown).
    pub(crate) fn take_all(&mut self, now: Instant) -> Vec<(TopicHash, Outgoing)> {
        self.take_due(now + self.window)
    }

    /// Records waiting, over all topics.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.topics.values().map(|p| p.records.len()).sum()
    }
}

/// Empties `p` into the messages that carry its records: a record alone as
/// it came, several as one bundle with this node's own records signed again
/// as one batch (superseded claims signed too, but not sent).
fn take(p: &mut Pending, keypair: Option<&(Keypair, SignerKey)>, now: Instant) -> Vec<Outgoing> {
    p.last_sent = Some(now);
    p.bytes = 0;
    let project = p.project;
    let mut records = std::mem::take(&mut p.records);
    let alone = |bytes: Vec<u8>| Outgoing {
        project,
        message: bytes,
        resigned: Vec::new(),
    };
    if records.len() == 1 {
        return records.into_iter().map(|h| alone(h.bytes)).collect();
    }
    let resigned = match keypair {
        Some((key, me)) => batch_sign(&mut records, key, me),
        None => Vec::new(),
    };
    let mut sent: Vec<Vec<u8>> = records
        .into_iter()
        .filter(|h| !h.silent)
        .map(|h| h.bytes)
        .collect();
    // A silent claim always has its commit after it in the same bundle,
    // so something is left to send; were it one record, it goes alone
    // (never as an empty bundle, which receivers refuse).
    if sent.len() <= 1 {
        let mut out: Vec<Outgoing> = sent.drain(..).map(alone).collect();
        if let Some(first) = out.first_mut() {
            first.resigned = resigned;
        }
        return out;
    }
    let bundle = GossipBundle {
        bundle: sent
            .iter()
            .map(|b| serde_bytes::ByteBuf::from(b.clone()))
            .collect(),
    };
    match bundle.to_bytes() {
        Ok(message) => vec![Outgoing {
            project,
            message,
            resigned,
        }],
        // Sizes are checked on push, so this would be a bug; the records
        // still go out, one message each, as bundled (the store learns of
        // the new forms through the first).
        Err(e) => {
            tracing::warn!(error = %Chain(&e), "cannot encode a gossip bundle; sending its records alone");
            let mut out: Vec<Outgoing> = sent.into_iter().map(alone).collect();
            if let Some(first) = out.first_mut() {
                first.resigned = resigned;
            }
            out
        }
    }
}

/// Signs this node's own small records among `records` again as one batch,
/// replacing their bytes, and returns (old bytes, new bytes) of each; on
/// any failure they keep their own signatures.
fn batch_sign(records: &mut [Held], key: &Keypair, me: &SignerKey) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mine: Vec<usize> = (0..records.len())
        .filter(|&i| {
            records[i].record.signer() == *me && records[i].bytes.len() <= MAX_BATCH_SIGNED_BYTES
        })
        .collect();
    if mine.len() < 2 {
        return Vec::new();
    }
    let mut batch: Vec<Gossip> = mine.iter().map(|&i| records[i].record.clone()).collect();
    if let Err(e) = Gossip::sign_batch(key, &mut batch) {
        tracing::warn!(error = %Chain(&e), "cannot sign a batch; its records keep their own signatures");
        return Vec::new();
    }
    let encoded: Result<Vec<Vec<u8>>, _> = batch.iter().map(Gossip::to_bytes).collect();
    match encoded {
        Ok(encoded) => {
            let mut resigned = Vec::with_capacity(mine.len());
            for ((&i, g), b) in mine.iter().zip(batch).zip(encoded) {
                let held = &mut records[i];
                held.record = g;
                resigned.push((std::mem::replace(&mut held.bytes, b.clone()), b));
            }
            resigned
        }
        Err(e) => {
            tracing::warn!(error = %Chain(&e), "cannot encode a batch; its records keep their own signatures");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use formic_protocol::ContentId;
    use formic_protocol::messages::{Claim, Commit, Data, Reveal, UnitRef};
    use formic_protocol::signed::Signed;

    use super::*;

    const WINDOW: Duration = Duration::from_millis(10);

    fn topic(name: &str) -> TopicHash {
        TopicHash::from_raw(name)
    }

    fn project() -> ProjectId {
        ContentId::of(b"project")
    }

    /// A commit for unit `index`, signed by `key`, and its bytes.
    fn commit(key: &Keypair, index: u64) -> (Gossip, Vec<u8>) {
        let unit = UnitRef {
            project: project(),
            index,
        };
        let g = Gossip::Commit(
            Signed::sign(
                key,
                &Commit {
                    unit,
                    seal: ContentId::of(b"seal"),
                },
            )
            .expect("sign"),
        );
        let bytes = g.to_bytes().expect("encode");
        (g, bytes)
    }

    /// A claim of unit `index`, signed by `key`, and its bytes.
    fn claim(key: &Keypair, index: u64) -> (Gossip, Vec<u8>) {
        let claim = Claim {
            unit: UnitRef {
                project: project(),
                index,
            },
            slot: 0,
            lease_until_ms: 1,
        };
        let g = Gossip::Claim(Signed::sign(key, &claim).expect("sign"));
        let bytes = g.to_bytes().expect("encode");
        (g, bytes)
    }

    /// A reveal with an inline output of `size` bytes.
    fn reveal(key: &Keypair, index: u64, size: usize) -> (Gossip, Vec<u8>) {
        let output = vec![7u8; size];
        let g = Gossip::Reveal(
            Signed::sign(
                key,
                &Reveal {
                    unit: UnitRef {
                        project: project(),
                        index,
                    },
                    result_hash: ContentId::of(&output),
                    output: Data::Inline(output),
                    fuel_used: 1,
                    engine: "test".into(),
                    salt: [0; 32],
                },
            )
            .expect("sign"),
        );
        let bytes = g.to_bytes().expect("encode");
        (g, bytes)
    }

    fn push(out: &mut Outbox, t: &str, (g, b): (Gossip, Vec<u8>), now: Instant) -> Ready {
        out.push(topic(t), project(), g, b, now)
    }

    /// The records a message carries, decoded and each verified on its own.
    fn unbundle(message: &[u8]) -> Vec<Gossip> {
        let parts = if GossipBundle::is_bundle(message) {
            GossipBundle::from_bytes(message)
                .expect("bundle")
                .bundle
                .into_iter()
                .map(|b| b.into_vec())
                .collect()
        } else {
            vec![message.to_vec()]
        };
        parts
            .iter()
            .map(|b| {
                let g = Gossip::from_bytes(b).expect("record");
                g.verify().expect("each record verifies alone");
                g
            })
            .collect()
    }

    fn unit_of(g: &Gossip) -> u64 {
        match g {
            Gossip::Commit(c) => c.verify().expect("commit").unit.index,
            Gossip::Reveal(r) => r.verify().expect("reveal").unit.index,
            _ => u64::MAX,
        }
    }

    #[test]
    fn a_quiet_topic_sends_at_once_and_a_busy_one_bundles() {
        let key = Keypair::generate_ed25519();
        let mut out = Outbox::new(WINDOW, Some(key.clone()));
        let t0 = Instant::now();
        let first = push(&mut out, "a", commit(&key, 1), t0);
        assert!(!first.held);
        assert_eq!(first.send.len(), 1);
        assert!(first.send[0].resigned.is_empty());
        assert_eq!(out.next_due(), None);
        for i in 2..=4 {
            let r = push(
                &mut out,
                "a",
                commit(&key, i),
                t0 + Duration::from_millis(i),
            );
            assert!(r.held && r.send.is_empty());
        }
        // Another topic has its own window.
        assert!(!push(&mut out, "b", commit(&key, 9), t0).held);
        assert_eq!(out.next_due(), Some(t0 + WINDOW));
        assert!(
            out.take_due(t0 + WINDOW - Duration::from_millis(1))
                .is_empty()
        );
        let due = out.take_due(t0 + WINDOW);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].0, topic("a"));
        let records = unbundle(&due[0].1.message);
        assert_eq!(
            records.iter().map(unit_of).collect::<Vec<_>>(),
            vec![2, 3, 4]
        );
        // This node's own records went out signed as one batch, and the
        // store is told which bytes replace which.
        assert_eq!(due[0].1.resigned.len(), 3);
        for (g, (before, after)) in records.iter().zip(&due[0].1.resigned) {
            assert!(matches!(g, Gossip::Commit(c) if c.is_batch_signed()));
            assert_eq!(&g.to_bytes().expect("encode"), after);
            let old = Gossip::from_bytes(before).expect("old form");
            assert_eq!(unit_of(&old), unit_of(g));
        }
        assert_eq!(out.len(), 0);
        // Sent at t0 + WINDOW: the next record within a window waits again.
        let (g5, b5) = commit(&key, 5);
        assert!(push(&mut out, "a", (g5, b5.clone()), t0 + WINDOW).held);
        assert_eq!(out.next_due(), Some(t0 + 2 * WINDOW));
        // One record alone goes as itself, not as a bundle of one.
        let due = out.take_due(t0 + 2 * WINDOW);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].1.message, b5);
        // A whole quiet window later the topic is forgotten, and sends at once.
        assert!(out.take_due(t0 + 3 * WINDOW).is_empty());
        assert!(out.topics.is_empty());
        assert!(!push(&mut out, "a", commit(&key, 6), t0 + 3 * WINDOW).held);
    }

    #[test]
    fn records_of_others_travel_as_they_came() {
        let key = Keypair::generate_ed25519();
        let owner = Keypair::generate_ed25519();
        let mut out = Outbox::new(WINDOW, Some(key.clone()));
        let t0 = Instant::now();
        push(&mut out, "a", commit(&key, 0), t0);
        let (theirs, their_bytes) = commit(&owner, 1);
        push(&mut out, "a", (theirs, their_bytes.clone()), t0);
        push(&mut out, "a", commit(&key, 2), t0);
        push(&mut out, "a", commit(&key, 3), t0);
        let due = out.take_due(t0 + WINDOW);
        let records = unbundle(&due[0].1.message);
        assert_eq!(records.len(), 3);
        assert_eq!(records[0].to_bytes().expect("encode"), their_bytes);
        assert!(matches!(&records[1], Gossip::Commit(c) if c.is_batch_signed()));
        assert_eq!(due[0].1.resigned.len(), 2);
    }

    #[test]
    fn a_claim_whose_commit_joins_it_is_stored_not_sent() {
        let key = Keypair::generate_ed25519();
        let other = Keypair::generate_ed25519();
        let mut out = Outbox::new(WINDOW, Some(key.clone()));
        let t0 = Instant::now();
        push(&mut out, "a", commit(&key, 0), t0);
        let (c1, c1_bytes) = claim(&key, 1);
        push(&mut out, "a", (c1, c1_bytes.clone()), t0);
        push(&mut out, "a", claim(&key, 2), t0);
        // Another worker's commit for unit 1 supersedes nothing of ours.
        push(&mut out, "a", commit(&other, 1), t0);
        push(&mut out, "a", commit(&key, 1), t0);
        let due = out.take_due(t0 + WINDOW);
        let sent = unbundle(&due[0].1.message);
        let kinds: Vec<(&str, u64)> = sent
            .iter()
            .map(|g| match g {
                Gossip::Claim(c) => ("claim", c.verify().expect("claim").unit.index),
                other => ("commit", unit_of(other)),
            })
            .collect();
        assert_eq!(kinds, vec![("claim", 2), ("commit", 1), ("commit", 1)]);
        // The silent claim was still signed with the batch, for the store.
        let (before, after) = due[0]
            .1
            .resigned
            .iter()
            .find(|(b, _)| *b == c1_bytes)
            .expect("the silent claim is re-signed");
        assert_ne!(before, after);
        let stored = Gossip::from_bytes(after).expect("decode");
        assert!(matches!(&stored, Gossip::Claim(c) if c.is_batch_signed()));
        stored.verify().expect("verifies alone");
    }

    #[test]
    fn a_bundle_never_outgrows_a_gossip_message() {
        let key = Keypair::generate_ed25519();
        let mut out = Outbox::new(WINDOW, Some(key.clone()));
        let t0 = Instant::now();
        push(&mut out, "a", commit(&key, 0), t0);
        let n = 200;
        let mut sent = Vec::new();
        for i in 0..n {
            sent.extend(push(&mut out, "a", reveal(&key, i, 900), t0).send);
        }
        sent.extend(out.take_due(t0 + WINDOW).into_iter().map(|(_, m)| m));
        assert!(sent.len() >= 4, "200 KB of records need several messages");
        let mut records = 0;
        for m in &sent {
            assert!(
                m.message.len() <= MAX_GOSSIP_BYTES,
                "{} bytes",
                m.message.len()
            );
            records += unbundle(&m.message).len();
        }
        assert_eq!(records, n as usize);
    }

    #[test]
    fn a_zero_window_never_holds() {
        let key = Keypair::generate_ed25519();
        let mut out = Outbox::new(Duration::ZERO, Some(key.clone()));
        let t0 = Instant::now();
        for i in 0..5 {
            let (g, b) = commit(&key, i);
            let r = push(&mut out, "a", (g, b.clone()), t0);
            assert_eq!(r.send.len(), 1);
            assert_eq!(r.send[0].message, b);
        }
        assert_eq!(out.next_due(), None);
    }
}
