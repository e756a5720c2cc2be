//! Gossip: the way out (publish, the per-topic outbox, the queue that waits
//! for subscribers) and the way in (manual validation). Both sides share
//! the record store and the cache of verified batch signatures, which is
//! why they stay together.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use formic_protocol::messages::{Gossip, GossipBundle};
use futures::StreamExt;
use libp2p::PeerId;
use libp2p::gossipsub::{self, MessageAcceptance, TopicHash};

use super::Task;
use crate::error_report::Chain;
use crate::network::behaviour::topic_score_params;
use crate::network::client::{PublishError, PublishOutcome, SubscribeError};
use crate::network::{RecordVia, Topic};

/// How long a stopping node keeps its connections to let the gossip it still
/// held leave (only when it held some).
const SHUTDOWN_FLUSH: Duration = Duration::from_millis(200);

/// Queued publications older than this are dropped (they stay in the record
/// store, so pull-sync still delivers them).
const PUBLISH_QUEUE_TTL: Duration = Duration::from_secs(600);

pub(super) struct QueuedPublish {
    topic: TopicHash,
    bytes: Vec<u8>,
    queued_at: Instant,
}

impl Task {
    pub(super) fn subscribe(&mut self, topic: Topic) -> Result<(), SubscribeError> {
        let ident = topic.ident();
        let gs = &mut self.swarm.behaviour_mut().gossipsub;
        gs.subscribe(&ident).map_err(SubscribeError::Gossipsub)?;
        gs.set_topic_params(ident.clone(), topic_score_params())
            .map_err(SubscribeError::TopicParams)?;
        if let Topic::Project(project) = topic {
            self.project_topics.insert(ident.hash(), project);
            // Peers already in the topic hold what we missed.
            let hash = ident.hash();
            let peers: Vec<PeerId> = self
                .swarm
                .behaviour()
                .gossipsub
                .all_peers()
                .filter(|(_, topics)| topics.contains(&&hash))
                .map(|(p, _)| *p)
                .collect();
            for peer in peers {
                self.auto_sync(peer, project);
            }
        }
        tracing::info!(topic = %topic.name(), "subscribed");
        Ok(())
    }

    pub(super) fn publish(
        &mut self,
        topic: Topic,
        gossip: &Gossip,
    ) -> Result<PublishOutcome, PublishError> {
        let (_, project) = gossip.verify_in(&mut self.verified_roots)?;
        match topic {
            Topic::Project(p) if p != project => {
                return Err(PublishError::WrongTopic {
                    record: project,
                    topic: topic.name(),
                });
            }
            Topic::Announce if !matches!(gossip, Gossip::Announce(_)) => {
                return Err(PublishError::WrongTopic {
                    record: project,
                    topic: topic.name(),
                });
            }
            _ => {}
        }
        let bytes = gossip.to_bytes()?;
        // Stored at once, in the form signed alone: if it goes out signed
        // as one of a batch, that form takes its place when it is sent.
        self.records
            .insert_record(project, Some(gossip.record_id()), bytes.clone());
        let hash = topic.ident().hash();
        // Announcements go alone: they are rare, and a newcomer should hear
        // of a project at once.
        if matches!(topic, Topic::Announce) {
            return self.send_gossip(hash, bytes);
        }
        let ready = self
            .outbox
            .push(hash.clone(), project, gossip.clone(), bytes, Instant::now());
        let mut outcome = Ok(PublishOutcome::Bundled);
        for out in ready.send {
            // Only the last message can be this record alone; an earlier one
            // is a bundle sent early to make room.
            outcome = self.send_outgoing(hash.clone(), out);
        }
        if ready.held {
            Ok(PublishOutcome::Bundled)
        } else {
            outcome
        }
    }

    /// At shutdown: sends what the outbox still holds, then drives the
    /// swarm for at most [`SHUTDOWN_FLUSH`] so that the messages leave.
    /// Without it the records published in the last window before a stop
    /// would reach peers only by their next sync.
    pub(super) async fn flush_outbox(&mut self) {
        let held = self.outbox.take_all(Instant::now());
        // With nobody connected the sends only queue; waiting is pointless.
        if held.is_empty() || self.swarm.connected_peers().next().is_none() {
            return;
        }
        for (topic, out) in held {
            if let Err(e) = self.send_outgoing(topic, out) {
                tracing::debug!(error = %Chain(&e), "gossip bundle not sent at shutdown");
            }
        }
        let _ = tokio::time::timeout(SHUTDOWN_FLUSH, async {
            loop {
                let event = self.swarm.select_next_some().await;
                self.on_swarm_event(event);
            }
        })
        .await;
    }

    /// Sends the bundles whose window has closed.
    pub(super) fn send_due_bundles(&mut self) {
        for (topic, out) in self.outbox.take_due(Instant::now()) {
            if let Err(e) = self.send_outgoing(topic, out) {
                tracing::debug!(error = %Chain(&e), "gossip bundle not sent");
            }
        }
    }

    /// Stores the batch-signed forms of the records in `out`, then sends it.
    fn send_outgoing(
        &mut self,
        topic: TopicHash,
        out: crate::network::outbox::Outgoing,
    ) -> Result<PublishOutcome, PublishError> {
        for (old, new) in out.resigned {
            self.records.replace(&out.project, &old, new);
        }
        self.send_gossip(topic, out.message)
    }

    /// Hands one message (a record or a bundle) to gossipsub, or queues it
    /// while nobody listens.
    fn send_gossip(
        &mut self,
        hash: TopicHash,
        bytes: Vec<u8>,
    ) -> Result<PublishOutcome, PublishError> {
        match self
            .swarm
            .behaviour_mut()
            .gossipsub
            .publish(hash.clone(), bytes.clone())
        {
            Ok(_) => Ok(PublishOutcome::Sent),
            Err(gossipsub::PublishError::Duplicate) => Ok(PublishOutcome::Duplicate),
            Err(
                gossipsub::PublishError::NoPeersSubscribedToTopic
                | gossipsub::PublishError::AllQueuesFull(_),
            ) => {
                if self.publish_queue.len() >= self.limits.publish_queue {
                    return Err(PublishError::QueueFull(self.publish_queue.len()));
                }
                self.publish_queue.push_back(QueuedPublish {
                    topic: hash,
                    bytes,
                    queued_at: Instant::now(),
                });
                Ok(PublishOutcome::Queued)
            }
            Err(e) => Err(PublishError::Gossipsub(e)),
        }
    }

    /// Retries queued publications (on a tick, or when a peer subscribes).
    pub(super) fn retry_publish(&mut self) {
        let mut keep = VecDeque::with_capacity(self.publish_queue.len());
        while let Some(q) = self.publish_queue.pop_front() {
            if q.queued_at.elapsed() > PUBLISH_QUEUE_TTL {
                tracing::debug!(topic = %q.topic, "dropping stale queued publication");
                continue;
            }
            match self
                .swarm
                .behaviour_mut()
                .gossipsub
                .publish(q.topic.clone(), q.bytes.clone())
            {
                Ok(_) | Err(gossipsub::PublishError::Duplicate) => {
                    tracing::debug!(topic = %q.topic, "published queued message");
                }
                Err(
                    gossipsub::PublishError::NoPeersSubscribedToTopic
                    | gossipsub::PublishError::AllQueuesFull(_),
                ) => keep.push_back(q),
                Err(e) => {
                    tracing::warn!(topic = %q.topic, error = %Chain(&e), "dropping queued publication")
                }
            }
        }
        self.publish_queue = keep;
    }

    pub(super) fn on_gossip_event(&mut self, event: gossipsub::Event) {
        match event {
            gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            } => {
                self.touch(propagation_source);
                let verdict = self.validate_gossip(propagation_source, &message);
                let gs = &mut self.swarm.behaviour_mut().gossipsub;
                gs.report_message_validation_result(&message_id, &propagation_source, verdict);
            }
            gossipsub::Event::Subscribed { peer_id, topic } => {
                if let Some(project) = self.project_topics.get(&topic).copied() {
                    self.auto_sync(peer_id, project);
                }
                if !self.publish_queue.is_empty() {
                    self.retry_publish();
                }
            }
            gossipsub::Event::SlowPeer {
                peer_id,
                failed_messages,
            } => {
                tracing::debug!(peer = %peer_id, ?failed_messages, "slow gossip peer");
            }
            _ => {}
        }
    }

    /// Manual gossip validation: decode, verify, check the topic fits the
    /// record. Bad → Reject (peer scoring penalizes the forwarder), already
    /// known → Ignore, else Accept (forwarded) and reported to the node.
    ///
    /// A bundle is checked record by record. One bad record rejects the
    /// whole message (it is not forwarded, and the forwarder is struck),
    /// but the good records before it are kept: each stands on its own
    /// signature, whoever relayed it.
    fn validate_gossip(
        &mut self,
        forwarder: PeerId,
        message: &gossipsub::Message,
    ) -> MessageAcceptance {
        if !GossipBundle::is_bundle(&message.data) {
            return match self.accept_record(forwarder, &message.topic, message.data.clone()) {
                Ok(true) => MessageAcceptance::Accept,
                Ok(false) => MessageAcceptance::Ignore,
                Err(reason) => {
                    self.strike(forwarder, reason);
                    MessageAcceptance::Reject
                }
            };
        }
        let bundle = match GossipBundle::from_bytes(&message.data) {
            Ok(b) => b,
            Err(e) => {
                self.strike(
                    forwarder,
                    format!("malformed gossip bundle on {}: {e}", message.topic),
                );
                return MessageAcceptance::Reject;
            }
        };
        let mut new = false;
        let mut fault = None;
        for record in bundle.bundle {
            match self.accept_record(forwarder, &message.topic, record.into_vec()) {
                Ok(fresh) => new |= fresh,
                // One bad record condemns the bundle: checking the rest
                // would let one strike cost a thousand signature checks.
                Err(reason) => {
                    fault = Some(reason);
                    break;
                }
            }
        }
        match fault {
            Some(reason) => {
                self.strike(forwarder, format!("in a gossip bundle: {reason}"));
                MessageAcceptance::Reject
            }
            None if new => MessageAcceptance::Accept,
            None => MessageAcceptance::Ignore,
        }
    }

    /// Checks one record that came by gossip on `topic` and, if it is new,
    /// stores it and reports it to the node. Ok(true) when new, Ok(false)
    /// when already known (or over a store limit); Err says what is wrong
    /// with it.
    fn accept_record(
        &mut self,
        forwarder: PeerId,
        topic: &TopicHash,
        bytes: Vec<u8>,
    ) -> Result<bool, String> {
        // Bytes already held were checked when they first came. Inside a
        // bundle gossipsub's duplicate filter cannot help, so without this
        // a peer could make every node re-check a known record's signature
        // hundreds of times per message, for nothing but an Ignore.
        // Only under the topic's own project: a known record of another
        // project on this topic is still the forwarder's fault, or this
        // node would forward bundles its peers must refuse.
        if self
            .project_topics
            .get(topic)
            .is_some_and(|project| self.records.contains(project, &bytes))
        {
            return Ok(false);
        }
        let gossip =
            Gossip::from_bytes(&bytes).map_err(|e| format!("malformed gossip on {topic}: {e}"))?;
        let (_, project) = gossip
            .verify_in(&mut self.verified_roots)
            .map_err(|e| format!("gossip record does not verify: {e}"))?;
        // A subscribed project's topic is known by its hash; only other
        // topics need the hash computed (a string formatted and hashed,
        // per record).
        let topic_ok = match self.project_topics.get(topic) {
            Some(subscribed) => *subscribed == project,
            None if *topic == Topic::Announce.ident().hash() => {
                matches!(gossip, Gossip::Announce(_))
            }
            None => *topic == Topic::Project(project).ident().hash(),
        };
        if !topic_ok {
            return Err(format!(
                "record of project {} sent on topic {topic}",
                project.short()
            ));
        }
        let via = RecordVia::Gossip {
            propagation_source: forwarder,
        };
        Ok(self.keep_record(forwarder, via, project, gossip, bytes))
    }
}
