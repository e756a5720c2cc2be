//! `formic demo`: a whole local network over loopback sockets runs a sample
//! project end to end, with a saboteur, and reports what it cost.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::GlobalArgs;
use crate::demo::{self, DemoConfig};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Number of volunteer peers to start.
    #[arg(long, default_value_t = 5)]
    pub peers: usize,
    /// Number of work units in the sample project (prime counting).
    #[arg(long, default_value_t = 60)]
    pub units: usize,
    /// How many of the peers are saboteurs (two or more collude).
    #[arg(long, default_value_t = 1)]
    pub saboteurs: usize,
    /// Width of each unit's range of integers (sets how long a unit runs;
    /// the default, ~30 ms, keeps every volunteer busy for a few seconds,
    /// so the saboteur gets work and is caught).
    #[arg(long, default_value_t = crate::demo::DEFAULT_RANGE)]
    pub range: u64,
    /// Matching results needed per unit.
    #[arg(long, default_value_t = 2)]
    pub quorum: u16,
    /// Fraction of units the owner plants as spot checks (computed locally, answers
    /// revealed by the researcher when collecting).
    #[arg(long, default_value_t = 0.1)]
    pub spot_checks: f64,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 180)]
    pub timeout: u64,
    /// Also write the researcher's results folder here (see `formic results`).
    #[arg(long, value_name = "DIR")]
    pub out: Option<std::path::PathBuf>,
}

pub fn run(_global: &GlobalArgs, args: DemoArgs) -> anyhow::Result<ExitCode> {
    if !(0.0..=1.0).contains(&args.spot_checks) {
        anyhow::bail!(
            "--spot-checks must be between 0 and 1, not {}",
            args.spot_checks
        );
    }
    if args.saboteurs >= args.peers {
        anyhow::bail!(
            "--saboteurs ({}) must be fewer than --peers ({})",
            args.saboteurs,
            args.peers
        );
    }
    let root = tempfile::tempdir().context("creating a scratch directory")?;
    let config = DemoConfig {
        peers: args.peers,
        units: args.units,
        saboteurs: args.saboteurs,
        range: args.range,
        quorum: args.quorum,
        spot_checks: args.spot_checks,
        timeout: Duration::from_secs(args.timeout),
        results_dir: args.out.clone(),
        ..DemoConfig::default()
    };
    eprintln!(
        "demo: {} volunteers ({} saboteur{}), {} units of prime counting, quorum {}",
        args.peers,
        args.saboteurs,
        if args.saboteurs == 1 { "" } else { "s" },
        args.units,
        args.quorum
    );
    let bar = ProgressBar::new(args.units as u64).with_style(
        ProgressStyle::with_template("{msg:>20} {bar:40} {pos}/{len} validated")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let report = runtime.block_on(demo::run(root.path(), &config, &|phase, done, _| {
        bar.set_message(phase.to_owned());
        bar.set_position(done as u64);
    }))?;
    bar.finish_and_clear();
    println!("project                      {}", report.project);
    println!(
        "units validated              {}/{}",
        report.validated, report.units
    );
    println!("wrong results accepted       {}", report.wrong_accepted);
    println!("workers proven faulty        {}", report.faulty_workers);
    println!("spot checks planted          {}", report.spot_checks);
    println!(
        "compute spent / useful       {:.2} ({} executions)",
        report.overhead(),
        report.executions
    );
    println!(
        "publish -> held by 2 peers   {:.2} s (then the owner went offline)",
        report.publish_time.as_secs_f64()
    );
    if let Some(t) = report.first_validated_after_publish {
        println!("publish -> first validated   {:.2} s", t.as_secs_f64());
    }
    println!(
        "wall time                    {:.1} s",
        report.wall_time.as_secs_f64()
    );
    Ok(
        if report.validated == report.units && report.wrong_accepted == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        },
    )
}
