//! `pepler-cuda experiment splits|strategies|lambda|sizes`: the paper's experiments as resumable
//! grids of training runs, with tables, figures and a report (see `crate::experiment`).

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args, Subcommand, ValueEnum};

use super::train::{DataArgs, RecArg, RunOptions};
use crate::experiment::aggregate::aggregate;
use crate::experiment::report::{shell_line, write_report};
use crate::experiment::{
    collect, grid, run_grid, splits_under, Axes, GridControl, Kind, RunStatus, SizeSpec,
    SplitSource, Variant,
};
use crate::train::config::{DataSource, TrainConfig};
use crate::train::strategy::Strategy;

/// A Table 5 row, as `--variants` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum VariantArg {
    /// PEPLER: continuous prompt, --strategy (default sequential), no rating head.
    Pepler,
    /// PEPLER (MF): + matrix-factorisation rating head, full fine-tuning, --lambda.
    PeplerMf,
    /// PEPLER (MLP): + MLP rating head, full fine-tuning, --lambda.
    PeplerMlp,
    /// PEPLER-D: discrete prompt, full fine-tuning, lr 1e-4 unless --lr is given.
    PeplerD,
}

impl From<VariantArg> for Variant {
    fn from(v: VariantArg) -> Variant {
        match v {
            VariantArg::Pepler => Variant::Pepler,
            VariantArg::PeplerMf => Variant::PeplerMf,
            VariantArg::PeplerMlp => Variant::PeplerMlp,
            VariantArg::PeplerD => Variant::PeplerD,
        }
    }
}

/// Options every experiment shares: the data and its splits, the training options of every run,
/// where results go and how much of the grid to run now.
#[derive(Clone, Debug, Args)]
pub struct ExperimentCommon {
    #[command(flatten)]
    pub data: DataArgs,
    /// Folder holding the split folders `1`, `2`, … (each with train.index, validation.index,
    /// test.index), e.g. TripAdvisor/ of the released data; needs --data. Every run of the grid
    /// is repeated on each split and figures show mean ± standard deviation over splits. Without
    /// it, one split: --index-dir, the JSON-lines file's seeded split, or the synthetic data set.
    #[arg(long, value_name = "DIR", conflicts_with = "index_dir")]
    pub index_root: Option<PathBuf>,
    /// Only these split folders of --index-root (comma-separated names; default: every folder
    /// named by a number).
    #[arg(
        long,
        value_name = "NAMES",
        value_delimiter = ',',
        requires = "index_root"
    )]
    pub splits: Vec<String>,
    /// Experiment directory: one sub-directory per run, plus table.md/.csv/.json, results.csv,
    /// the figures (SVG and PNG) and report.md. Default: runs/<experiment>.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Train at most this many runs in this call, then stop (finished runs are skipped and do not
    /// count); the same command continues the grid.
    #[arg(long, value_name = "N")]
    pub max_runs: Option<usize>,
    /// Stop the run in progress after this many epochs and end the call there (for time-boxed
    /// jobs); the same command resumes that run where it stopped.
    #[arg(long, value_name = "EPOCHS")]
    pub stop_after: Option<u32>,
    /// The model and training options of every run (where the experiment does not sweep or fix
    /// them).
    #[command(flatten)]
    pub run: RunOptions,
}

/// Which experiment, with its own grid options.
#[derive(Clone, Debug, Subcommand)]
pub enum ExperimentCmd {
    /// The paper's Table 5: each variant on every split, every metric as mean ± std over splits.
    Splits {
        /// The variants (table rows), comma-separated.
        #[arg(long, value_enum, value_delimiter = ',', default_value = "pepler")]
        variants: Vec<VariantArg>,
        #[command(flatten)]
        common: ExperimentCommon,
    },
    /// The paper's Fig. 6: BLEU-4 of the tuning strategies over learning rates.
    Strategies {
        /// The strategies (one line each), comma-separated.
        #[arg(
            long,
            value_enum,
            value_delimiter = ',',
            default_value = "sequential,full,prompt-only"
        )]
        strategies: Vec<Strategy>,
        /// The learning rates, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1e-4,1e-3,1e-2")]
        lrs: Vec<f64>,
        #[command(flatten)]
        common: ExperimentCommon,
    },
    /// The paper's Fig. 7: BLEU-4 and RMSE of PEPLER (MF) and PEPLER (MLP) over λ (full
    /// fine-tuning unless --strategy is given).
    Lambda {
        /// The rating heads (one line each), comma-separated: mf, mlp.
        #[arg(long, value_enum, value_delimiter = ',', default_value = "mf,mlp")]
        recs: Vec<RecArg>,
        /// The regularisation coefficients λ, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1e-3,1e-2,1e-1,1,10")]
        lambdas: Vec<f64>,
        #[command(flatten)]
        common: ExperimentCommon,
    },
    /// The paper's Fig. 9: BLEU-4 over GPT-2 sizes. Built-in shapes are RANDOMLY INITIALISED;
    /// give NAME=DIR for pretrained weights of that size.
    Sizes {
        /// The sizes, comma-separated: tiny, small, medium, large, xl, each optionally
        /// `=<Hugging Face GPT-2 directory>` (e.g. medium=models/gpt2-medium).
        #[arg(long, value_delimiter = ',', default_value = "small,medium,large")]
        sizes: Vec<SizeSpec>,
        #[command(flatten)]
        common: ExperimentCommon,
    },
}

#[derive(Clone, Debug, Args)]
pub struct ExperimentArgs {
    #[command(subcommand)]
    pub cmd: ExperimentCmd,
}

fn absolute(p: &std::path::Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

impl ExperimentCommon {
    /// The configuration every run starts from; the grid overrides what it sweeps. Built from
    /// `TrainConfig::defaults` so fields added later keep their defaults.
    pub fn base_config(&self, kind: Kind) -> TrainConfig {
        let mut c = self.run.config(self.data.source());
        if self.run.strategy.is_none() && kind == Kind::Lambda {
            c.strategy = Strategy::Full;
        }
        c
    }

    /// The splits of the grid (see --index-root).
    pub fn split_sources(&self, base: &TrainConfig) -> Result<Vec<SplitSource>> {
        match &self.index_root {
            Some(root) => {
                let Some(data) = &self.data.data else {
                    bail!("--index-root needs --data (the reviews file the split folders index)");
                };
                splits_under(&absolute(data), &absolute(root), &self.splits)
            }
            None => Ok(vec![SplitSource {
                name: "main".into(),
                data: base.data.clone(),
            }]),
        }
    }
}

pub fn run(args: &ExperimentArgs) -> Result<i32> {
    let (common, axes) = match &args.cmd {
        ExperimentCmd::Splits { variants, common } => (
            common,
            Axes::Splits {
                variants: variants.iter().map(|&v| v.into()).collect(),
            },
        ),
        ExperimentCmd::Strategies {
            strategies,
            lrs,
            common,
        } => (
            common,
            Axes::Strategies {
                strategies: strategies.clone(),
                lrs: lrs.clone(),
            },
        ),
        ExperimentCmd::Lambda {
            recs,
            lambdas,
            common,
        } => (
            common,
            Axes::Lambda {
                recs: recs.iter().map(|&r| r.into()).collect(),
                lambdas: lambdas.clone(),
            },
        ),
        ExperimentCmd::Sizes { sizes, common } => (
            common,
            Axes::Sizes {
                sizes: sizes.clone(),
            },
        ),
    };
    for v in match &axes {
        Axes::Strategies { lrs, .. } => lrs.as_slice(),
        Axes::Lambda { lambdas, .. } => lambdas.as_slice(),
        _ => &[],
    } {
        if !(v.is_finite() && *v > 0.0) {
            bail!("swept values must be positive numbers (they are drawn on a log scale), got {v}");
        }
    }
    // Options the grid would silently override are errors that point at the grid's own option.
    match &axes {
        Axes::Sizes { .. } if common.run.model.is_some() || common.run.size.is_some() => {
            bail!("experiment sizes sets the model per run: use --sizes NAME[=DIR], not --model/--size")
        }
        Axes::Strategies { .. } if common.run.strategy.is_some() || common.run.lr.is_some() => {
            bail!("experiment strategies sweeps --strategies and --lrs; drop --strategy/--lr")
        }
        Axes::Lambda { .. } if common.run.rec != RecArg::None => {
            bail!("experiment lambda sets the rating head per run: use --recs, not --rec")
        }
        _ => {}
    }
    super::backend::configure_threads(common.data.run_on.threads)?;
    let kind = axes.kind();
    let base = common.base_config(kind);
    let splits = common.split_sources(&base)?;
    let runs = grid(&axes, &base, &splits, common.run.lr.is_some())?;
    let out = common
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(kind.name()));
    println!(
        "experiment {kind}: {} runs ({} grid points x {} splits) -> {}",
        runs.len(),
        runs.len() / splits.len(),
        splits.len(),
        out.display()
    );
    if let Axes::Sizes { sizes } = &axes {
        if sizes.iter().any(|s| s.hf_dir.is_none()) {
            println!(
                "note: built-in GPT-2 shapes are RANDOMLY INITIALISED (no download): the sweep \
                 measures the architecture, not pre-training; give SIZE=DIR for pretrained weights"
            );
        }
    }
    if let DataSource::Synthetic { .. } = base.data {
        println!("note: the built-in synthetic data set (pass --data for real reviews)");
    }
    let outcome = run_grid(
        &out,
        &runs,
        GridControl {
            device: common.data.run_on.device,
            precision: common.data.run_on.precision,
            max_runs: common.max_runs,
            stop_after_epochs: common.stop_after,
        },
    )?;
    let records = collect(&out, &runs)?;
    let agg = aggregate(kind, &out, &records)?;
    let cmdline = shell_line(&std::env::args().collect::<Vec<_>>());
    write_report(kind, &out, &cmdline, &runs, Some(&outcome), &agg)?;
    println!();
    if agg.rows.is_empty() {
        println!("no run has finished yet");
    } else {
        print!("{}", agg.table_md);
    }
    let finished = outcome.count(RunStatus::Finished) + outcome.count(RunStatus::Skipped);
    println!(
        "\n{finished} of {} runs finished ({} now, {} earlier); report: {}",
        runs.len(),
        outcome.count(RunStatus::Finished),
        outcome.count(RunStatus::Skipped),
        out.join("report.md").display()
    );
    if !outcome.complete() {
        println!("the grid is not complete: run the same command again to continue it");
    }
    Ok(0)
}
