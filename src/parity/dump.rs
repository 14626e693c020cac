//! Reading a PyTorch parity dump (`pepler-parity/1`, docs/parity-format.md) into a model config,
//! a batch, the step-0 parameters, the optimizer settings and the expected tensors.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::backend::AdamWVariant;
use crate::model::batch::Batch;
use crate::model::config::{ModelConfig, PromptKind};
use crate::model::params::{HostTensor, ParamSet};
use crate::model::safetensors_io::SafetensorsFile;
use crate::precision::Precision;

/// The `format` metadata value this reader understands.
pub const PARITY_FORMAT: &str = "pepler-parity/1";

/// The dump's `optimizer` metadata.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DumpOptimizer {
    pub lr: f64,
    pub betas: [f64; 2],
    pub eps: f64,
    pub weight_decay: f64,
    pub steps: usize,
    /// Which AdamW produced the `step{k}.*` tensors: `"torch"` (`torch.optim.AdamW`) or `"hf"`
    /// (`transformers.AdamW`, what the original scripts use). Absent means torch: the files dumped
    /// before the key existed are unchanged.
    #[serde(default)]
    pub variant: AdamWVariant,
}

/// One parity case: everything needed to rebuild the model and the expected results.
#[derive(Debug)]
pub struct ParityDump {
    pub path: PathBuf,
    /// The `case` metadata (or the file stem).
    pub case: String,
    pub config: ModelConfig,
    pub optimizer: DumpOptimizer,
    /// Parameters updated by the optimizer (the rest are frozen).
    pub trainable: Vec<String>,
    pub batch: Batch,
    /// `param.*`: the parameters at step 0.
    pub params: ParamSet,
    /// `torch_version` / `transformers_version` metadata, for the report.
    pub torch_version: String,
    pub transformers_version: String,
    /// The precision PyTorch ran in: `Bf16` for an autocast dump (`autocast` metadata with
    /// `"dtype": "bfloat16"`, `dump.py --autocast bf16`), else `Fp32`. An autocast dump is only
    /// checked under the bf16 tolerances.
    pub precision: Precision,
    file: SafetensorsFile,
}

impl ParityDump {
    /// Opens and checks a dump; errors name the file and the offending key/tensor.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let file = SafetensorsFile::open(path.as_ref())?;
        Self::from_file(file)
    }

    pub fn from_file(file: SafetensorsFile) -> Result<Self> {
        let p = file.path().display().to_string();
        let format = file.require_meta("format")?;
        if format != PARITY_FORMAT {
            bail!("{p}: metadata format is `{format}`, expected `{PARITY_FORMAT}`");
        }
        let config = ModelConfig::from_dump_json(&file.require_meta("config")?)
            .with_context(|| format!("{p}: metadata `config`"))?;
        let optimizer: DumpOptimizer = serde_json::from_str(&file.require_meta("optimizer")?)
            .with_context(|| format!("{p}: metadata `optimizer`"))?;
        let trainable: Vec<String> = serde_json::from_str(&file.require_meta("trainable")?)
            .with_context(|| format!("{p}: metadata `trainable` is not a JSON list of names"))?;
        let params = ParamSet::from_safetensors(&file, &config, "param.")?;
        for n in &trainable {
            if params.get(n).is_none() {
                bail!("{p}: trainable parameter `{n}` is not a parameter of the dumped model");
            }
        }
        let batch = read_batch(&file, &config)?;
        let precision = match file.meta("autocast") {
            None => Precision::Fp32,
            Some(a) => {
                let v: serde_json::Value = serde_json::from_str(&a)
                    .with_context(|| format!("{p}: metadata `autocast` is not JSON"))?;
                match v.get("dtype").and_then(|d| d.as_str()) {
                    Some("bfloat16") => Precision::Bf16,
                    other => bail!("{p}: autocast dtype {other:?} is not supported (bfloat16 is)"),
                }
            }
        };
        let case = file.meta("case").unwrap_or_else(|| {
            file.path()
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        Ok(ParityDump {
            path: file.path().to_path_buf(),
            case,
            config,
            optimizer,
            trainable,
            batch,
            params,
            torch_version: file.meta("torch_version").unwrap_or_default(),
            transformers_version: file.meta("transformers_version").unwrap_or_default(),
            precision,
            file,
        })
    }

    pub fn has(&self, name: &str) -> bool {
        self.file.contains(name)
    }

    /// An expected tensor (`out.*`, `grad.*`, `step{k}.*`), as f32.
    pub fn expected(&self, name: &str) -> Result<HostTensor> {
        self.file.read_f32(name, None)
    }

    /// An expected tensor that must have `shape`.
    pub fn expected_shaped(&self, name: &str, shape: &[usize]) -> Result<HostTensor> {
        self.file.read_f32(name, Some(shape))
    }

    /// An expected scalar (shape `[]`, or one element).
    pub fn expected_scalar(&self, name: &str) -> Result<f32> {
        let t = self.expected(name)?;
        if t.data.len() != 1 {
            bail!(
                "{}: `{name}` should be a scalar, has shape {:?}",
                self.path.display(),
                t.shape
            );
        }
        Ok(t.data[0])
    }

    /// The underlying file (more metadata, raw tensors).
    pub fn file(&self) -> &SafetensorsFile {
        &self.file
    }
}

fn ids(
    file: &SafetensorsFile,
    name: &str,
    shape: &[usize],
    limit: Option<usize>,
) -> Result<Vec<u32>> {
    let p = file.path().display();
    let (s, v) = file.read_i64(name)?;
    if s != shape {
        bail!("{p}: tensor `{name}` has shape {s:?}, expected {shape:?}");
    }
    v.iter()
        .map(|&x| {
            let ok = x >= 0 && limit.is_none_or(|l| (x as u64) < l as u64);
            if !ok {
                bail!(
                    "{p}: tensor `{name}` holds {x}, outside 0..{}",
                    limit.unwrap_or(u32::MAX as usize)
                );
            }
            Ok(x as u32)
        })
        .collect()
}

fn read_batch(file: &SafetensorsFile, cfg: &ModelConfig) -> Result<Batch> {
    let p = file.path().display();
    let text_shape = file
        .shape("batch.text")
        .with_context(|| format!("{p}: tensor `batch.text` is missing"))?;
    if text_shape.len() != 2 {
        bail!("{p}: tensor `batch.text` has shape {text_shape:?}, expected [B, T]");
    }
    let (b, t) = (text_shape[0], text_shape[1]);
    let text = ids(file, "batch.text", &[b, t], Some(cfg.vocab_size))?;
    let mask: Vec<u8> = ids(file, "batch.mask", &[b, t], Some(2))?
        .into_iter()
        .map(|x| x as u8)
        .collect();
    let users = ids(file, "batch.user", &[b], None)?;
    let items = ids(file, "batch.item", &[b], None)?;
    let rating = file.read_f32("batch.rating", Some(&[b]))?.data;
    let (p_len, prompt) = if cfg.prompt == PromptKind::Discrete {
        let s = file
            .shape("batch.prompt")
            .with_context(|| format!("{p}: tensor `batch.prompt` is missing (discrete prompt)"))?;
        if s.len() != 2 || s[0] != b {
            bail!("{p}: tensor `batch.prompt` has shape {s:?}, expected [{b}, P]");
        }
        (s[1], ids(file, "batch.prompt", &s, Some(cfg.vocab_size))?)
    } else {
        (0, Vec::new())
    };
    let batch = Batch {
        b,
        t,
        p: p_len,
        users,
        items,
        text,
        mask,
        rating,
        prompt,
    };
    batch
        .validate(cfg)
        .with_context(|| format!("{p}: the dumped batch"))?;
    Ok(batch)
}
