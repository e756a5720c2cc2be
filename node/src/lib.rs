//! The Formic peer as a library: the `formic` binary is a thin shell over it,
//! and the multi-node tests in `tests/` start nodes through it in-process.
//!
//! Layers (see docs/ARCHITECTURE.md): `cli` and `commands` are the edge where
//! `anyhow` is used; `node` is the composition root, which opens a node's
//! files once and starts the network, the computing layer and the control
//! API in turn; `network` owns the libp2p swarm and `computing` every followed
//! project's state; `governor` and `compute_pool` decide when and where
//! units run; `blob_store`, `state_store`, `identity` and `data_dir` own
//! files in the data directory; `owner`, `spot_checks` and `collect` are the
//! project owner's and the researcher's sides; `api` serves `formic status`.

pub mod api;
pub mod blob_store;
pub mod cli;
pub mod collect;
pub mod commands;
pub mod compute_pool;
pub mod computing;
pub mod data_dir;
mod deadline;
pub mod demo;
pub mod error_report;
pub mod governor;
pub mod identity;
pub mod logging;
pub mod network;
pub mod node;
pub mod os_clocks;
pub mod owner;
pub mod preferences;
pub mod service;
pub mod spot_checks;
pub mod state_store;
