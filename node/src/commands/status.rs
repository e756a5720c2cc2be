//! `formic status`: show what the local node is doing: whether the idle
//! governor lets it compute and why, the units running with their progress,
//! each project's progress and this node's credit, then peers, routing
//! table, topics and blob store. Reads the node's control API (address and
//! token from the data directory); `--json` prints the API's JSON unchanged
//! in shape.

use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use super::GlobalArgs;
use crate::api::NodeStatus;
use crate::governor::{Decision, GovernorSnapshot};

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
        print_text(
            &status,
            crate::governor::unix_ms(std::time::SystemTime::now()),
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `3h 05m`, `4m 07s`, `12s`: how long ago, to the unit that matters.
fn ago(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// `1,234,567`: fuel counts run to billions.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn governor_line(g: &GovernorSnapshot, now_ms: u64) -> String {
    let state = match g.state {
        Decision::Running => "running",
        Decision::Suspended => "suspended",
    };
    format!(
        "{state} for {}: {}",
        ago(now_ms.saturating_sub(g.since_unix_ms)),
        g.reason_text
    )
}

fn print_text(status: &NodeStatus, now_ms: u64) {
    if let Some(g) = &status.governor {
        println!("computing:      {}", governor_line(g, now_ms));
    }
    if status.governor.is_some() || !status.running_units.is_empty() {
        println!("running units:  {}", status.running_units.len());
        for u in &status.running_units {
            println!(
                "  {} unit {:<6} fuel {} / {} ({:.1}%){}",
                u.project,
                u.index,
                grouped(u.fuel_used),
                grouped(u.fuel_budget),
                u.progress() * 100.0,
                if u.paused { ", paused" } else { "" }
            );
        }
    }
    if let Some(c) = &status.compute {
        let cpu = c
            .cpu_ms
            .map(|ms| format!(" in {:.1} s of CPU", ms as f64 / 1000.0))
            .unwrap_or_default();
        println!(
            "computed:       {} units ({} failed){cpu}, {} projects followed",
            c.computed,
            c.failed,
            c.projects.len()
        );
        for p in &c.projects {
            let short: String = p.project.chars().take(12).collect();
            println!(
                "  {short} {:?}: {}/{} validated, {} computed here, {} running, credit {} fuel",
                p.name,
                p.validated,
                p.units,
                p.computed_here,
                p.running,
                grouped(p.credit_fuel)
            );
        }
    }
    let s = &status.network;
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
    let reach = match s.reachability {
        crate::network::ReachabilityState::Public => "public (peers dial this node directly)",
        crate::network::ReachabilityState::Private => {
            "private (behind NAT: peers reach this node through relays)"
        }
        crate::network::ReachabilityState::Unknown => "unknown (not probed yet)",
    };
    println!("reachability:   {reach}");
    if !s.relays.is_empty() {
        println!("relays:         {}", s.relays.join(", "));
    }
    println!("peers:          {} connected", s.peers.len());
    for p in &s.peers {
        let kind = s
            .peer_connections
            .iter()
            .find(|c| &c.peer == p)
            .map_or("", |c| match c.kind {
                crate::network::ConnectionKind::Direct => " (direct)",
                crate::network::ConnectionKind::Relayed => " (relayed)",
            });
        println!("  {p}{kind}");
    }
    if s.hole_punches.succeeded + s.hole_punches.failed > 0 {
        println!(
            "hole punching:  {} succeeded, {} failed",
            s.hole_punches.succeeded, s.hole_punches.failed
        );
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
    let quota = match s.blob_store.quota {
        Some(q) => format!(
            " (quota {} bytes, {} evicted)",
            grouped(q),
            s.blob_store.evicted
        ),
        None => String::new(),
    };
    println!(
        "blob store:     {} blobs, {} bytes{quota}",
        s.blob_store.blobs, s.blob_store.bytes
    );
    if s.publish_queue > 0 {
        println!("waiting to publish: {}", s.publish_queue);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::governor::ReasonKind;

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(ago(0), "0s");
        assert_eq!(ago(59_999), "59s");
        assert_eq!(ago(247_000), "4m 07s");
        assert_eq!(ago(3 * 3_600_000 + 5 * 60_000), "3h 05m");
        assert_eq!(ago(2 * 86_400_000 + 3_600_000), "2d 01h");
    }

    #[test]
    fn fuel_is_grouped_by_thousands() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1000), "1,000");
        assert_eq!(grouped(10_000_000_000), "10,000,000,000");
    }

    #[test]
    fn governor_line_says_state_reason_and_since() {
        let g = GovernorSnapshot {
            state: Decision::Suspended,
            reason: ReasonKind::OnBattery,
            reason_text: "running on battery".into(),
            since_unix_ms: 1_000,
        };
        assert_eq!(
            governor_line(&g, 61_000),
            "suspended for 1m 00s: running on battery"
        );
    }
}
