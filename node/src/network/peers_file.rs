//! `<data-dir>/peers.json`: peers this node knew when it last ran.
//!
//! A node that restarts dials them again besides its bootstrap list, so the
//! network re-forms even when the bootstrap peer is the one that restarted
//! (the membership loss after restarts that made Bacalhau drop libp2p).

use std::path::{Path, PathBuf};

use crate::error_report::Chain;
use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

/// File name inside the data directory.
pub(crate) const PEERS_FILE: &str = "peers.json";

/// Peers remembered at most (the nearest in the routing table come first).
pub(crate) const MAX_REMEMBERED: usize = 64;

/// Addresses remembered per peer.
const MAX_ADDRS: usize = 4;

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    peer: String,
    addrs: Vec<String>,
}

fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(PEERS_FILE)
}

/// The remembered peers; an absent or unreadable file is an empty list
/// (it is only a hint, so a damaged one must not stop the node).
pub(crate) fn load(data_dir: &Path) -> Vec<(PeerId, Vec<Multiaddr>)> {
    let Ok(bytes) = std::fs::read(path(data_dir)) else {
        return Vec::new();
    };
    let entries: Vec<Entry> = match serde_json::from_slice(&bytes) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = %Chain(&e), "ignoring unreadable peers file");
            return Vec::new();
        }
    };
    entries
        .into_iter()
        .take(MAX_REMEMBERED)
        .filter_map(|e| {
            let peer = e.peer.parse().ok()?;
            let addrs = e
                .addrs
                .iter()
                .take(MAX_ADDRS)
                .filter_map(|a| a.parse().ok())
                .collect();
            Some((peer, addrs))
        })
        .collect()
}

/// Saves `peers` atomically.
pub(crate) fn save(data_dir: &Path, peers: &[(PeerId, Vec<Multiaddr>)]) {
    let entries: Vec<Entry> = peers
        .iter()
        .take(MAX_REMEMBERED)
        .map(|(p, addrs)| Entry {
            peer: p.to_string(),
            addrs: addrs
                .iter()
                .take(MAX_ADDRS)
                .map(|a| a.to_string())
                .collect(),
        })
        .collect();
    let result = serde_json::to_vec_pretty(&entries)
        .map_err(std::io::Error::other)
        .and_then(|bytes| crate::data_dir::write_atomic(&path(data_dir), &bytes, false));
    if let Err(e) = result {
        tracing::warn!(error = %Chain(&e), "could not save the peers file");
    }
}
