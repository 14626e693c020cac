//! `pepler-cuda train`: train PEPLER, then generate and evaluate on the test split.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, ValueEnum};

use crate::backend::AdamWVariant;
use crate::model::config::{PromptKind, RecKind};
use crate::train::config::{DataSource, TrainConfig};
use crate::train::strategy::{Stage1Wte, Strategy};
use crate::train::trainer::RunControl;

/// `path` made absolute (without touching the file system), so a run's configuration still
/// names its files when `evaluate` or `--resume` runs from another directory.
fn absolute(path: &std::path::Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The prompt: continuous (PEPLER) or discrete (PEPLER-D).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PromptArg {
    /// Learned user and item vectors before the text (PEPLER).
    Continuous,
    /// Item-feature words before the text, embedded by GPT-2 (PEPLER-D).
    Discrete,
}

/// The rating head used as a regulariser.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RecArg {
    /// No rating head.
    None,
    /// Matrix factorisation: rating = u . i.
    Mf,
    /// MLP on [u, i]: hidden 400 x 3 with sigmoids, then one output.
    Mlp,
}

impl From<RecArg> for RecKind {
    fn from(r: RecArg) -> RecKind {
        match r {
            RecArg::None => RecKind::None,
            RecArg::Mf => RecKind::Mf,
            RecArg::Mlp => RecKind::Mlp,
        }
    }
}

/// Where to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DeviceArg {
    /// The GPU when one is usable, else the CPU (says which and why).
    Auto,
    /// The CPU reference backend (fp32, all cores).
    Cpu,
    /// An NVIDIA GPU through CUDA.
    Cuda,
    /// The emulated CUDA device (kernels compiled for the CPU; for testing, slow).
    Emu,
}

/// Options shared by every subcommand that loads data and a model.
// `allow_negative_numbers`: `--seed -3` is a bad value to report as such, not an unknown option.
#[derive(Clone, Debug, Args)]
#[command(allow_negative_numbers = true)]
pub struct DataArgs {
    /// Reviews: the original `reviews.pickle` (needs --index-dir) or a JSON-lines file with
    /// user, item, rating, template = [feature, adjective, sentence, sentiment] per line.
    /// Without it, the built-in synthetic dataset is used.
    #[arg(long, value_name = "FILE")]
    pub data: Option<PathBuf>,
    /// Split folder with train.index, validation.index, test.index (e.g. TripAdvisor/1).
    /// For JSON lines it is optional (default: a seeded 8:1:1 split).
    #[arg(long, value_name = "DIR")]
    pub index_dir: Option<PathBuf>,
    /// Built-in synthetic dataset: number of users.
    #[arg(long, default_value_t = 100)]
    pub synthetic_users: usize,
    /// Built-in synthetic dataset: number of items.
    #[arg(long, default_value_t = 120)]
    pub synthetic_items: usize,
    /// Built-in synthetic dataset: number of reviews (split 8:1:1).
    #[arg(long, default_value_t = 6000)]
    pub synthetic_reviews: usize,
    /// Built-in synthetic dataset: generator seed.
    #[arg(long, default_value_t = 42)]
    pub synthetic_seed: u64,
    /// Where and how the job computes.
    #[command(flatten)]
    pub run_on: super::backend::DeviceArgs,
}

impl DataArgs {
    pub fn source(&self) -> DataSource {
        match &self.data {
            Some(data) => DataSource::Files {
                data: absolute(data),
                index_dir: self.index_dir.as_deref().map(absolute),
            },
            None => DataSource::Synthetic {
                users: self.synthetic_users,
                items: self.synthetic_items,
                reviews: self.synthetic_reviews,
                seed: self.synthetic_seed,
            },
        }
    }
}

/// The model and training options of a run: `train`'s, and every run of an `experiment` grid
/// where the experiment does not sweep or fix them.
#[derive(Clone, Debug, Args)]
pub struct RunOptions {
    /// A Hugging Face GPT-2 directory (config.json + model.safetensors [+ tokenizer.json]), e.g.
    /// a download of `gpt2`. Without it: a built-in tiny GPT-2 (64 wide, 2 layers), randomly
    /// initialised.
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Without --model: a built-in GPT-2 shape, randomly initialised (tiny, small, medium, large,
    /// xl); default: tiny.
    #[arg(long, value_name = "SIZE", conflicts_with = "model")]
    pub size: Option<crate::model::sizes::ModelSize>,
    /// A tokenizer.json (GPT-2 BPE) instead of the model directory's or the built-in one.
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,
    /// Prompt kind.
    #[arg(long, value_enum, default_value_t = PromptArg::Continuous)]
    pub prompt: PromptArg,
    /// Training strategy: sequential (prompts first with the LM frozen, then everything),
    /// prompt-only, or full. Default: sequential (continuous), full (discrete); the experiments'
    /// λ sweep and rating-head variants default to full, as the original reg.py.
    #[arg(long, value_enum)]
    pub strategy: Option<Strategy>,
    /// Whether the word-embedding table trains in the prompt stage: `train` reproduces the
    /// original code (which trains it because resizing the vocabulary makes a fresh table),
    /// `freeze` follows the paper (the LM is frozen).
    #[arg(long, value_enum, default_value_t = Stage1Wte::Train)]
    pub stage1_wte: Stage1Wte,
    /// Recommendation as regularisation: a rating head on the prompt vectors.
    #[arg(long, value_enum, default_value_t = RecArg::None)]
    pub rec: RecArg,
    /// Weight of the rating loss: loss = text loss + lambda * MSE (the original's rating_reg).
    #[arg(long = "lambda", default_value_t = 0.01)]
    pub rec_lambda: f32,
    /// Learning rate (default: 1e-3; 1e-4 for the discrete prompt).
    #[arg(long)]
    pub lr: Option<f64>,
    /// AdamW formula: `torch` (torch.optim.AdamW, what the parity fixtures check) or `hf`
    /// (transformers.AdamW, which the original scripts use: eps before the bias correction,
    /// weight decay after the update).
    #[arg(long, value_enum, default_value_t = AdamWVariant::Torch)]
    pub adamw: AdamWVariant,
    /// AdamW weight decay (decoupled).
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// Batch size.
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// Maximum epochs per stage (early stopping usually ends a stage first). 0: no training.
    #[arg(long, default_value_t = 100)]
    pub epochs: u32,
    /// Early stopping: a stage ends after this many epochs without a new best validation loss.
    #[arg(long, default_value_t = 5)]
    pub endure: u32,
    /// Explanations are cut to this many BPE tokens; generation stops after as many.
    #[arg(long, default_value_t = 20)]
    pub max_words: usize,
    /// Dropout probability during training (GPT-2's residual, embedding and attention dropout).
    #[arg(long, default_value_t = 0.1)]
    pub dropout: f32,
    /// Seed for initialisation, batch order and dropout: same seed, same bits.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Keep GPT-2's full 50260-token vocabulary in the built-in models (default: only the tokens
    /// that occur in the data, renumbered densely — much faster, same tokenizer).
    #[arg(long)]
    pub full_vocab: bool,
}

impl RunOptions {
    /// The run configuration these options describe, on `data` (`TrainConfig::defaults` of the
    /// prompt kind for what is not given, so fields added later keep their defaults).
    pub fn config(&self, data: DataSource) -> TrainConfig {
        let prompt = match self.prompt {
            PromptArg::Continuous => PromptKind::Continuous,
            PromptArg::Discrete => PromptKind::Discrete,
        };
        let mut c = TrainConfig::defaults(prompt);
        c.data = data;
        c.model_dir = self.model.as_deref().map(absolute);
        c.model_size = self.size;
        c.tokenizer = self.tokenizer.as_deref().map(absolute);
        if let Some(s) = self.strategy {
            c.strategy = s;
        }
        c.stage1_wte = self.stage1_wte;
        c.rec = self.rec.into();
        c.rec_lambda = self.rec_lambda;
        if let Some(lr) = self.lr {
            c.lr = lr;
        }
        c.adamw = self.adamw;
        c.weight_decay = self.weight_decay;
        c.batch_size = self.batch_size;
        c.epochs = self.epochs;
        c.endure = self.endure;
        c.max_words = self.max_words;
        c.dropout = self.dropout;
        c.seed = self.seed;
        c.full_vocab = self.full_vocab;
        c
    }
}

/// Train PEPLER (sequential tuning by default), keep the best model by validation loss, then
/// generate explanations for the test split and print the paper's metrics table.
///
/// With no options: the built-in synthetic dataset and a built-in tiny GPT-2 (random init).
#[derive(Clone, Debug, Args)]
#[command(allow_negative_numbers = true)]
pub struct TrainArgs {
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub run: RunOptions,
    /// Clip the global gradient norm to this value before each optimizer step (torch's
    /// clip_grad_norm_; computed and applied on the device). Default: no clipping, as the original.
    #[arg(long, value_name = "MAX_NORM")]
    pub clip_grad_norm: Option<f32>,
    /// Ablation: keep the user/item prompt vectors at zero (they never train), to measure what
    /// the prompts contribute.
    #[arg(long)]
    pub zero_prompts: bool,
    /// Output directory: checkpoints, metrics.jsonl, loss_curve.svg, generated.jsonl, metrics.json.
    #[arg(long, default_value = "runs/pepler", value_name = "DIR")]
    pub out: PathBuf,
    /// Continue the interrupted run in --out (same options required).
    #[arg(long)]
    pub resume: bool,
    /// Delete the run already in --out (best model, resume state, logs) and start over. Without
    /// it, training into a directory that holds a run is refused.
    #[arg(long)]
    pub overwrite: bool,
    /// Stop after this many epochs (this invocation), leaving a state that --resume continues:
    /// for time-boxed jobs.
    #[arg(long, value_name = "EPOCHS")]
    pub stop_after: Option<u32>,
    /// Skip generation and evaluation on the test split after training.
    #[arg(long)]
    pub no_eval: bool,
    /// On a GPU, capture each training step as a graph (once per batch shape) and replay it:
    /// one launch per step instead of hundreds. `off` launches kernel by kernel (same bits).
    #[arg(long, value_enum, default_value_t = Toggle::On)]
    pub graph: Toggle,
}

/// `on` or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Toggle {
    On,
    Off,
}

impl TrainArgs {
    /// The run configuration these options describe.
    pub fn config(&self) -> TrainConfig {
        TrainConfig {
            zero_prompts: self.zero_prompts,
            clip_grad_norm: self.clip_grad_norm,
            ..self.run.config(self.data.source())
        }
    }
}

/// The most CPU worker threads `--threads` may ask for (each thread reserves a stack).
pub const MAX_THREADS: usize = 1024;

/// Checks `--threads` before any thread is created.
pub fn check_threads(threads: Option<usize>) -> Result<()> {
    if let Some(n) = threads.filter(|&n| n > MAX_THREADS) {
        anyhow::bail!("--threads {n} is too many: at most {MAX_THREADS}");
    }
    Ok(())
}

pub fn run(args: &TrainArgs) -> Result<i32> {
    check_threads(args.data.run_on.threads)?;
    crate::cli::backend::configure_threads(args.data.run_on.threads)?;
    let job = crate::pipeline::TrainJob {
        cfg: args.config(),
        out_dir: args.out.clone(),
        control: RunControl {
            resume: args.resume,
            overwrite: args.overwrite,
            stop_after_epochs: args.stop_after,
            no_step_graphs: args.graph == Toggle::Off,
        },
        evaluate: !args.no_eval,
    };
    crate::cli::backend::dispatch(args.data.run_on.device, args.data.run_on.precision, job)?;
    Ok(0)
}
