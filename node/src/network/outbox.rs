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
//! Pure bookkeeping: the swarm task hands it the current time and sends
//! what it returns.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use formic_protocol::messages::{GossipBundle, MAX_BUNDLE_RECORDS, MAX_GOSSIP_BYTES};
use libp2p::gossipsub::TopicHash;

#[derive(Debug, Default)]
struct Pending {
    records: Vec<Vec<u8>>,
    bytes: usize,
    /// When this topic last sent a message.
    last_sent: Option<Instant>,
}

/// Records per topic waiting for their bundle.
#[derive(Debug)]
pub(crate) struct Outbox {
    window: Duration,
    topics: HashMap<TopicHash, Pending>,
}

/// What the swarm task does with a record handed to [`Outbox::push`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Ready {
    /// Messages to publish now, in order (each a record or a bundle).
    pub send: Vec<Vec<u8>>,
    /// Whether the record itself waits for a later bundle.
    pub held: bool,
}

impl Outbox {
    /// An outbox that bundles what a topic publishes within `window` of its
    /// last message; a zero window sends every record alone at once.
    pub(crate) fn new(window: Duration) -> Self {
        Self {
            window,
            topics: HashMap::new(),
        }
    }

    /// Takes one record's wire bytes for `topic`.
    pub(crate) fn push(&mut self, topic: TopicHash, record: Vec<u8>, now: Instant) -> Ready {
        let window = self.window;
        let p = self.topics.entry(topic).or_default();
        let quiet = p.last_sent.is_none_or(|t| now >= t + window);
        if p.records.is_empty() && quiet {
            p.last_sent = Some(now);
            return Ready {
                send: vec![record],
                held: false,
            };
        }
        let mut send = Vec::new();
        let grown = p.bytes + record.len() + GossipBundle::overhead(p.records.len() + 1);
        if !p.records.is_empty()
            && (grown > MAX_GOSSIP_BYTES || p.records.len() >= MAX_BUNDLE_RECORDS)
        {
            send.extend(take(p, now));
        }
        p.bytes += record.len();
        p.records.push(record);
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
    pub(crate) fn take_due(&mut self, now: Instant) -> Vec<(TopicHash, Vec<u8>)> {
        let window = self.window;
        let mut out = Vec::new();
        for (topic, p) in &mut self.topics {
            if !p.records.is_empty() && p.last_sent.is_none_or(|t| now >= t + window) {
                out.extend(take(p, now).into_iter().map(|m| (topic.clone(), m)));
            }
        }
        self.topics
            .retain(|_, p| !p.records.is_empty() || p.last_sent.is_some_and(|t| now < t + window));
        out
    }

    /// Records waiting, over all topics.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.topics.values().map(|p| p.records.len()).sum()
    }
}

/// Empties `p` into the messages that carry its records: the record itself
/// when alone, else one bundle.
fn take(p: &mut Pending, now: Instant) -> Vec<Vec<u8>> {
    p.last_sent = Some(now);
    p.bytes = 0;
    let mut records = std::mem::take(&mut p.records);
    if records.len() == 1 {
        return records;
    }
    let bundle = GossipBundle {
        bundle: records.drain(..).map(serde_bytes::ByteBuf::from).collect(),
    };
    match bundle.to_bytes() {
        Ok(bytes) => vec![bytes],
        // Sizes are checked on push, so this would be a bug; the records
        // still go out, one message each.
        Err(e) => {
            tracing::warn!(error = %e, "cannot encode a gossip bundle; sending its records alone");
            bundle.bundle.into_iter().map(|b| b.into_vec()).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_millis(10);

    fn topic(name: &str) -> TopicHash {
        TopicHash::from_raw(name)
    }

    fn unbundle(message: &[u8]) -> Vec<Vec<u8>> {
        if GossipBundle::is_bundle(message) {
            GossipBundle::from_bytes(message)
                .expect("bundle")
                .bundle
                .into_iter()
                .map(|b| b.into_vec())
                .collect()
        } else {
            vec![message.to_vec()]
        }
    }

    #[test]
    fn a_quiet_topic_sends_at_once_and_a_busy_one_bundles() {
        let mut out = Outbox::new(WINDOW);
        let t0 = Instant::now();
        let first = out.push(topic("a"), vec![1], t0);
        assert_eq!(first.send, vec![vec![1]]);
        assert!(!first.held);
        assert_eq!(out.next_due(), None);
        for i in 2..=4u8 {
            let r = out.push(topic("a"), vec![i], t0 + Duration::from_millis(i as u64));
            assert!(r.held && r.send.is_empty());
        }
        // Another topic has its own window.
        assert_eq!(out.push(topic("b"), vec![9], t0).send, vec![vec![9]]);
        assert_eq!(out.next_due(), Some(t0 + WINDOW));
        assert!(
            out.take_due(t0 + WINDOW - Duration::from_millis(1))
                .is_empty()
        );
        let due = out.take_due(t0 + WINDOW);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].0, topic("a"));
        assert_eq!(unbundle(&due[0].1), vec![vec![2], vec![3], vec![4]]);
        assert_eq!(out.len(), 0);
        // Sent at t0 + WINDOW: the next record within a window waits again.
        assert!(out.push(topic("a"), vec![5], t0 + WINDOW).held);
        assert_eq!(out.next_due(), Some(t0 + 2 * WINDOW));
        // One record alone goes as itself, not as a bundle of one.
        assert_eq!(out.take_due(t0 + 2 * WINDOW), vec![(topic("a"), vec![5])]);
        // A whole quiet window later the topic is forgotten, and sends at once.
        assert!(out.take_due(t0 + 3 * WINDOW).is_empty());
        assert!(out.topics.is_empty());
        assert!(!out.push(topic("a"), vec![6], t0 + 3 * WINDOW).held);
    }

    #[test]
    fn a_bundle_never_outgrows_a_gossip_message() {
        let mut out = Outbox::new(WINDOW);
        let t0 = Instant::now();
        out.push(topic("a"), vec![0; 10], t0);
        let record = vec![7u8; 1000];
        let mut sent = Vec::new();
        let n = 200;
        for _ in 0..n {
            sent.extend(out.push(topic("a"), record.clone(), t0).send);
        }
        sent.extend(out.take_due(t0 + WINDOW).into_iter().map(|(_, m)| m));
        assert!(sent.len() >= 4, "200 KB of records need several messages");
        let mut records = 0;
        for m in &sent {
            assert!(m.len() <= MAX_GOSSIP_BYTES, "{} bytes", m.len());
            records += unbundle(m).len();
        }
        assert_eq!(records, n);
    }

    #[test]
    fn a_zero_window_never_holds() {
        let mut out = Outbox::new(Duration::ZERO);
        let t0 = Instant::now();
        for i in 0..5u8 {
            assert_eq!(out.push(topic("a"), vec![i], t0).send, vec![vec![i]]);
        }
        assert_eq!(out.next_due(), None);
    }
}
