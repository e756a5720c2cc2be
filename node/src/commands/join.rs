//! Network flags shared by the commands that start a short-lived node of
//! their own (`publish`, `results`): how to find the network.

use std::path::Path;

use anyhow::Context;
use clap::Args;
use libp2p::Multiaddr;

use crate::node::{NodeConfig, Role, Session};

#[derive(Debug, Clone, Args)]
pub struct JoinArgs {
    /// A peer to join the network through, repeatable
    /// (e.g. /ip4/192.0.2.7/tcp/4001/p2p/12D3Koo…). Those in
    /// FORMIC_BOOTSTRAP (comma-separated), `bootstrap = [...]` in formic.toml
    /// and peers found on earlier runs with this data directory are tried too.
    #[arg(long = "bootstrap", value_name = "MULTIADDR")]
    pub bootstrap: Vec<Multiaddr>,

    /// Address to listen on, repeatable (default: TCP and QUIC on a free port).
    #[arg(long = "listen", value_name = "MULTIADDR")]
    pub listen: Vec<Multiaddr>,

    /// Do not discover peers on the local network with mDNS.
    #[arg(long)]
    pub no_mdns: bool,
}

impl JoinArgs {
    /// A node configuration for a short-lived node in `data_dir`, joining
    /// through the flags' peers and then `bootstrap`'s (from the
    /// environment and the preferences file; see
    /// [`crate::preferences::bootstrap_list`]).
    pub fn node_config_with(&self, data_dir: &Path, bootstrap: Vec<Multiaddr>) -> NodeConfig {
        let mut config = NodeConfig::new(data_dir.to_path_buf(), 0);
        if !self.listen.is_empty() {
            config.network.listen = self.listen.clone();
        }
        let mut peers = self.bootstrap.clone();
        peers.extend(
            bootstrap
                .into_iter()
                .filter(|a| !self.bootstrap.contains(a)),
        );
        config.network.bootstrap = peers;
        config.network.mdns = !self.no_mdns;
        // Its own API would collide with a `formic node` on the same data dir.
        config.api_addr = None;
        // A network identity of its own, for this run only: the data dir's
        // identity may be in use by a `formic node` running at the same time,
        // and two live peers with one PeerId make each other's connections,
        // DHT entries and provider records unreliable. A short-lived node
        // signs nothing with it (owners sign with the owner key), so nothing
        // is lost when it goes.
        config.keypair = Some(libp2p::identity::Keypair::generate_ed25519());
        config
    }

    /// [`node_config_with`](Self::node_config_with) the flags' peers only.
    pub fn node_config(&self, data_dir: &Path) -> NodeConfig {
        self.node_config_with(data_dir, Vec::new())
    }

    /// The bootstrap peers beyond the flags: [`BOOTSTRAP_ENV`]'s and the
    /// preferences file's.
    ///
    /// [`BOOTSTRAP_ENV`]: crate::preferences::BOOTSTRAP_ENV
    pub fn configured_bootstrap() -> anyhow::Result<Vec<Multiaddr>> {
        let prefs = match crate::preferences::default_path() {
            Some(p) => crate::preferences::Preferences::load_or_default(&p)
                .with_context(|| format!("reading preferences {}", p.display()))?,
            None => crate::preferences::Preferences::default(),
        };
        Ok(crate::preferences::bootstrap_list_from_env(&[], &prefs)?)
    }

    /// Starts a short-lived observer node in `data_dir` and waits until it
    /// has a peer, or says how to give it one.
    pub async fn join(&self, data_dir: &Path) -> anyhow::Result<Session> {
        let config = self.node_config_with(data_dir, Self::configured_bootstrap()?);
        let session = Session::start(config, Role::observer()).await?;
        if session
            .wait_for_peers(1, std::time::Duration::from_secs(30))
            .await
            == 0
        {
            session.shutdown().await.ok();
            anyhow::bail!(
                "no peer found in 30 s: pass --bootstrap with a running node's address \
                 (or set FORMIC_BOOTSTRAP, or `bootstrap = [...]` in formic.toml)"
            );
        }
        Ok(session)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_lived_node_never_takes_the_data_dirs_network_identity() {
        let dir = tempfile::tempdir().unwrap();
        let node_identity = crate::identity::load_or_create_node_identity(dir.path())
            .unwrap()
            .public()
            .to_peer_id();
        let args = JoinArgs {
            bootstrap: vec![],
            listen: vec![],
            no_mdns: true,
        };
        let first = args.node_config(dir.path()).keypair.unwrap();
        let second = args.node_config(dir.path()).keypair.unwrap();
        assert_ne!(first.public().to_peer_id(), node_identity);
        assert_ne!(first.public().to_peer_id(), second.public().to_peer_id());
    }
}
