//! The jobs behind the subcommands, each runnable on any backend ([`OnBackend`]):
//! - [`TrainJob`]: load data and model, train, then (optionally) generate + evaluate on the test split;
//! - [`EvaluateJob`]: load a trained model, generate for a split, score it.
//!
//! Generation and scoring ([`generate_and_score`]) are shared by both, so `train` ends with exactly
//! what `evaluate` prints.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::backend::{Act, Backend};
use crate::cli::backend::OnBackend;
use crate::data::{EncodedSplit, Padding, Split};
use crate::generate::{greedy, GenPrompt};
use crate::metrics::text::ids2tokens_batch;
use crate::metrics::{evaluate_all, EvalInputs, FeatureIndex, MetricsReport, RatingInputs};
use crate::model::pepler::{ForwardOptions, Pepler};
use crate::train::checkpoint;
use crate::train::config::TrainConfig;
use crate::train::run_dir;
use crate::train::run_log::write_atomic;
use crate::train::session::Session;
use crate::train::trainer::{self, evaluate_loss, RunControl};

/// Names of the files a scored split leaves in the output directory.
pub const GENERATED_FILE: &str = "generated.jsonl";
pub const METRICS_FILE: &str = "metrics.json";

/// One line of `generated.jsonl`.
#[derive(Debug, Serialize)]
pub struct GeneratedRecord<'a> {
    pub user: &'a str,
    pub item: &'a str,
    pub rating: f32,
    pub predicted_rating: Option<f32>,
    pub feature: &'a str,
    pub reference: String,
    pub generated: String,
}

/// Generates an explanation for every record of `split` (greedy, `max_words` tokens at most),
/// writes `generated.jsonl` and `metrics.json` into `out_dir`, and returns the metrics.
pub fn generate_and_score<B: Backend, A: Act>(
    model: &mut Pepler<B, A>,
    session: &Session,
    split: &EncodedSplit,
    batch_size: usize,
    max_words: usize,
    out_dir: &Path,
) -> Result<MetricsReport> {
    if split.is_empty() {
        bail!(
            "{}: the {:?} split is empty: nothing to generate",
            session.dataset.source,
            split.split
        );
    }
    let t0 = Instant::now();
    let mut generated: Vec<Vec<u32>> = Vec::with_capacity(split.len());
    let mut predicted: Vec<f32> = Vec::new();
    for batch in split.batches(batch_size, Padding::Batch) {
        let mb = batch.to_model_batch();
        let out = model.forward(&mb, ForwardOptions::default())?;
        if let Some(r) = out.rating {
            predicted.extend(r);
        }
        let prompt = match &batch.prompt {
            Some(tokens) => GenPrompt::Discrete {
                tokens,
                p: batch.prompt_len,
            },
            None => GenPrompt::Continuous {
                users: &batch.users,
                items: &batch.items,
            },
        };
        generated.extend(greedy(model, prompt, max_words)?);
    }
    let secs = t0.elapsed().as_secs_f64();
    let tok = &session.tokenizer;
    let generated: Vec<Vec<u32>> = generated
        .iter()
        .map(|g| session.tokenizer_ids(g))
        .collect::<Result<_>>()?;
    let gen_tokens = ids2tokens_batch(&generated, tok)?;
    let refs: Vec<Vec<u32>> = split
        .sequences
        .iter()
        .map(|s| session.tokenizer_ids(&s[1..]))
        .collect::<Result<_>>()?;
    let ref_tokens = ids2tokens_batch(&refs, tok)?;
    let features = FeatureIndex::new(session.dataset.features.iter().cloned());
    let truth: Vec<f64> = split.ratings.iter().map(|&r| r as f64).collect();
    let pred: Vec<f64> = predicted.iter().map(|&r| r as f64).collect();
    let ratings = (!predicted.is_empty()).then_some(RatingInputs {
        truth: &truth,
        predicted: &pred,
        min_rating: session.dataset.min_rating as f64,
        max_rating: session.dataset.max_rating as f64,
    });
    let report = evaluate_all(&EvalInputs {
        generated: &gen_tokens,
        references: &ref_tokens,
        test_features: &split.features,
        features: &features,
        ratings,
    })?;

    let mut lines = String::new();
    for (k, &rid) in split.review_ids.iter().enumerate() {
        let r = &session.dataset.reviews[rid];
        let rec = GeneratedRecord {
            user: session.dataset.users.name(r.user).unwrap_or(""),
            item: session.dataset.items.name(r.item).unwrap_or(""),
            rating: r.rating,
            predicted_rating: predicted.get(k).copied(),
            feature: &r.feature,
            reference: ref_tokens[k].join(" "),
            generated: gen_tokens[k].join(" "),
        };
        lines.push_str(&serde_json::to_string(&rec)?);
        lines.push('\n');
    }
    write_atomic(&out_dir.join(GENERATED_FILE), lines.as_bytes())?;
    write_atomic(&out_dir.join(METRICS_FILE), report.to_json().as_bytes())?;
    eprintln!(
        "generated {} explanations in {:.1}s -> {}",
        split.len(),
        secs,
        out_dir.join(GENERATED_FILE).display()
    );
    Ok(report)
}

/// An option value as the command line spells it (its serde name, e.g. `prompt-only`).
fn cli_name<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::from("?"),
    }
}

/// `pepler-cuda train`.
pub struct TrainJob {
    pub cfg: TrainConfig,
    pub out_dir: PathBuf,
    pub control: RunControl,
    /// Generate and score the test split after training.
    pub evaluate: bool,
}

/// What `train` reports.
pub struct TrainSummary {
    /// False when the call stopped early (`--stop-after`); the run can be resumed.
    pub finished: bool,
    pub test_loss: Option<f64>,
    pub metrics: Option<MetricsReport>,
}

impl OnBackend for TrainJob {
    type Out = TrainSummary;

    fn run<B: Backend, A: Act>(self, be: B) -> Result<TrainSummary> {
        let cfg = &self.cfg;
        cfg.validate()?;
        // Before the (possibly long) data load: the directory is ours, and holds no run that a
        // fresh start would destroy. The lock is held until the last file is written.
        let _lock = run_dir::prepare(&self.out_dir, self.control.resume, self.control.overwrite)?;
        let session = Session::load(cfg)?;
        let mc = session.model_config(cfg)?;
        println!(
            "data: {} | {} users, {} items | train {} / valid {} / test {}",
            session.dataset.source,
            session.dataset.n_users(),
            session.dataset.n_items(),
            session.train.len(),
            session.valid.len(),
            session.test.len()
        );
        match &cfg.model_dir {
            None => println!(
                "model: built-in {} GPT-2 ({} layers, {} wide, {} heads), RANDOMLY INITIALISED — \
                 pass --model <gpt2 dir> for pretrained weights",
                cfg.model_size.map_or("tiny", |s| s.name()),
                mc.n_layer,
                mc.n_embd,
                mc.n_head
            ),
            Some(dir) => println!(
                "model: GPT-2 from {} ({} layers, {} wide)",
                dir.display(),
                mc.n_layer,
                mc.n_embd
            ),
        }
        println!(
            "run: {} prompt, strategy {}, rec {} (lambda {}), lr {}, AdamW {}{} | backend {} | out {}",
            cli_name(&cfg.prompt),
            cli_name(&cfg.strategy),
            cli_name(&cfg.rec),
            cfg.rec_lambda,
            cfg.lr,
            cli_name(&cfg.adamw),
            if cfg.zero_prompts {
                ", prompts zeroed (ablation)"
            } else {
                ""
            },
            be.name(),
            self.out_dir.display()
        );
        let params = session.initial_params(cfg, &mc)?;
        let mut model = Pepler::<B, A>::with_activations(be, &params)?;
        let t0 = Instant::now();
        let outcome = trainer::train(&mut model, &session, cfg, &self.out_dir, self.control)?;
        if !outcome.finished {
            return Ok(TrainSummary {
                finished: false,
                test_loss: None,
                metrics: None,
            });
        }
        println!(
            "trained {} epochs ({} steps) in {:.1}s; best model: {}",
            outcome.epochs_run,
            outcome.global_step,
            t0.elapsed().as_secs_f64(),
            self.out_dir.join(checkpoint::MODEL_FILE).display()
        );
        let test = evaluate_loss(&mut model, &session.test, cfg.batch_size)?;
        println!(
            "test: text loss {:.4} (ppl {:.2}){}",
            test.text,
            test.text.exp(),
            test.rating
                .map_or(String::new(), |r| format!(", rating mse {r:.4}"))
        );
        let metrics = if self.evaluate {
            let m = generate_and_score(
                &mut model,
                &session,
                &session.test,
                cfg.batch_size,
                cfg.max_words,
                &self.out_dir,
            )
            .context("evaluating on the test split")?;
            println!("\n{m}");
            Some(m)
        } else {
            None
        };
        Ok(TrainSummary {
            finished: true,
            test_loss: Some(test.text),
            metrics,
        })
    }
}

/// `pepler-cuda generate` / `pepler-cuda evaluate`: a trained run's best model on one split.
pub struct EvaluateJob {
    /// The run directory (`model.safetensors` + `model.json`).
    pub run_dir: PathBuf,
    pub split: Split,
    /// Where `generated.jsonl` / `metrics.json` go (default: the run directory).
    pub out_dir: PathBuf,
    pub batch_size: usize,
}

impl OnBackend for EvaluateJob {
    type Out = MetricsReport;

    fn run<B: Backend, A: Act>(self, be: B) -> Result<MetricsReport> {
        let (params, side) = checkpoint::load_model(&self.run_dir)?;
        let cfg = &side.train_config;
        let session = Session::load(cfg)?;
        if session.tokenizer.sha256() != side.tokenizer_sha256 {
            bail!(
                "{}: the model was trained with another tokenizer than {}",
                self.run_dir.display(),
                session.tokenizer.source()
            );
        }
        if session.vocab != side.vocab.clone().map(|v| v.restored()) {
            bail!(
                "{}: the model's compact vocabulary differs from the one its dataset gives now \
                 (was the data changed?)",
                self.run_dir.display()
            );
        }
        let split = match self.split {
            Split::Train => &session.train,
            Split::Valid => &session.valid,
            Split::Test => &session.test,
        };
        // One writer per directory: not while a training writes into it, nor two evaluations.
        let _lock = run_dir::lock(&self.out_dir)?;
        let mut model = Pepler::<B, A>::with_activations(be, &params)?;
        let batch_size = if self.batch_size == 0 {
            cfg.batch_size
        } else {
            self.batch_size
        };
        generate_and_score(
            &mut model,
            &session,
            split,
            batch_size,
            cfg.max_words,
            &self.out_dir,
        )
    }
}
