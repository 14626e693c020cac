//! The training loop: stages of a strategy, epochs with early stopping, a checkpoint of the best
//! model, a resume state after every epoch, a progress bar and the run log. Written against the
//! `Backend` trait through `Pepler`, so every backend trains the same way.
//!
//! Determinism across interruptions: the batch order of an epoch depends only on (seed, stage,
//! epoch), dropout masks only on (seed, global step), and the resume state holds parameters and
//! AdamW moments bit for bit — so `--resume` reaches exactly the result of an uninterrupted run.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::checkpoint::{self, Sidecar};
use super::config::TrainConfig;
use super::early_stop::{EarlyStopping, Verdict};
use super::run_dir;
use super::run_log::{EpochRecord, RunLog};
use super::session::Session;
use super::strategy::{stages, Stage};
use crate::backend::{Act, AdamWParams, Backend};
use crate::data::{EncodedSplit, Padding};
use crate::model::config::ModelConfig;
use crate::model::pepler::{ForwardOptions, Pepler};
use crate::model::step::{StepLaunch, TrainStep};

/// PEPLER's AdamW settings besides lr and weight decay (the original's).
pub const ADAM_BETAS: (f64, f64) = (0.9, 0.999);
pub const ADAM_EPS: f64 = 1e-6;

/// Mean losses over a split or an epoch, weighted by batch size as the original does.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Losses {
    pub text: f64,
    pub rating: Option<f64>,
}

impl Losses {
    /// The validation criterion: the text loss, plus the (unweighted) rating loss when there is a
    /// rating head, as `main.py` / `reg.py` compare them.
    pub fn criterion(&self) -> f64 {
        self.text + self.rating.unwrap_or(0.0)
    }
}

/// Accumulates batch-size-weighted losses.
#[derive(Default)]
struct LossSum {
    text: f64,
    rating: f64,
    has_rating: bool,
    samples: usize,
}

impl LossSum {
    fn add(&mut self, b: usize, text: f32, rating: Option<f32>) {
        self.text += b as f64 * text as f64;
        if let Some(r) = rating {
            self.rating += b as f64 * r as f64;
            self.has_rating = true;
        }
        self.samples += b;
    }
    fn mean(&self) -> Losses {
        let n = self.samples.max(1) as f64;
        Losses {
            text: self.text / n,
            rating: self.has_rating.then(|| self.rating / n),
        }
    }
}

/// Mean text and rating loss of `model` over `split` (no dropout, no gradients).
pub fn evaluate_loss<B: Backend, A: Act>(
    model: &mut Pepler<B, A>,
    split: &EncodedSplit,
    batch_size: usize,
) -> Result<Losses> {
    if split.is_empty() {
        bail!(
            "cannot evaluate on the {:?} split: it is empty",
            split.split
        );
    }
    let mut sum = LossSum::default();
    for batch in split.batches(batch_size, Padding::Batch) {
        let out = model.forward(&batch.to_model_batch(), ForwardOptions::default())?;
        sum.add(batch.len(), out.text_loss, out.rating_loss);
    }
    Ok(sum.mean())
}

/// What a `train` call leaves: where the best model is and its validation loss.
pub struct TrainOutcome {
    pub out_dir: PathBuf,
    pub best_val_loss: Option<f64>,
    pub global_step: u64,
    /// Epochs run by this call.
    pub epochs_run: u32,
    /// False when `stop_after_epochs` ended the call before training was over (resumable).
    pub finished: bool,
}

/// How one `train` call runs (not part of the run's configuration).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunControl {
    /// Continue from the run directory's resume state.
    pub resume: bool,
    /// Without `resume`: delete a run already in the directory and start over (without it, a
    /// directory holding a run is refused rather than destroyed).
    pub overwrite: bool,
    /// Stop this call after so many epochs, leaving a resumable state (time-boxed jobs).
    pub stop_after_epochs: Option<u32>,
    /// Turn off the step graphs (`Pepler::train_step`) and launch every step kernel by kernel:
    /// same bits, for measuring what the graphs save (`--graph off`).
    pub no_step_graphs: bool,
}

/// How an epoch's steps were launched (`StepLaunch`), for the epoch's log line.
#[derive(Default)]
struct LaunchCounts {
    plain: usize,
    captured: usize,
    replayed: usize,
}

impl LaunchCounts {
    fn add(&mut self, l: StepLaunch) {
        match l {
            StepLaunch::Plain => self.plain += 1,
            StepLaunch::Captured => self.captured += 1,
            StepLaunch::Replayed => self.replayed += 1,
        }
    }

    /// ` | step graphs: ...` on a backend with graphs (nothing on the CPU).
    fn describe(&self, has_graphs: bool) -> String {
        if !has_graphs {
            return String::new();
        }
        if self.captured + self.replayed == 0 {
            return " | steps kernel by kernel".to_string();
        }
        format!(
            " | step graphs: {} replayed, {} captured, {} kernel by kernel",
            self.replayed, self.captured, self.plain
        )
    }
}

/// Trainable flags in canonical parameter order for a stage.
fn trainable_flags(model_cfg: &ModelConfig, stage: &Stage, zero_prompts: bool) -> Vec<bool> {
    crate::model::params::param_specs(model_cfg)
        .iter()
        .map(|s| {
            let prompt =
                s.name.starts_with("user_embeddings.") || s.name.starts_with("item_embeddings.");
            stage.trainable.contains(&s.name) && !(zero_prompts && prompt)
        })
        .collect()
}

/// Writes the model's parameters and AdamW moments as `out_dir`'s resume state.
fn save_resume_state<B: Backend, A: Act>(
    model: &Pepler<B, A>,
    out_dir: &Path,
    side: &Sidecar,
) -> Result<()> {
    checkpoint::save_state(
        out_dir,
        &model.download_params()?,
        &model.optimizer_moments()?,
        side,
    )
}

fn progress_bar(len: u64, label: &str) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    pb.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_prefix(label.to_string());
    pb
}

/// Trains `model` per `cfg`, writing checkpoints and logs into `out_dir`. With `resume`, continues
/// from `out_dir`'s resume state (the configuration must be the same).
pub fn train<B: Backend, A: Act>(
    model: &mut Pepler<B, A>,
    session: &Session,
    cfg: &TrainConfig,
    out_dir: &Path,
    control: RunControl,
) -> Result<TrainOutcome> {
    let resume = control.resume;
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    if session.train.is_empty() || session.valid.is_empty() {
        bail!(
            "{}: the training and validation splits must not be empty",
            session.dataset.source
        );
    }
    let model_cfg = model.config().clone();
    let plan = stages(cfg.strategy, cfg.stage1_wte, &model_cfg)?;
    model.seed = cfg.seed;
    model.set_step_graphs(!control.no_step_graphs);

    let run_id = checkpoint::run_id(
        cfg,
        &model_cfg,
        session.tokenizer.sha256(),
        &session.data_fingerprint(),
    )?;
    let mut side = Sidecar {
        run_id: run_id.clone(),
        train_config: cfg.clone(),
        model_config: model_cfg.clone(),
        tokenizer_sha256: session.tokenizer.sha256().to_string(),
        stage: 0,
        stage_name: plan[0].name.clone(),
        epoch: 0,
        global_step: 0,
        adam_step: 0,
        early_stopping: EarlyStopping::new(cfg.endure),
        finished: false,
        val_loss: None,
        vocab: session.vocab.clone(),
        precision: A::PRECISION,
    };
    if !resume {
        // A fresh run never silently destroys another: the caller clears the directory only
        // when asked to (`--overwrite`, see `run_dir::prepare`).
        run_dir::refuse_existing_run(out_dir, control.overwrite)?;
    }
    let mut log;
    if resume {
        let st = checkpoint::load_state(out_dir)?;
        let state_path = out_dir.join(checkpoint::STATE_FILE);
        if st.sidecar.train_config != *cfg {
            bail!(
                "{}: the run was started with a different configuration; resume it with the same \
                 options (saved: {})",
                state_path.display(),
                serde_json::to_string(&st.sidecar.train_config)?
            );
        }
        if st.sidecar.precision != A::PRECISION {
            bail!(
                "{}: the run trains in {}; resume it with --precision {} (this call asked for {})",
                state_path.display(),
                st.sidecar.precision,
                st.sidecar.precision,
                A::PRECISION
            );
        }
        if st.sidecar.tokenizer_sha256 != side.tokenizer_sha256 {
            bail!(
                "{}: the run used another tokenizer than {}",
                state_path.display(),
                session.tokenizer.source()
            );
        }
        if st.sidecar.model_config != model_cfg {
            bail!(
                "{}: the saved model configuration differs from the one these options and data \
                 give (was the data or the model directory changed?)",
                state_path.display()
            );
        }
        if !st.sidecar.run_id.is_empty() && st.sidecar.run_id != run_id {
            bail!(
                "{}: the resume state belongs to run {}, but these options and data make run \
                 {run_id} (was the data changed, or the state copied from another run?)",
                state_path.display(),
                st.sidecar.run_id
            );
        }
        if st.sidecar.stage >= plan.len() || plan[st.sidecar.stage].name != st.sidecar.stage_name {
            bail!(
                "{}: stage {} (`{}`) is not a stage of the `{}` strategy ({} stages)",
                state_path.display(),
                st.sidecar.stage,
                st.sidecar.stage_name,
                serde_json::to_value(cfg.strategy)?.as_str().unwrap_or("?"),
                plan.len()
            );
        }
        if out_dir.join(checkpoint::MODEL_FILE).exists() {
            let (_, best) = checkpoint::load_model(out_dir)?;
            if best.run_id != st.sidecar.run_id {
                bail!(
                    "{}: the best model belongs to run {} but the resume state to run {}: the \
                     directory mixes two runs; start over (--overwrite) or restore the run's files",
                    out_dir.join(checkpoint::MODEL_FILE).display(),
                    best.run_id,
                    st.sidecar.run_id
                );
            }
        }
        checkpoint::refresh_sidecar_copies(out_dir)?;
        model.upload_params(&st.params)?;
        model.set_optimizer_moments(st.moments)?;
        side = st.sidecar;
        side.run_id = run_id.clone();
        log = RunLog::open(out_dir, true, &run_id)?;
        log.truncate_after_step(side.global_step)?;
        eprintln!(
            "resuming {} at stage `{}`, epoch {}, step {}",
            out_dir.display(),
            side.stage_name,
            side.epoch,
            side.global_step
        );
    } else {
        // A resume state from the very start: a run interrupted in its first epoch can resume.
        // It comes before any other file, so a directory with run files always has one.
        save_resume_state(model, out_dir, &side)?;
        log = RunLog::open(out_dir, false, &run_id)?;
    }

    let hp = AdamWParams {
        variant: cfg.adamw,
        lr: cfg.lr,
        beta1: ADAM_BETAS.0,
        beta2: ADAM_BETAS.1,
        eps: ADAM_EPS,
        weight_decay: cfg.weight_decay,
    };
    let mut epochs_run = 0;
    while !side.finished {
        let stage = plan[side.stage].clone();
        let flags = trainable_flags(&model_cfg, &stage, cfg.zero_prompts);
        if !flags.iter().any(|&f| f) {
            bail!("stage `{}` has no trainable parameters", stage.name);
        }
        let mut stage_over = side.epoch >= cfg.epochs;
        while !stage_over {
            if control.stop_after_epochs == Some(epochs_run) {
                // The resume state on disk is this point exactly (written after the last epoch or
                // at the stage change).
                eprintln!("stopping after {epochs_run} epochs; continue with --resume");
                return Ok(TrainOutcome {
                    out_dir: out_dir.to_path_buf(),
                    best_val_loss: side.early_stopping.best_loss,
                    global_step: side.global_step,
                    epochs_run,
                    finished: false,
                });
            }
            let epoch = side.epoch + 1;
            let t0 = Instant::now();
            let n_batches = session.train.len().div_ceil(cfg.batch_size.max(1)) as u64;
            let pb = progress_bar(n_batches, &format!("{} epoch {epoch}", stage.name));
            let mut sum = LossSum::default();
            let mut tokens = 0usize;
            let order_key = side.stage as u64 * 1_000_003 + epoch as u64;
            let mut grad_norm = None;
            let mut launches = LaunchCounts::default();
            let mut batches_done = 0u64;
            for batch in
                session
                    .train
                    .shuffled_batches(cfg.batch_size, Padding::Batch, cfg.seed, order_key)
            {
                let mb = batch.to_model_batch();
                side.global_step += 1;
                side.adam_step += 1;
                batches_done += 1;
                // The gradient norm of the epoch's last step, for the record.
                let last = batches_done == n_batches;
                let report = model.train_step(
                    &mb,
                    TrainStep {
                        step: side.global_step,
                        adam_step: side.adam_step,
                        hp,
                        trainable: &flags,
                        clip_grad_norm: cfg.clip_grad_norm,
                        want_grad_norm: last,
                    },
                )?;
                launches.add(report.launch);
                let out = report.out;
                if last {
                    grad_norm = report.grad_norm.map(f64::from);
                }
                if !out.loss.is_finite() {
                    bail!(
                        "the training loss became {} at step {} (stage `{}`, epoch {epoch}): the \
                         model diverged; lower --lr",
                        out.loss,
                        side.global_step,
                        stage.name
                    );
                }
                sum.add(batch.len(), out.text_loss, out.rating_loss);
                tokens += mb.mask.iter().filter(|&&m| m == 1).count();
                let secs = t0.elapsed().as_secs_f64().max(1e-9);
                pb.set_message(format!(
                    "loss {:.4} | {:.0} tok/s",
                    sum.mean().text,
                    tokens as f64 / secs
                ));
                pb.inc(1);
            }
            pb.finish_and_clear();
            let train_losses = sum.mean();
            let val = evaluate_loss(model, &session.valid, cfg.batch_size)?;
            let val_loss = val.criterion();
            if !val_loss.is_finite() {
                // Not an ordinary "no improvement": every later epoch would be NaN as well.
                bail!(
                    "the validation loss became {val_loss} after epoch {epoch} of stage `{}` \
                     (step {}; training loss {:.4}): the model diverged; lower --lr and start \
                     over (--overwrite), or resume from the last saved state with other options",
                    stage.name,
                    side.global_step,
                    train_losses.criterion()
                );
            }
            let verdict = side.early_stopping.observe(val_loss);
            side.epoch = epoch;
            side.val_loss = Some(val_loss);
            epochs_run += 1;
            let seconds = t0.elapsed().as_secs_f64();
            let rec = EpochRecord {
                stage: stage.name.clone(),
                epoch,
                global_step: side.global_step,
                train_loss: train_losses.criterion(),
                train_text_loss: train_losses.text,
                train_rating_loss: train_losses.rating,
                val_loss,
                val_text_loss: val.text,
                val_rating_loss: val.rating,
                tokens_per_s: tokens as f64 / seconds.max(1e-9),
                seconds,
                improved: verdict == Verdict::Improved,
                grad_norm,
                run_id: run_id.clone(),
            };
            println!(
                "{:<6} epoch {:>3} | train loss {:.4} (ppl {:.2}) | valid loss {:.4} (ppl {:.2}){} | {:.0} tok/s | {:.1}s{}{}",
                stage.name,
                epoch,
                rec.train_loss,
                train_losses.text.exp(),
                val_loss,
                val.text.exp(),
                val.rating.map_or(String::new(), |r| format!(" rating mse {r:.4}")),
                rec.tokens_per_s,
                seconds,
                launches.describe(model.backend().has_graphs()),
                match verdict {
                    Verdict::Improved => " | saved best".to_string(),
                    Verdict::Endured(n) => format!(" | endured {n}"),
                    Verdict::Stop => " | early stop".to_string(),
                }
            );
            log.append(rec)?;
            if verdict == Verdict::Improved {
                checkpoint::save_model(out_dir, &model.download_params()?, &side)?;
            }
            stage_over = verdict == Verdict::Stop || side.epoch >= cfg.epochs;
            if !stage_over {
                save_resume_state(model, out_dir, &side)?;
            }
        }
        // End of the stage: continue from its best model with a fresh optimizer, as the original.
        if out_dir.join(checkpoint::MODEL_FILE).exists() {
            let (best, _) = checkpoint::load_model(out_dir)?;
            model.upload_params(&best)?;
        }
        model.reset_optimizer();
        if side.stage + 1 < plan.len() {
            side.stage += 1;
            side.stage_name = plan[side.stage].name.clone();
            side.epoch = 0;
            side.adam_step = 0;
            side.early_stopping = EarlyStopping::new(cfg.endure);
        } else {
            side.finished = true;
        }
        save_resume_state(model, out_dir, &side)?;
    }
    if !out_dir.join(checkpoint::MODEL_FILE).exists() {
        // No epoch ran (--epochs 0): the "best" model is the initial one.
        checkpoint::save_model(out_dir, &model.download_params()?, &side)?;
    }
    let (best, best_side) = checkpoint::load_model(out_dir)?;
    model.upload_params(&best)?;
    Ok(TrainOutcome {
        out_dir: out_dir.to_path_buf(),
        best_val_loss: best_side.val_loss,
        global_step: side.global_step,
        epochs_run,
        finished: true,
    })
}
