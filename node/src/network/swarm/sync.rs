//! Pull-sync: what gossip missed (a node that joined late, was offline or
//! dropped events) is pulled page by page from peers in the project's
//! topic, from where the last sync with each peer ended. Kept apart from
//! gossip because its jobs outlive single events: they span pages and
//! report back to one caller.

use formic_protocol::DecodeError;
use formic_protocol::messages::{Gossip, ProjectId};
use formic_protocol::sync::{
    MAX_RECORDS_PER_PAGE, MAX_SYNC_RESPONSE_BYTES, RecordBytes, SyncRequest, SyncResponse,
};
use libp2p::PeerId;
use libp2p::request_response;
use tokio::sync::oneshot;

use super::Task;
use crate::network::client::SyncReport;
use crate::network::{RecordVia, Topic};

/// Most pages pulled from one peer in one sync (a runaway cursor stops).
const MAX_SYNC_PAGES: u32 = 10_000;

/// Peers synced with at once for one `sync_records` call.
const SYNC_FANOUT: usize = 4;

pub(super) struct SyncJob {
    pub(super) peer: PeerId,
    project: ProjectId,
    op: Option<u64>,
    pages: u32,
    /// Where the page in flight starts in the peer's record log.
    cursor: u64,
}

pub(super) struct SyncOp {
    outstanding: usize,
    report: SyncReport,
    reply: oneshot::Sender<SyncReport>,
}

impl Task {
    pub(super) fn auto_sync(&mut self, peer: PeerId, project: ProjectId) {
        if self.synced_with.insert((peer, project)) {
            self.start_sync_job(peer, project, None);
        }
    }

    /// Syncs `project` from `peer`, from where the last sync with it ended.
    fn start_sync_job(&mut self, peer: PeerId, project: ProjectId, op: Option<u64>) {
        let cursor = self.sync_from.get(&(peer, project)).copied().unwrap_or(0);
        self.send_sync(SyncJob {
            peer,
            project,
            op,
            pages: 0,
            cursor,
        });
    }

    /// Asks for the page at `job.cursor`.
    fn send_sync(&mut self, job: SyncJob) {
        let req = SyncRequest {
            project: job.project,
            cursor: job.cursor,
            limit: MAX_RECORDS_PER_PAGE,
        };
        let rid = self
            .swarm
            .behaviour_mut()
            .sync
            .send_request(&job.peer, Ok(req));
        self.pending_sync.insert(rid, job);
    }

    pub(super) fn start_sync_op(&mut self, project: ProjectId, reply: oneshot::Sender<SyncReport>) {
        let hash = Topic::Project(project).ident().hash();
        let gs = &self.swarm.behaviour().gossipsub;
        let mut peers: Vec<PeerId> = gs
            .all_peers()
            .filter(|(_, topics)| topics.contains(&&hash))
            .map(|(p, _)| *p)
            .collect();
        if peers.is_empty() {
            peers = self.swarm.connected_peers().copied().collect();
        }
        peers.truncate(SYNC_FANOUT);
        if peers.is_empty() {
            let _ = reply.send(SyncReport::default());
            return;
        }
        let op = self.next_sync_op;
        self.next_sync_op += 1;
        self.sync_ops.insert(
            op,
            SyncOp {
                outstanding: peers.len(),
                report: SyncReport::default(),
                reply,
            },
        );
        for peer in peers {
            self.start_sync_job(peer, project, Some(op));
        }
    }

    fn finish_sync_job(&mut self, job: &SyncJob, failure: Option<String>) {
        let Some(op_id) = job.op else { return };
        let Some(op) = self.sync_ops.get_mut(&op_id) else {
            return;
        };
        match failure {
            None => op.report.peers_synced += 1,
            Some(reason) => op.report.failures.push((job.peer, reason)),
        }
        op.outstanding -= 1;
        if op.outstanding == 0
            && let Some(op) = self.sync_ops.remove(&op_id)
        {
            let _ = op.reply.send(op.report);
        }
    }

    pub(super) fn on_sync_event(
        &mut self,
        event: request_response::Event<
            Result<SyncRequest, DecodeError>,
            Result<SyncResponse, DecodeError>,
        >,
    ) {
        use request_response::{Event, Message};
        match event {
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                self.touch(peer);
                let response = match request {
                    Ok(req) => {
                        let limit = req.limit.min(MAX_RECORDS_PER_PAGE) as usize;
                        // Leave room for the page's own framing.
                        let (records, next) = self.records.page(
                            &req.project,
                            req.cursor,
                            limit,
                            MAX_SYNC_RESPONSE_BYTES - 1024,
                        );
                        SyncResponse::Page {
                            records: records.into_iter().map(RecordBytes).collect(),
                            next,
                        }
                    }
                    Err(e) => {
                        self.strike(peer, format!("malformed sync request: {e}"));
                        SyncResponse::Refused(format!("malformed request: {e}"))
                    }
                };
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .sync
                    .send_response(channel, Ok(response));
            }
            Event::Message {
                peer,
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                self.touch(peer);
                let Some(mut job) = self.pending_sync.remove(&request_id) else {
                    return;
                };
                match response {
                    Ok(SyncResponse::Page { records, next }) => {
                        let mut new = 0;
                        // Pages are contiguous runs of the peer's log.
                        let end = job.cursor.saturating_add(records.len() as u64);
                        let received = records.len();
                        for RecordBytes(bytes) in records {
                            match self.accept_synced(peer, job.project, bytes) {
                                Ok(true) => new += 1,
                                Ok(false) => {}
                                Err(reason) => {
                                    self.strike(peer, reason.clone());
                                    self.finish_sync_job(&job, Some(reason));
                                    return;
                                }
                            }
                        }
                        if let Some(op) = job.op.and_then(|op| self.sync_ops.get_mut(&op)) {
                            op.report.new_records += new;
                            op.report.records_received += received;
                        }
                        if new > 0 {
                            tracing::debug!(%peer, project = %job.project.short(), new, "synced records");
                        }
                        job.pages += 1;
                        // Everything before here is held now.
                        let held_to = next.unwrap_or(end);
                        let from = self.sync_from.entry((job.peer, job.project)).or_insert(0);
                        *from = (*from).max(held_to);
                        match next {
                            Some(cursor) if job.pages < MAX_SYNC_PAGES => {
                                job.cursor = cursor;
                                self.send_sync(job)
                            }
                            _ => self.finish_sync_job(&job, None),
                        }
                    }
                    Ok(SyncResponse::Refused(reason)) => {
                        self.finish_sync_job(&job, Some(format!("refused: {reason}")))
                    }
                    Err(e) => {
                        let reason = format!("malformed sync response: {e}");
                        self.strike(peer, reason.clone());
                        self.finish_sync_job(&job, Some(reason));
                    }
                }
            }
            Event::OutboundFailure {
                request_id,
                error,
                peer,
                ..
            } => {
                tracing::debug!(%peer, %error, "sync request failed");
                if let Some(job) = self.pending_sync.remove(&request_id) {
                    self.finish_sync_job(&job, Some(error.to_string()));
                }
            }
            Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "inbound sync request failed");
            }
            Event::ResponseSent { .. } => {}
        }
    }

    /// Checks a record pulled from `peer` like gossip; returns whether it was
    /// new, or why it is bad.
    fn accept_synced(
        &mut self,
        peer: PeerId,
        project: ProjectId,
        bytes: Vec<u8>,
    ) -> Result<bool, String> {
        // Each sync page repeats records this node already holds; those were
        // verified when they first arrived, and re-verifying every signature
        // on every sync made syncing cost grow with the square of a
        // project's size.
        if self.records.holds(&bytes) {
            return Ok(false);
        }
        let gossip =
            Gossip::from_bytes(&bytes).map_err(|e| format!("malformed synced record: {e}"))?;
        let (_, record_project) = gossip
            .verify_in(&mut self.verified_roots)
            .map_err(|e| format!("synced record does not verify: {e}"))?;
        if record_project != project {
            return Err(format!(
                "sync for project {} returned a record of {}",
                project.short(),
                record_project.short()
            ));
        }
        Ok(self.keep_record(peer, RecordVia::Sync { peer }, project, gossip, bytes))
    }
}
