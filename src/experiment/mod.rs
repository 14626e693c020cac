//! The paper's experiments as resumable grids of training runs (`pepler-cuda experiment …`):
//! - `splits`: each variant (PEPLER, PEPLER (MF), PEPLER (MLP), PEPLER-D) on every split folder,
//!   then the paper's Table 5 layout with mean ± standard deviation over the splits;
//! - `strategies`: the three tuning strategies over learning rates (Fig. 6);
//! - `lambda`: PEPLER (MF) and PEPLER (MLP) over the regularisation coefficient λ (Fig. 7);
//! - `sizes`: GPT-2 small / medium / large / XL shapes (Fig. 9).
//!
//! A grid is a list of [`RunSpec`]s, each one training configuration with its own directory under
//! the experiment directory. [`run_grid`] trains them in order through the same [`TrainJob`] as
//! `pepler-cuda train` (so every run is a normal run directory that `evaluate` understands); a run
//! whose `run.json` exists has finished and is skipped; a run with a resume state but no
//! `run.json` was interrupted and is resumed. Afterwards [`aggregate`] writes the tables, figures
//! and `report.md` from whatever has finished.

pub mod aggregate;
pub mod attention;
pub mod plot;
pub mod report;
pub mod score;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::cli::backend::dispatch;
use crate::cli::train::DeviceArg;
use crate::model::config::{PromptKind, RecKind};
use crate::model::sizes::ModelSize;
use crate::pipeline::{TrainJob, METRICS_FILE};
use crate::train::checkpoint;
use crate::train::config::{DataSource, TrainConfig};
use crate::train::run_log::{write_atomic, EpochRecord, RunLog};
use crate::train::strategy::Strategy;
use crate::train::trainer::RunControl;

/// The file that marks a finished run (its configuration and metrics).
pub const RUN_FILE: &str = "run.json";

/// Which experiment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Splits,
    Strategies,
    Lambda,
    Sizes,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Splits => "splits",
            Kind::Strategies => "strategies",
            Kind::Lambda => "lambda",
            Kind::Sizes => "sizes",
        }
    }
    /// What the experiment reproduces, in the paper's words.
    pub fn describe(self) -> &'static str {
        match self {
            Kind::Splits => "every metric averaged over the data splits (the paper's Table 5)",
            Kind::Strategies => {
                "BLEU-4 of the three tuning strategies over learning rates (the paper's Fig. 6)"
            }
            Kind::Lambda => {
                "BLEU-4 and RMSE of PEPLER (MF) and PEPLER (MLP) over the regularisation \
                 coefficient λ (the paper's Fig. 7)"
            }
            Kind::Sizes => "BLEU-4 over GPT-2 model sizes (the paper's Fig. 9)",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One data split of the grid: a name (the split folder's) and where its data come from.
#[derive(Clone, Debug, PartialEq)]
pub struct SplitSource {
    pub name: String,
    pub data: DataSource,
}

/// The split folders under `index_root` (`1`, `2`, … holding `train.index`, `validation.index`,
/// `test.index`) for the reviews file `data`: those named in `only`, else every folder whose name
/// is a number, in numeric order.
pub fn splits_under(data: &Path, index_root: &Path, only: &[String]) -> Result<Vec<SplitSource>> {
    let names: Vec<String> = if only.is_empty() {
        let rd = std::fs::read_dir(index_root)
            .with_context(|| format!("--index-root {}: cannot list it", index_root.display()))?;
        let mut nums: Vec<(u64, String)> = Vec::new();
        for e in rd {
            let e = e.with_context(|| format!("listing {}", index_root.display()))?;
            let name = e.file_name().to_string_lossy().to_string();
            if let Ok(n) = name.parse::<u64>() {
                if e.path().is_dir() {
                    nums.push((n, name));
                }
            }
        }
        nums.sort();
        nums.into_iter().map(|(_, n)| n).collect()
    } else {
        only.to_vec()
    };
    if names.is_empty() {
        bail!(
            "--index-root {}: no split folders (named 1, 2, …) found",
            index_root.display()
        );
    }
    let mut out = Vec::new();
    for name in names {
        let dir = index_root.join(&name);
        for f in ["train.index", "validation.index", "test.index"] {
            if !dir.join(f).is_file() {
                bail!(
                    "split `{name}`: {} is missing (a split folder holds train.index, \
                     validation.index and test.index)",
                    dir.join(f).display()
                );
            }
        }
        out.push(SplitSource {
            name,
            data: DataSource::Files {
                data: data.to_path_buf(),
                index_dir: Some(dir),
            },
        });
    }
    Ok(out)
}

/// A variant of the `splits` experiment (one row of Table 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    /// Continuous prompt, the configured strategy (default sequential), no rating head.
    Pepler,
    /// + MF rating head, full fine-tuning (as the original `reg.py`).
    PeplerMf,
    /// + MLP rating head, full fine-tuning.
    PeplerMlp,
    /// Discrete prompt, full fine-tuning, lr 1e-4 unless --lr is given.
    PeplerD,
}

impl Variant {
    pub fn label(self) -> &'static str {
        match self {
            Variant::Pepler => "PEPLER",
            Variant::PeplerMf => "PEPLER (MF)",
            Variant::PeplerMlp => "PEPLER (MLP)",
            Variant::PeplerD => "PEPLER-D",
        }
    }
    pub fn slug(self) -> &'static str {
        match self {
            Variant::Pepler => "pepler",
            Variant::PeplerMf => "pepler-mf",
            Variant::PeplerMlp => "pepler-mlp",
            Variant::PeplerD => "pepler-d",
        }
    }
}

/// The paper's name of a tuning strategy (Fig. 6's legend).
pub fn strategy_label(s: Strategy) -> &'static str {
    match s {
        Strategy::Sequential => "sequential tuning",
        Strategy::Full => "prompt+LM fine-tuning",
        Strategy::PromptOnly => "fixed-LM prompt tuning",
    }
}

fn strategy_slug(s: Strategy) -> &'static str {
    match s {
        Strategy::Sequential => "sequential",
        Strategy::Full => "full",
        Strategy::PromptOnly => "prompt-only",
    }
}

/// A model of the `sizes` experiment: a built-in shape, optionally with a Hugging Face directory
/// holding pretrained weights of that size.
#[derive(Clone, Debug, PartialEq)]
pub struct SizeSpec {
    pub size: ModelSize,
    pub hf_dir: Option<PathBuf>,
}

impl std::str::FromStr for SizeSpec {
    type Err = anyhow::Error;
    /// `NAME` or `NAME=HF_DIR`.
    fn from_str(s: &str) -> Result<Self> {
        let (name, dir) = match s.split_once('=') {
            Some((n, d)) if !d.trim().is_empty() => (n, Some(PathBuf::from(d.trim()))),
            Some((_, _)) => bail!("size `{s}`: empty directory after `=`"),
            None => (s, None),
        };
        Ok(SizeSpec {
            size: name.parse()?,
            hf_dir: dir.map(|d| std::path::absolute(&d).unwrap_or(d)),
        })
    }
}

/// The grid axes of one experiment (besides the splits).
#[derive(Clone, Debug)]
pub enum Axes {
    Splits {
        variants: Vec<Variant>,
    },
    Strategies {
        strategies: Vec<Strategy>,
        lrs: Vec<f64>,
    },
    Lambda {
        recs: Vec<RecKind>,
        lambdas: Vec<f64>,
    },
    Sizes {
        sizes: Vec<SizeSpec>,
    },
}

impl Axes {
    pub fn kind(&self) -> Kind {
        match self {
            Axes::Splits { .. } => Kind::Splits,
            Axes::Strategies { .. } => Kind::Strategies,
            Axes::Lambda { .. } => Kind::Lambda,
            Axes::Sizes { .. } => Kind::Sizes,
        }
    }
}

/// One training run of a grid.
#[derive(Clone, Debug, PartialEq)]
pub struct RunSpec {
    /// The line of a figure / row of a table this run belongs to (e.g. `PEPLER (MF)`).
    pub variant: String,
    /// The swept value: learning rate, λ, or the size's index (None for `splits`).
    pub x: Option<f64>,
    /// The swept value as printed (`1e-3`, `medium`).
    pub x_name: String,
    /// The split's name.
    pub split: String,
    /// Directory relative to the experiment directory.
    pub rel_dir: PathBuf,
    pub cfg: TrainConfig,
}

/// A number as a directory name and label: `1e-3`, `3e-4`, `1e0`.
pub fn num_name(v: f64) -> String {
    format!("{v:e}")
}

/// Every run of an experiment: the axes' cross product (in the order given) times the splits.
/// `base` holds the common options; each point overrides what its axes sweep. `lr_given` says
/// whether the user set --lr (else PEPLER-D takes its own default of 1e-4).
pub fn grid(
    axes: &Axes,
    base: &TrainConfig,
    splits: &[SplitSource],
    lr_given: bool,
) -> Result<Vec<RunSpec>> {
    if splits.is_empty() {
        bail!("an experiment needs at least one split");
    }
    // (variant, x, x_name, rel_dir prefix, config without the data source)
    let mut points: Vec<(String, Option<f64>, String, PathBuf, TrainConfig)> = Vec::new();
    match axes {
        Axes::Splits { variants } => {
            if variants.is_empty() {
                bail!("--variants: at least one variant");
            }
            for &v in variants {
                let mut c = base.clone();
                match v {
                    Variant::Pepler => {}
                    Variant::PeplerMf | Variant::PeplerMlp => {
                        c.rec = if v == Variant::PeplerMf {
                            RecKind::Mf
                        } else {
                            RecKind::Mlp
                        };
                        c.strategy = Strategy::Full;
                    }
                    Variant::PeplerD => {
                        c.prompt = PromptKind::Discrete;
                        c.strategy = Strategy::Full;
                        c.rec = RecKind::None;
                        if !lr_given {
                            c.lr = TrainConfig::defaults(PromptKind::Discrete).lr;
                        }
                    }
                }
                points.push((v.label().into(), None, String::new(), v.slug().into(), c));
            }
        }
        Axes::Strategies { strategies, lrs } => {
            if strategies.is_empty() || lrs.is_empty() {
                bail!("--strategies and --lrs: at least one value each");
            }
            for &s in strategies {
                for &lr in lrs {
                    let mut c = base.clone();
                    c.strategy = s;
                    c.lr = lr;
                    let rel = Path::new(strategy_slug(s)).join(format!("lr-{}", num_name(lr)));
                    points.push((strategy_label(s).into(), Some(lr), num_name(lr), rel, c));
                }
            }
        }
        Axes::Lambda { recs, lambdas } => {
            if recs.is_empty() || lambdas.is_empty() {
                bail!("--recs and --lambdas: at least one value each");
            }
            for &r in recs {
                let (label, slug) = match r {
                    RecKind::Mf => ("PEPLER (MF)", "mf"),
                    RecKind::Mlp => ("PEPLER (MLP)", "mlp"),
                    RecKind::None => bail!("--recs: the λ sweep needs a rating head (mf or mlp)"),
                };
                for &l in lambdas {
                    let mut c = base.clone();
                    c.rec = r;
                    c.rec_lambda = l as f32;
                    let rel = Path::new(slug).join(format!("lambda-{}", num_name(l)));
                    points.push((label.into(), Some(l), num_name(l), rel, c));
                }
            }
        }
        Axes::Sizes { sizes } => {
            if sizes.is_empty() {
                bail!("--sizes: at least one size");
            }
            for (k, s) in sizes.iter().enumerate() {
                let mut c = base.clone();
                c.model_dir = s.hf_dir.clone();
                c.model_size = if s.hf_dir.is_some() {
                    None
                } else {
                    Some(s.size)
                };
                let variant = if s.hf_dir.is_some() {
                    "PEPLER (pretrained)"
                } else {
                    "PEPLER (random init)"
                };
                points.push((
                    variant.into(),
                    Some(k as f64),
                    s.size.name().into(),
                    s.size.name().into(),
                    c,
                ));
            }
        }
    }
    let mut runs = Vec::new();
    for (variant, x, x_name, rel, cfg) in points {
        for sp in splits {
            let mut cfg = cfg.clone();
            cfg.data = sp.data.clone();
            cfg.validate()
                .with_context(|| format!("run {}", rel.display()))?;
            runs.push(RunSpec {
                variant: variant.clone(),
                x,
                x_name: x_name.clone(),
                split: sp.name.clone(),
                rel_dir: rel.join(format!("split-{}", sp.name)),
                cfg,
            });
        }
    }
    Ok(runs)
}

/// What `run.json` holds: the finished run's configuration, where it sits in the grid, and its
/// test metrics (`metrics.json`'s numbers; null where a metric does not apply).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub variant: String,
    pub x: Option<f64>,
    pub x_name: String,
    pub split: String,
    pub test_loss: Option<f64>,
    pub metrics: BTreeMap<String, Option<f64>>,
    /// Wall-clock seconds of the call that finished the run.
    pub seconds: f64,
    pub config: TrainConfig,
}

/// Reads `metrics.json` (as `evaluate` writes it) into metric name -> value.
pub fn read_metrics(path: &Path) -> Result<BTreeMap<String, Option<f64>>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    let obj = v
        .as_object()
        .with_context(|| format!("{}: not a JSON object", path.display()))?;
    Ok(obj.iter().map(|(k, v)| (k.clone(), v.as_f64())).collect())
}

/// Reads a finished run's `run.json` (None when the run has not finished).
pub fn read_run_record(dir: &Path) -> Result<Option<RunRecord>> {
    let path = dir.join(RUN_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let rec = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a run record (delete it to rerun)", path.display()))?;
    Ok(Some(rec))
}

/// The epoch records of a run directory's `metrics.jsonl` (empty when absent).
pub fn read_epoch_records(dir: &Path) -> Result<Vec<EpochRecord>> {
    let path = dir.join(RunLog::METRICS_FILE);
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| {
                format!("{}: line {} is not an epoch record", path.display(), i + 1)
            })
        })
        .collect()
}

/// Writes `loss_curve.png` (and refreshes `loss_curve.svg`) in a run directory from its
/// `metrics.jsonl`; does nothing when the run has no epochs yet.
pub fn write_loss_curve(dir: &Path) -> Result<()> {
    let records = read_epoch_records(dir)?;
    if records.is_empty() {
        return Ok(());
    }
    plot::loss_curve_figure(&records)?.write(dir, "loss_curve")?;
    Ok(())
}

/// How [`run_grid`] runs.
#[derive(Clone, Copy, Debug)]
pub struct GridControl {
    pub device: DeviceArg,
    /// Activation precision of every run (`None`: the device's default).
    pub precision: Option<crate::precision::Precision>,
    /// Train at most this many runs in this call (finished runs that are skipped do not count).
    pub max_runs: Option<usize>,
    /// Stop the run in progress after so many epochs (this call) and end the grid there, leaving
    /// a state the next call resumes: for time-boxed jobs.
    pub stop_after_epochs: Option<u32>,
}

/// What happened to one run in this call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunStatus {
    /// Finished in an earlier call.
    Skipped,
    /// Trained (or resumed) and evaluated now.
    Finished,
    /// Stopped early (`stop_after_epochs`); the next call resumes it.
    Stopped,
    /// Not reached (`max_runs` or an earlier stop).
    Pending,
}

/// The outcome of [`run_grid`], one status per run in grid order.
#[derive(Clone, Debug)]
pub struct GridOutcome {
    pub status: Vec<RunStatus>,
}

impl GridOutcome {
    pub fn count(&self, s: RunStatus) -> usize {
        self.status.iter().filter(|&&x| x == s).count()
    }
    /// Every run has finished (now or earlier).
    pub fn complete(&self) -> bool {
        self.status
            .iter()
            .all(|s| matches!(s, RunStatus::Skipped | RunStatus::Finished))
    }
}

fn short_metrics(m: &BTreeMap<String, Option<f64>>) -> String {
    let get = |k: &str| m.get(k).copied().flatten();
    let mut s = format!(
        "BLEU-4 {:.3}  ROUGE-1 F {:.3}  FMR {:.3}",
        get("bleu_4").unwrap_or(f64::NAN),
        get("rouge_1_f").unwrap_or(f64::NAN),
        get("fmr").unwrap_or(f64::NAN)
    );
    if let Some(r) = get("rmse") {
        s.push_str(&format!("  RMSE {r:.3}"));
    }
    s
}

/// Prints a progress line on stdout (also when stdout is not a terminal, where indicatif's own
/// `println` prints nothing), with the stderr bar lifted out of the way.
fn say(bar: &ProgressBar, line: String) {
    bar.suspend(|| println!("{line}"));
}

/// Trains every run of `runs` that has not finished, in order, under `exp_dir` (see the module
/// docs); prints one line per run and keeps an overall progress bar on stderr.
pub fn run_grid(exp_dir: &Path, runs: &[RunSpec], control: GridControl) -> Result<GridOutcome> {
    std::fs::create_dir_all(exp_dir)
        .with_context(|| format!("creating the experiment directory {}", exp_dir.display()))?;
    let n = runs.len();
    let bar = ProgressBar::with_draw_target(Some(n as u64), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("experiment [{bar:30}] {pos}/{len} runs {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let mut status = vec![RunStatus::Pending; n];
    let mut trained = 0usize;
    for (k, run) in runs.iter().enumerate() {
        let dir = exp_dir.join(&run.rel_dir);
        let tag = format!(
            "[{}/{}] {}{} split {}",
            k + 1,
            n,
            run.variant,
            if run.x_name.is_empty() {
                String::new()
            } else {
                format!(" @ {}", run.x_name)
            },
            run.split
        );
        if let Some(rec) = read_run_record(&dir)? {
            if rec.config != run.cfg {
                bail!(
                    "{}: this run finished with other options than the experiment asks for now; \
                     use another --out or delete the run directory to rerun it",
                    dir.join(RUN_FILE).display()
                );
            }
            if !dir.join("loss_curve.png").exists() {
                write_loss_curve(&dir)?;
            }
            status[k] = RunStatus::Skipped;
            say(
                &bar,
                format!(
                    "{tag}: finished earlier, skipped | {}",
                    short_metrics(&rec.metrics)
                ),
            );
            bar.inc(1);
            continue;
        }
        if control.max_runs.is_some_and(|m| trained >= m) {
            say(
                &bar,
                format!(
                    "stopping: --max-runs {} reached; run the same command again to continue",
                    trained
                ),
            );
            break;
        }
        let resume = checkpoint::has_state(&dir);
        say(
            &bar,
            format!(
                "{tag}: {} -> {}",
                if resume { "resuming" } else { "training" },
                dir.display()
            ),
        );
        bar.set_message(format!("({})", run.rel_dir.display()));
        let t0 = Instant::now();
        let summary = dispatch(
            control.device,
            control.precision,
            TrainJob {
                cfg: run.cfg.clone(),
                out_dir: dir.clone(),
                control: RunControl {
                    resume,
                    // the grid owns its run directories: one without a resumable state (killed
                    // before its first checkpoint) starts over
                    overwrite: !resume,
                    stop_after_epochs: control.stop_after_epochs,
                    no_step_graphs: false,
                },
                evaluate: true,
            },
        )
        .with_context(|| format!("run {}", dir.display()))?;
        trained += 1;
        if !summary.finished {
            status[k] = RunStatus::Stopped;
            say(
                &bar,
                format!(
                "{tag}: stopped after --stop-after {} epochs; run the same command again to resume",
                control.stop_after_epochs.unwrap_or(0)
            ),
            );
            break;
        }
        let metrics = read_metrics(&dir.join(METRICS_FILE))?;
        let rec = RunRecord {
            variant: run.variant.clone(),
            x: run.x,
            x_name: run.x_name.clone(),
            split: run.split.clone(),
            test_loss: summary.test_loss,
            metrics,
            seconds: t0.elapsed().as_secs_f64(),
            config: run.cfg.clone(),
        };
        write_loss_curve(&dir)?;
        // run.json last: it is the mark of a finished run.
        write_atomic(
            &dir.join(RUN_FILE),
            serde_json::to_string_pretty(&rec)?.as_bytes(),
        )?;
        status[k] = RunStatus::Finished;
        say(
            &bar,
            format!(
                "{tag}: done in {:.1}s | {}",
                rec.seconds,
                short_metrics(&rec.metrics)
            ),
        );
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(GridOutcome { status })
}

/// The finished runs' records, in grid order (unfinished runs are left out).
pub fn collect(exp_dir: &Path, runs: &[RunSpec]) -> Result<Vec<(RunSpec, RunRecord)>> {
    let mut out = Vec::new();
    for r in runs {
        if let Some(rec) = read_run_record(&exp_dir.join(&r.rel_dir))? {
            out.push((r.clone(), rec));
        }
    }
    Ok(out)
}
