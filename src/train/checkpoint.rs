//! Checkpoints. A run directory holds:
//! - `model.safetensors` + `model.json`: the best model so far (GPT-2 part in Hugging Face layout,
//!   plus the prompt and rating-head tensors; the sidecar says which run, stage, epoch and step).
//! - `state.safetensors` + `state.json`: where the run is — current parameters, AdamW moments of the
//!   trainable tensors, stage, epoch, step, early-stopping state — written after every epoch so
//!   `--resume` continues an interrupted run to the same bits as an uninterrupted one.
//!
//! Every file is written to a temporary name and renamed, so a crash never leaves half a checkpoint;
//! the `.safetensors` is renamed before its sidecar, and a sidecar names the step its tensors hold,
//! so a crash between the two renames is detected on load.

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

pub const MODEL_FILE: &str = "model.safetensors";
pub const MODEL_SIDECAR: &str = "model.json";
pub const STATE_FILE: &str = "state.safetensors";
pub const STATE_SIDECAR: &str = "state.json";

/// Metadata key (in both .safetensors files) that ties tensors to their sidecar.
const META_STEP: &str = "pepler.global_step";

/// The JSON next to every checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sidecar {
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
}

/// AdamW moments per parameter, in canonical order (`None` for tensors without state).
pub type Moments = Vec<Option<(Vec<f32>, Vec<f32>)>>;

fn step_meta(step: u64) -> HashMap<String, String> {
    HashMap::from([(META_STEP.to_string(), step.to_string())])
}

fn read_sidecar(path: &Path) -> Result<Sidecar> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read the checkpoint sidecar", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{}: not a pepler-cuda checkpoint sidecar", path.display()))
}

fn check_step(file: &SafetensorsFile, sidecar: &Sidecar) -> Result<()> {
    let step = file.meta(META_STEP).unwrap_or_default();
    if step != sidecar.global_step.to_string() {
        bail!(
            "{}: holds step `{step}` but its sidecar says {}: the run was interrupted while \
             writing the checkpoint; delete it or resume from an earlier copy",
            file.path().display(),
            sidecar.global_step
        );
    }
    Ok(())
}

/// Writes the best model and its sidecar.
pub fn save_model(dir: &Path, params: &ParamSet, sidecar: &Sidecar) -> Result<()> {
    params.save(dir.join(MODEL_FILE), &step_meta(sidecar.global_step))?;
    write_text_atomic(
        &dir.join(MODEL_SIDECAR),
        &serde_json::to_string_pretty(sidecar)?,
    )
}

/// Reads a model checkpoint: a run directory (its `model.safetensors`) or a `.safetensors` path.
pub fn load_model(path: &Path) -> Result<(ParamSet, Sidecar)> {
    if !path.exists() {
        bail!(
            "{}: no such run directory or checkpoint (expected a directory with {MODEL_FILE} and \
             {MODEL_SIDECAR}, as `train --out` writes)",
            path.display()
        );
    }
    let (file, side) = if path.is_dir() {
        (path.join(MODEL_FILE), path.join(MODEL_SIDECAR))
    } else {
        (path.to_path_buf(), path.with_extension("json"))
    };
    let sidecar = read_sidecar(&side)?;
    let st = SafetensorsFile::open(&file)?;
    check_step(&st, &sidecar)?;
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
    write_f32_tensors(dir.join(STATE_FILE), all, step_meta(sidecar.global_step))?;
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
    let sidecar = read_sidecar(&dir.join(STATE_SIDECAR))?;
    let st = SafetensorsFile::open(dir.join(STATE_FILE))?;
    check_step(&st, &sidecar)?;
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

/// Whether `dir` holds a resumable run.
pub fn has_state(dir: &Path) -> bool {
    dir.join(STATE_SIDECAR).exists()
}
