//! `formic results`: the researcher's command. Joins the network, pulls a
//! project's records, validates them locally (trusting signatures, not
//! peers), and writes every validated output with the evidence that proves
//! it; `--verify` re-checks such a folder offline.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use formic_protocol::ContentId;
use indicatif::{ProgressBar, ProgressStyle};

use super::GlobalArgs;
use super::join::JoinArgs;
use crate::collect::{self, Format};
use crate::spot_checks;

/// Exit code when results were written but not every unit is validated yet.
pub const EXIT_INCOMPLETE: u8 = 3;

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  formic results 3f2a…c9 --wait --out results/\n  formic results --verify results/\n\n\
Writes DIR/outputs/<index> (raw output bytes), DIR/results.json (or .csv) and DIR/evidence.cbor.\n\
Exit codes: 0 every unit validated (or the folder verifies), 1 error, 3 written but incomplete."
)]
pub struct ResultsArgs {
    /// The ProjectId printed by `formic publish`.
    #[arg(required_unless_present = "verify")]
    pub project: Option<String>,
    /// Wait until every unit is validated (with a progress bar).
    #[arg(long)]
    pub wait: bool,
    /// Folder to write outputs, the results table and the evidence into.
    #[arg(long, value_name = "DIR", default_value = "results")]
    pub out: PathBuf,
    /// Format of the results table.
    #[arg(long, value_enum, default_value = "json")]
    pub format: Format,
    /// Re-check a results folder offline instead of collecting.
    #[arg(long, value_name = "DIR", conflicts_with = "project")]
    pub verify: Option<PathBuf>,
    /// Without --wait, how long to gather records before writing, e.g. 20s.
    #[arg(long, default_value = "20s")]
    pub gather: String,
    #[command(flatten)]
    pub join: JoinArgs,
}

pub fn run(global: &GlobalArgs, args: ResultsArgs) -> anyhow::Result<ExitCode> {
    if let Some(dir) = &args.verify {
        let s = collect::verify_dir(dir).with_context(|| format!("verifying {}", dir.display()))?;
        println!(
            "{}: {} listed results verified against the signed evidence ({} units validated by it), owner {}",
            s.project, s.listed, s.validated_by_evidence, s.owner
        );
        return Ok(ExitCode::SUCCESS);
    }
    let Some(project) = args.project.as_deref() else {
        bail!("give a ProjectId, or --verify DIR");
    };
    let project: ContentId = project
        .parse()
        .with_context(|| format!("`{project}` is not a ProjectId"))?;
    let gather = formic_work_units::parse_duration(&args.gather).context("--gather")?;
    let data_dir = crate::data_dir::resolve(global.data_dir.as_deref())?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let session = args.join.join(&data_dir).await?;
        // The owner collecting: reveal the planted spot checks first, so
        // every peer can judge workers against them (revealing ends their
        // use as checks, which is why it waits until now).
        // A damaged answers file must not stop collecting: warn, go on.
        let keys = spot_checks::load(&data_dir, project).unwrap_or_else(|e| {
            eprintln!("warning: spot checks not revealed: {e}");
            Vec::new()
        });
        if !keys.is_empty() {
            session.wait_for_peers(1, Duration::from_secs(20)).await;
            let n = spot_checks::reveal(&session.client(), &keys)
                .await
                .context("revealing spot checks")?;
            eprintln!("revealed {n} spot-check answers");
        }
        session.compute.follow(project).await;
        let bar = ProgressBar::new(0).with_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} units validated {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let started = tokio::time::Instant::now();
        let snapshot = loop {
            let _ = session.client().sync_records(project).await;
            // Poll the cheap progress; copy the state only to finish.
            if let Some(p) = session.compute.progress(project) {
                bar.set_length(p.units as u64);
                bar.set_position(p.validated as u64);
                let looks_complete = p.units > 0 && p.validated == p.units;
                let gathered = !args.wait && started.elapsed() >= gather;
                if (looks_complete || gathered)
                    && let Some(mut snap) = session.compute.snapshot(project).await
                    && (gathered || snap.state.is_complete())
                {
                    break Some(snap);
                }
            } else if !args.wait && started.elapsed() >= gather {
                break None;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        };
        bar.finish_and_clear();
        let Some(mut snap) = snapshot else {
            session.shutdown().await.ok();
            bail!("project {project} was not found on the network within {gather:?}");
        };
        let file = collect::write_results(
            &session.client(),
            &snap.manifest,
            &mut snap.state,
            &args.out,
            args.format,
        )
        .await
        .context("writing results")?;
        session.shutdown().await.ok();
        eprintln!(
            "{} of {} units validated; written to {}",
            file.validated,
            file.units,
            args.out.display()
        );
        Ok(if file.validated == file.units {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(EXIT_INCOMPLETE)
        })
    })
}
