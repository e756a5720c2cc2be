//! `formic service install|uninstall`: run the agent as a systemd user
//! service that starts with your session (see packaging/README.md for the
//! system-wide service and other platforms).

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::GlobalArgs;
use crate::service;

#[derive(Debug, Args)]
pub struct ServiceArgs {
    #[command(subcommand)]
    pub action: ServiceAction,
}

#[derive(Debug, Subcommand)]
pub enum ServiceAction {
    /// Write ~/.config/systemd/user/formic.service for this binary, then enable and start it.
    Install {
        /// Only write the unit file; do not run systemctl.
        #[arg(long)]
        no_enable: bool,
        /// A peer the service joins the network through, repeatable
        /// (e.g. /ip4/192.0.2.7/tcp/4001/p2p/12D3Koo…). Written into the unit
        /// as FORMIC_BOOTSTRAP; formic.toml's `bootstrap` list applies too.
        #[arg(long = "bootstrap", value_name = "MULTIADDR")]
        bootstrap: Vec<libp2p::Multiaddr>,
    },
    /// Stop and disable the user service, then remove its unit file.
    Uninstall {
        /// Only remove the unit file; do not run systemctl.
        #[arg(long)]
        no_disable: bool,
    },
}

pub fn run(_global: &GlobalArgs, args: ServiceArgs) -> anyhow::Result<ExitCode> {
    match args.action {
        ServiceAction::Install {
            no_enable,
            bootstrap,
        } => {
            let exe = std::env::current_exe()
                .map_err(service::ServiceError::CurrentExe)
                .context("formic service install")?;
            let path = service::install_user_unit(&exe, &bootstrap, !no_enable)
                .context("formic service install")?;
            println!("Wrote the systemd user unit {}.", path.display());
            if no_enable {
                println!(
                    "Not enabled (--no-enable). Start it with: systemctl --user daemon-reload && \
                     systemctl --user enable --now formic.service"
                );
            } else {
                println!(
                    "Enabled and started formic.service; it computes only while this machine is idle. \
                     See `systemctl --user status formic` and `formic status`."
                );
            }
        }
        ServiceAction::Uninstall { no_disable } => {
            let (path, existed) =
                service::uninstall_user_unit(!no_disable).context("formic service uninstall")?;
            if !no_disable {
                println!("Stopped and disabled formic.service.");
            }
            if existed {
                println!("Removed {}.", path.display());
            } else {
                println!("There was no unit file at {}.", path.display());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
