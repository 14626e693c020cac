//! `pepler-cuda score`: score any system's explanations with exactly `evaluate`'s metrics.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::experiment::score::{parse_rating_range, read_features, read_lines, score};
use crate::pipeline::METRICS_FILE;
use crate::train::checkpoint::{Sidecar, MODEL_SIDECAR};
use crate::train::config::DataSource;
use crate::train::run_log::write_atomic;
use crate::train::session::load_dataset;

/// Score explanations from any system with the paper's metrics (BLEU-1/4, ROUGE-1/2/L, USR, FMR,
/// FCR, DIV, and RMSE/MAE when predicted ratings are given), exactly as `evaluate` does: prints
/// the table and writes metrics.json with the same keys.
#[derive(Clone, Debug, Args)]
pub struct ScoreArgs {
    /// JSON lines, one explanation each: "reference", "generated" and "feature" (the record's
    /// ground-truth feature, for FMR), optionally "rating" and "predicted_rating" (then RMSE and
    /// MAE); other fields are ignored, so a run's generated.jsonl scores as it is.
    #[arg(long, value_name = "FILE")]
    pub generated: PathBuf,
    /// The corpus feature set (for FCR, DIV and feature detection): one feature per line.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["data", "run"])]
    pub features: Option<PathBuf>,
    /// Or: the data set whose features (all records) are the corpus feature set: reviews.pickle
    /// (with --index-dir) or JSON lines. Its rating range is then the default for clipping.
    #[arg(long, value_name = "FILE", conflicts_with = "run")]
    pub data: Option<PathBuf>,
    /// With --data: a split folder (needed for reviews.pickle).
    #[arg(long, value_name = "DIR", requires = "data")]
    pub index_dir: Option<PathBuf>,
    /// Or: a run directory; its data set (from model.json) gives the features and rating range.
    #[arg(long, value_name = "DIR")]
    pub run: Option<PathBuf>,
    /// Rating range for clipping predicted ratings, MIN,MAX (default: the data set's when one is
    /// given, else the smallest and largest "rating" in the file).
    #[arg(long, value_name = "MIN,MAX", allow_hyphen_values = true)]
    pub rating_range: Option<String>,
    /// Directory for metrics.json (default: the current directory).
    #[arg(long, default_value = ".", value_name = "DIR")]
    pub out: PathBuf,
}

pub fn run(args: &ScoreArgs) -> Result<i32> {
    let lines = read_lines(&args.generated)?;
    let source = match (&args.data, &args.run) {
        (Some(data), _) => Some(DataSource::Files {
            data: data.clone(),
            index_dir: args.index_dir.clone(),
        }),
        (None, Some(run)) => {
            let path = run.join(MODEL_SIDECAR);
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("--run: reading {}", path.display()))?;
            let side: Sidecar = serde_json::from_str(&text)
                .with_context(|| format!("{}: not a run's model.json", path.display()))?;
            Some(side.train_config.data)
        }
        (None, None) => None,
    };
    let (features, data_range) = match (&args.features, source) {
        (Some(f), _) => (read_features(f)?, None),
        (None, Some(src)) => {
            let ds = load_dataset(&src)?;
            let range = (ds.min_rating as f64, ds.max_rating as f64);
            (ds.features, Some(range))
        }
        (None, None) => bail!(
            "the corpus feature set is needed: pass --features FILE, --data FILE or --run DIR"
        ),
    };
    let range = match &args.rating_range {
        Some(s) => Some(parse_rating_range(s)?),
        None => data_range,
    };
    let report = score(&lines, &features, range)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let path = args.out.join(METRICS_FILE);
    write_atomic(&path, report.to_json().as_bytes())?;
    println!("{report}");
    println!("metrics: {}", path.display());
    Ok(0)
}
