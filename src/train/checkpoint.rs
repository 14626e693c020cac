//! Checkpoints. A run directory holds:
//! - `model.safetensors`: the best model so far (GPT-2 part in Hugging Face layout, plus the
//!   prompt and rating-head tensors) with its [`Sidecar`] (which run, stage, epoch and step) in
//!   the file's own header;
//! - `state.safetensors`: where the run is — current parameters, AdamW moments of the trainable
//!   tensors, and the sidecar with stage, epoch, step and early-stopping state — written after
//!   every epoch so `--resume` continues an interrupted run to the same bits as an uninterrupted one;
//! - `model.json`, `state.json`: readable copies of those two sidecars, for people and scripts.
//!
//! Each checkpoint is ONE file, tensors and sidecar together, written to a temporary name,
//! flushed to disk and renamed, then the directory is flushed: a kill or a power cut leaves either
//! the previous checkpoint or the new one, whole. The loaders read the sidecar from the
//! `.safetensors` header and never from the `.json` copy, which a kill may leave one checkpoint
//! behind (the next checkpoint rewrites it). Files written before the sidecar moved into the
//! header (a `pepler.global_step` key only) are still read, with their `.json` sidecar.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::config::TrainConfig;
use super::early_stop::EarlyStopping;
use super::vocab::VocabMap;
use crate::model::config::ModelConfig;
use crate::model::params::{HostTensor, ParamSet};
use crate::model::safetensors_io::{write_f32_tensors, write_text_atomic, SafetensorsFile};
use crate::precision::Precision;

pub const MODEL_FILE: &str = "model.safetensors";
pub const MODEL_SIDECAR: &str = "model.json";
pub const STATE_FILE: &str = "state.safetensors";
pub const STATE_SIDECAR: &str = "state.json";

/// Metadata key holding the sidecar JSON in both `.safetensors` checkpoints.
pub const META_SIDECAR: &str = "pepler.sidecar";
/// Metadata key of the older format (sidecar in the `.json` file only), checked against it.
const META_STEP: &str = "pepler.global_step";

/// The JSON next to every checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sidecar {
    /// The run this checkpoint belongs to: a content hash of what defines the run
    /// ([`run_id`]), the same in the best model, the resume state and every `metrics.jsonl`
    /// record, so a file copied in from another run is refused.
    #[serde(default)]
    pub run_id: String,
    pub train_config: TrainConfig,
    pub model_config: ModelConfig,
    /// sha256 of the tokenizer JSON the run used.
    pub tokenizer_sha256: String,
    /// Index into the strategy's stages.
    pub stage: usize,
    pub stage_name: String,
    /// Epochs completed in this stage.
    pub epoch: u32,
    /// Optimizer steps since the start of the run (selects dropout masks).
    pub global_step: u64,
    /// AdamW's step count in this stage (its bias correction).
    pub adam_step: u64,
    pub early_stopping: EarlyStopping,
    /// The run has finished training (only evaluation is left).
    pub finished: bool,
    pub val_loss: Option<f64>,
    /// The built-in model's compact vocabulary (`train::vocab`), if it has one.
    #[serde(default)]
    pub vocab: Option<VocabMap>,
    /// The activation precision the run trains in (`--precision`); a resume must use the same.
    /// Omitted from the JSON for fp32, so earlier runs' sidecars still read (and compare) the same.
    #[serde(default, skip_serializing_if = "Precision::is_fp32")]
    pub precision: Precision,
}

/// AdamW moments per parameter, in canonical order (`None` for tensors without state).
pub type Moments = Vec<Option<(Vec<f32>, Vec<f32>)>>;

/// The run id of a run: the first 16 hex digits of the sha256 of everything that defines it
/// (configuration, model configuration, tokenizer, and a fingerprint of the data), so the same
/// options on the same data give the same id (and the same bytes) and anything else another.
pub fn run_id(
    cfg: &TrainConfig,
    model: &ModelConfig,
    tokenizer_sha256: &str,
    data_fingerprint: &str,
) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(cfg)?);
    h.update([0]);
    h.update(serde_json::to_vec(model)?);
    h.update([0]);
    h.update(tokenizer_sha256.as_bytes());
    h.update([0]);
    h.update(data_fingerprint.as_bytes());
    let digest = h.finalize();
    Ok(digest[..8].iter().map(|b| format!("{b:02x}")).collect())
}

/// The metadata of a checkpoint file: its sidecar.
fn sidecar_meta(sidecar: &Sidecar) -> Result<HashMap<String, String>> {
    Ok(HashMap::from([(
        META_SIDECAR.to_string(),
        serde_json::to_string(sidecar).context("serialising the checkpoint sidecar")?,
    )]))
}

/// Parses a sidecar (from a header or a `.json` file); `what` names it in errors.
pub fn parse_sidecar(text: &str, what: &str) -> Result<Sidecar> {
    let side: Sidecar = serde_json::from_str(text)
        .with_context(|| format!("{what}: not a pepler-cuda checkpoint sidecar"))?;
    side.model_config
        .validate()
        .with_context(|| format!("{what}: model config"))?;
    side.train_config
        .validate()
        .with_context(|| format!("{what}: training config"))?;
    if side.epoch > side.train_config.epochs {
        bail!(
            "{what}: epoch {} is past the run's {} epochs per stage",
            side.epoch,
            side.train_config.epochs
        );
    }
    if side.adam_step > side.global_step {
        bail!(
            "{what}: AdamW step {} is past the global step {}",
            side.adam_step,
            side.global_step
        );
    }
    Ok(side)
}

/// The sidecar of an opened checkpoint: from its header, or (older files) from the `.json`
/// next to it, which must then name the step the tensors hold.
fn checkpoint_sidecar(file: &SafetensorsFile, json: &Path) -> Result<Sidecar> {
    if let Some(text) = file.meta(META_SIDECAR) {
        return parse_sidecar(
            &text,
            &format!("{} (metadata `{META_SIDECAR}`)", file.path().display()),
        );
    }
    let Some(step) = file.meta(META_STEP) else {
        bail!(
            "{}: not a pepler-cuda checkpoint (its header has no `{META_SIDECAR}`)",
            file.path().display()
        );
    };
    let text = std::fs::read_to_string(json).with_context(|| {
        format!(
            "{}: cannot read the checkpoint sidecar of {}",
            json.display(),
            file.path().display()
        )
    })?;
    let sidecar = parse_sidecar(&text, &json.display().to_string())?;
    if step != sidecar.global_step.to_string() {
        bail!(
            "{}: holds step `{step}` but its sidecar {} says {}: this older-format checkpoint \
             was interrupted while being written; start the run over (train --overwrite)",
            file.path().display(),
            json.display(),
            sidecar.global_step
        );
    }
    Ok(sidecar)
}

/// Writes the best model (its sidecar in the header), then the readable `model.json` copy.
pub fn save_model(dir: &Path, params: &ParamSet, sidecar: &Sidecar) -> Result<()> {
    params.save(dir.join(MODEL_FILE), &sidecar_meta(sidecar)?)?;
    write_text_atomic(
        &dir.join(MODEL_SIDECAR),
        &serde_json::to_string_pretty(sidecar)?,
    )
}

/// Reads a model checkpoint: a run directory (its `model.safetensors`) or a `.safetensors` path.
pub fn load_model(path: &Path) -> Result<(ParamSet, Sidecar)> {
    if !path.exists() {
        bail!(
            "{}: no such run directory or checkpoint (expected a directory with {MODEL_FILE}, \
             as `train --out` writes)",
            path.display()
        );
    }
    let (file, side) = if path.is_dir() {
        let file = path.join(MODEL_FILE);
        if !file.exists() {
            bail!(
                "{}: the run directory has no {MODEL_FILE} (no epoch of the run has finished yet?)",
                path.display()
            );
        }
        (file, path.join(MODEL_SIDECAR))
    } else {
        (path.to_path_buf(), path.with_extension("json"))
    };
    let st = SafetensorsFile::open(&file)?;
    let sidecar = checkpoint_sidecar(&st, &side)?;
    let params = ParamSet::from_safetensors(&st, &sidecar.model_config, "")?;
    Ok((params, sidecar))
}

/// Writes the resume state: parameters, moments, sidecar.
pub fn save_state(
    dir: &Path,
    params: &ParamSet,
    moments: &Moments,
    sidecar: &Sidecar,
) -> Result<()> {
    let mut owned: Vec<(String, HostTensor)> = Vec::new();
    for ((spec, _), m) in params.iter().zip(moments) {
        if let Some((m, v)) = m {
            owned.push((
                format!("adam_m.{}", spec.name),
                HostTensor::new(spec.shape.clone(), m.clone())?,
            ));
            owned.push((
                format!("adam_v.{}", spec.name),
                HostTensor::new(spec.shape.clone(), v.clone())?,
            ));
        }
    }
    let tensors = params
        .iter()
        .map(|(s, t)| (format!("param.{}", s.name), t))
        .collect::<Vec<_>>();
    let all = tensors
        .iter()
        .map(|(n, t)| (n.as_str(), *t))
        .chain(owned.iter().map(|(n, t)| (n.as_str(), t)));
    write_f32_tensors(dir.join(STATE_FILE), all, sidecar_meta(sidecar)?)?;
    write_text_atomic(
        &dir.join(STATE_SIDECAR),
        &serde_json::to_string_pretty(sidecar)?,
    )
}

/// The resume state of run directory `dir`.
pub struct ResumeState {
    pub params: ParamSet,
    pub moments: Moments,
    pub sidecar: Sidecar,
}

/// Reads `dir`'s resume state.
pub fn load_state(dir: &Path) -> Result<ResumeState> {
    let path = dir.join(STATE_FILE);
    if !path.exists() {
        bail!(
            "{}: no resume state ({STATE_FILE}, with its copy {STATE_SIDECAR}) in this \
             directory: nothing to resume; train without --resume to start a run",
            dir.display()
        );
    }
    let st = SafetensorsFile::open(&path)?;
    let sidecar = checkpoint_sidecar(&st, &dir.join(STATE_SIDECAR))?;
    let params = ParamSet::from_safetensors(&st, &sidecar.model_config, "param.")?;
    let mut moments = Vec::new();
    for (spec, _) in params.iter() {
        let m = format!("adam_m.{}", spec.name);
        moments.push(if st.contains(&m) {
            let m = st.read_f32(&m, Some(&spec.shape))?.data;
            let v = st
                .read_f32(&format!("adam_v.{}", spec.name), Some(&spec.shape))?
                .data;
            Some((m, v))
        } else {
            None
        });
    }
    Ok(ResumeState {
        params,
        moments,
        sidecar,
    })
}

/// Rewrites `dir`'s readable sidecar copies (`model.json`, `state.json`) from the checkpoint
/// headers where a kill left them behind, so a resumed run's files equal an uninterrupted run's.
pub fn refresh_sidecar_copies(dir: &Path) -> Result<()> {
    for (file, copy) in [(MODEL_FILE, MODEL_SIDECAR), (STATE_FILE, STATE_SIDECAR)] {
        let path = dir.join(file);
        if !path.exists() {
            continue;
        }
        let st = SafetensorsFile::open(&path)?;
        let Some(text) = st.meta(META_SIDECAR) else {
            continue; // an older checkpoint: its .json is the sidecar itself
        };
        let side = parse_sidecar(&text, &path.display().to_string())?;
        let want = serde_json::to_string_pretty(&side)?;
        let copy = dir.join(copy);
        if std::fs::read_to_string(&copy).ok().as_deref() != Some(want.as_str()) {
            write_text_atomic(&copy, &want)?;
        }
    }
    Ok(())
}

/// Whether `dir` holds a resumable run.
pub fn has_state(dir: &Path) -> bool {
    dir.join(STATE_FILE).exists()
}
