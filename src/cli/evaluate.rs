//! `pepler-cuda generate` and `pepler-cuda evaluate`: a trained run's best model on one split.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, ValueEnum};

use crate::data::Split;
use crate::pipeline::{EvaluateJob, GENERATED_FILE, METRICS_FILE};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SplitArg {
    Train,
    Validation,
    Test,
}

impl From<SplitArg> for Split {
    fn from(s: SplitArg) -> Split {
        match s {
            SplitArg::Train => Split::Train,
            SplitArg::Validation => Split::Valid,
            SplitArg::Test => Split::Test,
        }
    }
}

/// Generate explanations (greedy, KV cache) with a trained run's best model, for every record of a
/// split of the run's dataset, and score them with the paper's metrics.
#[derive(Clone, Debug, Args)]
#[command(allow_negative_numbers = true)]
pub struct EvaluateArgs {
    /// The run directory `train` wrote (holds model.safetensors and model.json).
    #[arg(long, default_value = "runs/pepler", value_name = "DIR")]
    pub run: PathBuf,
    /// Which split of the run's dataset.
    #[arg(long, value_enum, default_value_t = SplitArg::Test)]
    pub split: SplitArg,
    /// Output directory for generated.jsonl and metrics.json (default: the run directory).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Batch size for generation (default: the run's).
    #[arg(long, default_value_t = 0)]
    pub batch_size: usize,
    /// Where and how the job computes.
    #[command(flatten)]
    pub run_on: super::backend::DeviceArgs,
}

/// Checks the options that have a bound before any work starts.
fn check(args: &EvaluateArgs) -> Result<()> {
    super::train::check_threads(args.run_on.threads)?;
    let max = crate::train::config::MAX_BATCH_SIZE;
    if args.batch_size > max {
        anyhow::bail!(
            "--batch-size {} is too large: at most {max}",
            args.batch_size
        );
    }
    Ok(())
}

fn job(args: &EvaluateArgs) -> EvaluateJob {
    EvaluateJob {
        run_dir: args.run.clone(),
        split: args.split.into(),
        out_dir: args.out.clone().unwrap_or_else(|| args.run.clone()),
        batch_size: args.batch_size,
    }
}

/// `generate`: writes generated.jsonl (and metrics.json) and prints where.
pub fn run_generate(args: &EvaluateArgs) -> Result<i32> {
    check(args)?;
    super::backend::configure_threads(args.run_on.threads)?;
    let j = job(args);
    let out = j.out_dir.join(GENERATED_FILE);
    super::backend::dispatch(args.run_on.device, args.run_on.precision, j)?;
    println!("{}", out.display());
    Ok(0)
}

/// `evaluate`: generates, then prints the metrics table and writes metrics.json.
pub fn run_evaluate(args: &EvaluateArgs) -> Result<i32> {
    check(args)?;
    super::backend::configure_threads(args.run_on.threads)?;
    let j = job(args);
    let out = j.out_dir.join(METRICS_FILE);
    let report = super::backend::dispatch(args.run_on.device, args.run_on.precision, j)?;
    println!("{report}");
    println!("metrics: {}", out.display());
    Ok(0)
}
