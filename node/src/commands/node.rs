//! `formic node`: the volunteer's peer. Prints its PeerId on stdout, joins
//! the network (TCP and QUIC, Kademlia, gossipsub, mDNS unless disabled),
//! follows every announced project and computes its units in the sandbox,
//! serves the control API for `formic status`, and stops cleanly on Ctrl-C
//! or SIGTERM. Units run on idle-priority threads under the idle governor.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use libp2p::Multiaddr;

use super::GlobalArgs;
use crate::node::{NodeConfig, NodeError, Opened, Role, Session};

/// Port used when no `--listen` is given: a stable port lets peers and
/// port-forwarding rules find a volunteer again after a restart.
pub const DEFAULT_PORT: u16 = 4001;

/// Most async worker threads the agent runs (fewer on smaller machines).
const ASYNC_THREADS: usize = 2;

#[derive(Debug, Args)]
pub struct NodeArgs {
    /// Address to listen on, repeatable (e.g. /ip4/0.0.0.0/tcp/4001,
    /// /ip4/0.0.0.0/udp/4001/quic-v1; port 0 picks a free port).
    /// Default: TCP and QUIC on all interfaces, port 4001 (a free port if taken).
    #[arg(long = "listen", value_name = "MULTIADDR")]
    pub listen: Vec<Multiaddr>,

    /// A peer to join the network through, repeatable
    /// (e.g. /ip4/192.0.2.7/tcp/4001/p2p/12D3Koo…). Added to those in
    /// FORMIC_BOOTSTRAP (comma-separated), `bootstrap = [...]` in formic.toml
    /// and the peers remembered from earlier runs.
    #[arg(long = "bootstrap", value_name = "MULTIADDR")]
    pub bootstrap: Vec<Multiaddr>,

    /// Do not discover peers on the local network with mDNS.
    #[arg(long)]
    pub no_mdns: bool,

    /// Where the local control API listens (loopback only; port 0 picks one).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    pub api: SocketAddr,

    /// Serve the Kademlia DHT and relay for peers behind NAT from the start,
    /// for publicly reachable bootstrap nodes (otherwise both wait until an
    /// external address is confirmed).
    #[arg(long)]
    pub kad_server: bool,

    /// Units to compute at once (default: all cores but one, at least one;
    /// 0 relays and stores for the network without computing).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,

    /// Deliberately return wrong results, to test a network's defences:
    /// always-wrong, sometimes-wrong:P, honest-then-defect:N, copier,
    /// colluding:GROUP. Never use on a real network. Only in builds with
    /// the `test-support` feature.
    #[cfg(feature = "test-support")]
    #[arg(long, value_name = "MODE", hide = true, value_parser = parse_sabotage)]
    pub sabotage: Option<crate::computing::Sabotage>,
}

#[cfg(feature = "test-support")]
fn parse_sabotage(s: &str) -> Result<crate::computing::Sabotage, String> {
    crate::computing::Sabotage::parse(s)
}

pub fn run(global: &GlobalArgs, args: NodeArgs) -> anyhow::Result<ExitCode> {
    let data_dir = crate::data_dir::resolve(global.data_dir.as_deref())?;
    // Preferences (formic.toml in the config dir, reloaded on SIGHUP) steer
    // the governor; --threads overrides the preference.
    let prefs_path = crate::preferences::default_path();
    let prefs = match &prefs_path {
        Some(p) => crate::preferences::Preferences::load_or_default(p)
            .with_context(|| format!("reading preferences {}", p.display()))?,
        None => crate::preferences::Preferences::default(),
    };
    let threads = args.threads.unwrap_or(prefs.threads);
    let governor_dir = data_dir.clone();
    let mut config = NodeConfig::new(data_dir, DEFAULT_PORT);
    if args.listen.is_empty() {
        // The default port may be taken (another agent, another program).
        config.free_port_fallback = true;
    } else {
        config.network.listen = args.listen;
    }
    config.network.bootstrap =
        crate::preferences::bootstrap_list_from_env(&args.bootstrap, &prefs)?;
    config.network.mdns = !args.no_mdns;
    config.api_addr = Some(args.api);
    config.network.kad_server = args.kad_server;
    // A node its operator declares a public bootstrap node relays for peers
    // behind NAT from the start; any other relays once AutoNAT or UPnP
    // confirms it is reachable.
    if args.kad_server {
        config.network.relay_server = crate::network::RelayServer::Always;
    }
    config.network.upnp = prefs.upnp;
    // Records, held results and followed projects survive a crash or a
    // kill -9 (see state_store.rs).
    config.persist_state = true;
    // The blob store evicts least-recently-used, unpinned blobs to stay
    // within the volunteer's disk quota (updated on SIGHUP below).
    config.blob_quota = Some(prefs.disk_quota);
    // Opened before the runtime starts, once: a state store held by another
    // agent on this data dir stops the node here.
    let opened = Opened::open(&config).map_err(|e| match e {
        // Says what it was opening itself.
        e @ NodeError::State { .. } => anyhow::Error::from(e),
        e @ NodeError::Identity(_) => anyhow::Error::from(e).context("loading the node identity"),
        e => anyhow::Error::from(e).context("starting the node"),
    })?;
    // The PeerId first, alone on stdout: scripts read it.
    println!("{}", opened.keypair.public().to_peer_id());
    let blobs = std::sync::Arc::clone(&opened.blobs);

    // The async threads only move messages (units run on the compute pool,
    // blocking reads on Tokio's blocking threads), so a few are plenty; one
    // per core, Tokio's default, costs an idle agent memory and wake-ups on
    // many-core machines for nothing.
    let async_threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(ASYNC_THREADS);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(async_threads)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        // The network and the computing layer that follows every announced
        // project and computes its units in the sandbox.
        let (prefs_tx, prefs_rx) = tokio::sync::watch::channel(prefs);
        let quota_prefs = prefs_rx.clone();
        if let Some(path) = prefs_path {
            crate::preferences::spawn_reload_on_sighup(path, Default::default(), prefs_tx)
                .context("watching for SIGHUP")?;
        }
        // The idle governor pauses running units in place and holds back new
        // ones while the user is active, the CPU is busy, on battery, outside
        // allowed hours or after `formic pause`.
        let units = crate::governor::UnitSet::new();
        let governor = crate::governor::spawn(
            crate::governor::Sources::linux(&governor_dir),
            prefs_rx,
            units.clone(),
            crate::governor::DEFAULT_TICK,
        )
        .context("starting the idle governor")?;
        let role = Role {
            #[cfg(feature = "test-support")]
            sabotage: args.sabotage,
            idle_priority: true,
            governed: Some(units),
            governor: Some(governor.subscribe()),
            ..Role::volunteer(threads)
        };
        let session = Session::start_opened(config, opened, role)
            .await
            .context("starting the node")?;
        follow_disk_quota(quota_prefs, blobs);
        wait_for_stop_signal()
            .await
            .context("waiting for a stop signal")?;
        tracing::info!("stopping");
        session.shutdown().await.context("stopping the node")?;
        governor.shutdown();
        Ok(ExitCode::SUCCESS)
    })
}

/// Applies a changed `disk_quota` preference (SIGHUP) to the blob store,
/// evicting down to a lowered quota.
fn follow_disk_quota(
    mut prefs: tokio::sync::watch::Receiver<crate::preferences::Preferences>,
    store: std::sync::Arc<crate::blob_store::BlobStore>,
) {
    tokio::spawn(async move {
        let mut quota = prefs.borrow_and_update().disk_quota;
        while prefs.changed().await.is_ok() {
            let new = prefs.borrow_and_update().disk_quota;
            if new == quota {
                continue;
            }
            quota = new;
            tracing::info!(quota, "blob store quota changed");
            let store = std::sync::Arc::clone(&store);
            let _ = tokio::task::spawn_blocking(move || store.set_quota(Some(new))).await;
        }
    });
}

/// Resolves on Ctrl-C, or SIGTERM on Unix (what systemd and `kill` send).
async fn wait_for_stop_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await
    }
}
