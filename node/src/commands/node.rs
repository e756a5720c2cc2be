//! `formic node`: the volunteer's peer. For now it establishes the node's
//! identity and prints its PeerId; joining the network lands with the
//! peer-to-peer layer.

use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::cli::GlobalArgs;

#[derive(Debug, Args)]
pub struct NodeArgs {}

pub fn run(global: &GlobalArgs, _args: NodeArgs) -> anyhow::Result<ExitCode> {
    let data_dir = crate::data_dir::resolve(global.data_dir.as_deref())?;
    let keypair = crate::identity::load_or_create_node_identity(&data_dir)
        .context("loading the node identity")?;
    println!("{}", keypair.public().to_peer_id());
    super::not_yet("node", "joining the network needs the peer-to-peer layer")
}
