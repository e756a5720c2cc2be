//! `formic publish`: the project owner's one command. Signs a manifest and
//! a batch with the owner key, stores and provides the app and inputs,
//! announces the project, and returns once enough other peers hold
//! everything, so the owner may go offline.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Args;
use formic_work_units::{Sandbox, SandboxConfig, parse_duration, parse_fuel, parse_size};
use indicatif::{ProgressBar, ProgressStyle};
use rand::RngCore;

use super::GlobalArgs;
use super::join::JoinArgs;
use crate::owner::{self, OWNER_KEY_FILE, PublishOptions};
use crate::spot_checks;

#[derive(Debug, Args)]
#[command(
    after_help = "Example:\n  formic publish primes.wat --inputs ranges.txt --name primes --quorum 2 \\\n      --bootstrap /ip4/192.0.2.7/tcp/4001/p2p/12D3Koo…\n\n\
Prints the ProjectId on stdout once the project is held by --replicate other peers.\n\
Give it to researchers: `formic results <ProjectId> --wait --out DIR`."
)]
pub struct PublishArgs {
    /// The app: a WASI command module (.wasm) or its text form (.wat).
    pub app: PathBuf,
    /// A directory (one unit per file, in name order, index from 0) or a file (one unit per line).
    #[arg(long, value_name = "PATH")]
    pub inputs: PathBuf,
    /// A name for people (not unique; the ProjectId is what identifies it).
    #[arg(long)]
    pub name: Option<String>,
    /// Matching results from independent workers needed to validate a unit.
    #[arg(long, default_value_t = 2)]
    pub quorum: u16,
    /// Most replicas one unit may ever get (re-tries and disputes included).
    #[arg(long, default_value_t = 8)]
    pub max_replicas: u16,
    /// Fuel (deterministic instruction budget) per unit, e.g. 10G.
    #[arg(long, default_value = "10G")]
    pub fuel: String,
    /// Memory cap per unit, e.g. 256MiB.
    #[arg(long, default_value = "256MiB")]
    pub memory: String,
    /// Wall-clock ceiling per unit, e.g. 10m (a safety net; fuel is the real bound).
    #[arg(long, default_value = "10m")]
    pub deadline: String,
    /// Fraction of units planted as spot checks with answers you compute locally.
    #[arg(long, default_value_t = 0.0)]
    pub spot_checks: f64,
    /// Probability that a unit silently gets an extra audit replica (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    pub audits: f64,
    /// Other peers that must hold the app and inputs before this returns.
    #[arg(long, default_value_t = 2)]
    pub replicate: usize,
    /// Give up waiting for peers after this long, e.g. 10m.
    #[arg(long, default_value = "10m")]
    pub timeout: String,
    #[command(flatten)]
    pub join: JoinArgs,
}

pub fn run(global: &GlobalArgs, args: PublishArgs) -> anyhow::Result<ExitCode> {
    if !(0.0..=1.0).contains(&args.spot_checks) {
        bail!(
            "--spot-checks must be between 0 and 1, not {}",
            args.spot_checks
        );
    }
    if !(0.0..=1.0).contains(&args.audits) {
        bail!("--audits must be between 0 and 1, not {}", args.audits);
    }
    let data_dir = crate::data_dir::resolve(global.data_dir.as_deref())?;
    let owner_key = crate::identity::load_or_create_keypair(&data_dir.join(OWNER_KEY_FILE))
        .context("loading the owner key")?;
    let app = std::fs::read(&args.app)
        .with_context(|| format!("reading the app {}", args.app.display()))?;
    // Refuse an app that would fail on every volunteer.
    let sandbox = Sandbox::new(SandboxConfig {
        cache_dir: Some(data_dir.join("wasm-cache")),
        ..SandboxConfig::default()
    })
    .context("starting the sandbox")?;
    sandbox
        .compile(&app)
        .with_context(|| format!("checking the app {}", args.app.display()))?;
    let inputs = owner::read_inputs(&args.inputs)?;
    let name = args.name.clone().unwrap_or_else(|| {
        args.app
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "unnamed".into())
    });
    let opts = PublishOptions {
        name,
        quorum: args.quorum,
        max_replicas: args.max_replicas,
        fuel_per_unit: parse_fuel(&args.fuel).context("--fuel")?,
        memory_bytes: parse_size(&args.memory).context("--memory")?,
        wall_clock_ms: parse_duration(&args.deadline)
            .context("--deadline")?
            .as_millis() as u64,
        audit_rate_ppm: (args.audits * 1e6) as u32,
        ..PublishOptions::default()
    };
    let timeout = parse_duration(&args.timeout).context("--timeout")?;
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut seed = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut seed);
    let project = owner::build_project(&owner_key, app, &inputs, &opts, now_ms, seed)?;
    let project_id = project.id();
    eprintln!(
        "project {} ({} units, quorum {})",
        project_id,
        inputs.len(),
        opts.quorum
    );
    if args.spot_checks > 0.0 {
        plant_spot_checks(
            &data_dir,
            &owner_key,
            &project,
            &inputs,
            &sandbox,
            args.spot_checks,
        )?;
    }

    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let session = args.join.join(&data_dir).await?;
        owner::publish(&session.client(), &project).await.context("publishing")?;
        let bar = ProgressBar::new(args.replicate as u64).with_style(
            ProgressStyle::with_template("{spinner} held by {pos}/{len} other peers {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let deadline = tokio::time::Instant::now() + timeout;
        let mut held = 0;
        let mut replication = owner::ReplicationWatch::new();
        while held < args.replicate {
            held = replication.holders(&session.client(), &project).await;
            bar.set_position(held.min(args.replicate) as u64);
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        bar.finish_and_clear();
        session.shutdown().await.ok();
        if held < args.replicate {
            bail!(
                "after {:?} only {held} of {} peers hold the project; it is announced, but stay online or retry",
                timeout,
                args.replicate
            );
        }
        eprintln!("held by {held} other peers: you may go offline");
        println!("{project_id}");
        Ok(ExitCode::SUCCESS)
    })
}

/// Computes a secret sample of the units here, with a progress bar (they
/// run as long as any unit), and keeps their answers in the data dir.
fn plant_spot_checks(
    data_dir: &std::path::Path,
    owner_key: &libp2p::identity::Keypair,
    project: &owner::BuiltProject,
    inputs: &[Vec<u8>],
    sandbox: &Sandbox,
    fraction: f64,
) -> anyhow::Result<()> {
    let chosen = spot_checks::choose(inputs.len(), fraction, &mut rand::rngs::OsRng)?;
    let bar = ProgressBar::new(chosen.len() as u64).with_style(
        ProgressStyle::with_template("{msg} {bar:30} {pos}/{len}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message("computing spot checks locally");
    let planted = spot_checks::plant(owner_key, project, inputs, &chosen, sandbox, &|done, _| {
        bar.set_position(done as u64)
    })
    .context("planting spot checks")?;
    bar.finish_and_clear();
    let dir = spot_checks::save(data_dir, project.id(), &planted.keys)?;
    eprintln!(
        "planted {} spot checks{}; their answers stay in {} until `formic results` reveals them",
        planted.answers,
        if planted.failed > 0 {
            format!(
                " ({} chosen units failed here and were left out)",
                planted.failed
            )
        } else {
            String::new()
        },
        dir.display()
    );
    Ok(())
}
