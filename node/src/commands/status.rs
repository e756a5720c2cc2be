//! `formic status`: show what the local node is doing: peers, routing table,
//! topics, blob store. Reads the node's control API (address and token from
//! the data directory); `--json` prints the API's JSON unchanged in shape.

use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::cli::GlobalArgs;
use crate::network::NetworkStatus;

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print machine-readable JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(global: &GlobalArgs, args: StatusArgs) -> anyhow::Result<ExitCode> {
    let data_dir = crate::data_dir::resolve(global.data_dir.as_deref())?;
    let status = crate::api::client::status(&data_dir)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&status).context("encoding the status as JSON")?
        );
    } else {
        print_text(&status);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_text(s: &NetworkStatus) {
    println!("peer id:        {}", s.peer_id);
    println!("listening on:");
    for a in &s.listen_addrs {
        println!("  {a}");
    }
    if !s.external_addrs.is_empty() {
        println!("reachable at:");
        for a in &s.external_addrs {
            println!("  {a}");
        }
    }
    println!("peers:          {} connected", s.peers.len());
    for p in &s.peers {
        println!("  {p}");
    }
    println!(
        "routing table:  {} peers (kademlia {} mode)",
        s.routing_table_size, s.kad_mode
    );
    println!(
        "topics:         {}",
        if s.topics.is_empty() {
            "none".to_owned()
        } else {
            s.topics.join(", ")
        }
    );
    println!("gossip mesh:    {} peers", s.mesh_peers);
    println!("records:        {} in {} projects", s.records, s.projects);
    println!(
        "blob store:     {} blobs, {} bytes",
        s.blob_store.blobs, s.blob_store.bytes
    );
    if s.publish_queue > 0 {
        println!("waiting to publish: {}", s.publish_queue);
    }
}
