//! Safetensors I/O for model parameters: reading any safetensors file with errors that name the
//! file and the tensor (missing, wrong shape, wrong dtype, truncated/corrupt), loading the released
//! Hugging Face GPT-2 `model.safetensors` (with or without the `transformer.` prefix, fp32/fp16/bf16,
//! causal-mask buffers ignored) with PEPLER's vocabulary resize, and saving our models in HF layout
//! (`GPT2LMHeadModel.from_pretrained` reads the GPT-2 part) plus the PEPLER tensors. Writes are
//! atomic: `<path>.tmp`, then rename.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use safetensors::tensor::{Dtype, Metadata, TensorInfo};
use safetensors::SafeTensorError;

use super::config::ModelConfig;
use super::params::{fill_normal, init_tensor, seeded_rng, HostTensor, ParamSet, INIT_STD};

/// The tokens PEPLER adds to GPT-2's vocabulary (<bos>, <eos>, <pad>).
const PEPLER_ADDED_TOKENS: usize = 3;

/// Metadata key holding our `ModelConfig` JSON in checkpoints we write.
pub const META_CONFIG: &str = "pepler_config";
/// Metadata key naming our checkpoint format.
pub const META_FORMAT: &str = "pepler_format";
/// Value of `pepler_format` for parameter checkpoints.
pub const PARAMS_FORMAT: &str = "pepler-params/1";

/// A whole safetensors file in memory with its parsed header; every error names `path`.
pub struct SafetensorsFile {
    path: PathBuf,
    bytes: Vec<u8>,
    data_start: usize,
    header: Metadata,
}

impl std::fmt::Debug for SafetensorsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsFile")
            .field("path", &self.path)
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

impl SafetensorsFile {
    /// Reads and validates a file (header, offsets, that the data covers exactly the file).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path)
            .with_context(|| format!("reading safetensors file {}", path.display()))?;
        Self::from_bytes(path, bytes)
    }

    /// Parses bytes already in memory; `path` is used in error messages.
    pub fn from_bytes(path: impl AsRef<Path>, bytes: Vec<u8>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        match safetensors::SafeTensors::read_metadata(&bytes) {
            Ok((n, header)) => Ok(SafetensorsFile {
                path,
                bytes,
                data_start: n + 8,
                header,
            }),
            Err(e) => Err(describe_parse_error(&path, &bytes, e)),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The `__metadata__` string map (empty if the file has none).
    pub fn metadata(&self) -> HashMap<String, String> {
        self.header.metadata().clone().unwrap_or_default()
    }

    /// One metadata value.
    pub fn meta(&self, key: &str) -> Option<String> {
        self.header
            .metadata()
            .as_ref()
            .and_then(|m| m.get(key).cloned())
    }

    /// Like `meta`, with an error naming the file and key when absent.
    pub fn require_meta(&self, key: &str) -> Result<String> {
        self.meta(key)
            .with_context(|| format!("{}: metadata key `{key}` is missing", self.path.display()))
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.header.tensors().into_keys().collect();
        v.sort();
        v
    }

    pub fn contains(&self, name: &str) -> bool {
        self.header.info(name).is_some()
    }

    /// Shape of a tensor, if present.
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.header.info(name).map(|i| i.shape.clone())
    }

    fn info(&self, name: &str) -> Result<&TensorInfo> {
        self.header
            .info(name)
            .with_context(|| format!("{}: tensor `{name}` is missing", self.path.display()))
    }

    fn raw(&self, info: &TensorInfo) -> &[u8] {
        let (s, e) = info.data_offsets;
        &self.bytes[self.data_start + s..self.data_start + e]
    }

    /// Reads a float tensor as f32 (f32 as is; f16, bf16 and f64 converted). `expected`, if given,
    /// must equal the stored shape.
    pub fn read_f32(&self, name: &str, expected: Option<&[usize]>) -> Result<HostTensor> {
        let info = self.info(name)?;
        if let Some(shape) = expected {
            if info.shape != shape {
                bail!(
                    "{}: tensor `{name}` has shape {:?}, expected {:?}",
                    self.path.display(),
                    info.shape,
                    shape
                );
            }
        }
        let raw = self.raw(info);
        let data: Vec<f32> = match info.dtype {
            Dtype::F32 => raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => raw
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => raw
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::F64 => raw
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().expect("chunk of 8")) as f32)
                .collect(),
            other => bail!(
                "{}: tensor `{name}` has dtype {other:?}, expected a float type (F32, F16, BF16)",
                self.path.display()
            ),
        };
        HostTensor::new(info.shape.clone(), data)
            .with_context(|| format!("{}: tensor `{name}`", self.path.display()))
    }

    /// Reads an integer tensor (I64, I32, U8/I8/U32 accepted) as i64.
    pub fn read_i64(&self, name: &str) -> Result<(Vec<usize>, Vec<i64>)> {
        let info = self.info(name)?;
        let raw = self.raw(info);
        let data: Vec<i64> = match info.dtype {
            Dtype::I64 => raw
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().expect("chunk of 8")))
                .collect(),
            Dtype::I32 => raw
                .chunks_exact(4)
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64)
                .collect(),
            Dtype::U32 => raw
                .chunks_exact(4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64)
                .collect(),
            Dtype::U8 | Dtype::BOOL => raw.iter().map(|&b| b as i64).collect(),
            Dtype::I8 => raw.iter().map(|&b| b as i8 as i64).collect(),
            other => bail!(
                "{}: tensor `{name}` has dtype {other:?}, expected an integer type (I64)",
                self.path.display()
            ),
        };
        Ok((info.shape.clone(), data))
    }
}

/// Turns a header/offset validation failure into a message naming the file and, for a truncated
/// file, the first tensor whose bytes are missing.
fn describe_parse_error(path: &Path, bytes: &[u8], e: SafeTensorError) -> anyhow::Error {
    let p = path.display();
    match e {
        SafeTensorError::HeaderTooSmall => anyhow::anyhow!(
            "{p}: not a safetensors file or truncated: {} bytes, shorter than the 8-byte header length",
            bytes.len()
        ),
        SafeTensorError::InvalidHeaderLength => anyhow::anyhow!(
            "{p}: truncated or corrupt: the header length field exceeds the file size ({} bytes)",
            bytes.len()
        ),
        SafeTensorError::MetadataIncompleteBuffer => {
            // Re-read the header to say which tensor is cut off.
            let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes checked")) as usize;
            let avail = bytes.len().saturating_sub(8 + n);
            let mut culprit: Option<(usize, String)> = None;
            let mut needed = 0usize;
            if let Ok(serde_json::Value::Object(map)) =
                serde_json::from_slice::<serde_json::Value>(&bytes[8..8 + n])
            {
                for (name, v) in map.iter() {
                    if name == "__metadata__" {
                        continue;
                    }
                    let off = v.get("data_offsets").and_then(|o| o.as_array());
                    if let Some([s, e]) = off.map(|o| o.as_slice()) {
                        let (s, e) = (s.as_u64().unwrap_or(0) as usize, e.as_u64().unwrap_or(0) as usize);
                        needed = needed.max(e);
                        if e > avail && culprit.as_ref().is_none_or(|(cs, _)| s < *cs) {
                            culprit = Some((s, name.clone()));
                        }
                    }
                }
            }
            match culprit {
                Some((_, name)) => anyhow::anyhow!(
                    "{p}: truncated: tensor `{name}` extends past the end of the file \
                     (the header describes {needed} data bytes, the file has {avail})"
                ),
                None => anyhow::anyhow!(
                    "{p}: corrupt: the tensor data does not cover the file exactly \
                     (header describes {needed} data bytes, the file has {avail})"
                ),
            }
        }
        SafeTensorError::InvalidOffset(name) => {
            anyhow::anyhow!("{p}: corrupt: tensor `{name}` has invalid data offsets")
        }
        other => anyhow::anyhow!("{p}: not a valid safetensors file ({other:?})"),
    }
}

/// Writes f32 tensors with string metadata, atomically and durably ([`write_durable_with`]).
/// The bytes depend only on the names, shapes, values and metadata: tensors are stored sorted
/// by name and the header's keys (metadata included) are sorted, so the same model gives the same
/// file (the `safetensors` crate serialises its metadata `HashMap` in a random order).
pub fn write_f32_tensors<'a>(
    path: impl AsRef<Path>,
    tensors: impl IntoIterator<Item = (&'a str, &'a HostTensor)>,
    metadata: HashMap<String, String>,
) -> Result<()> {
    let path = path.as_ref();
    let mut sorted: Vec<(&str, &HostTensor)> = tensors.into_iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    if let Some(w) = sorted.windows(2).find(|w| w[0].0 == w[1].0) {
        bail!("{}: tensor `{}` given twice", path.display(), w[0].0);
    }
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        let meta: serde_json::Map<String, serde_json::Value> = metadata
            .into_iter()
            .map(|(k, v)| (k, serde_json::Value::String(v)))
            .collect();
        header.insert("__metadata__".into(), serde_json::Value::Object(meta));
    }
    let mut offset = 0usize;
    for (name, t) in &sorted {
        let numel: usize = t.shape.iter().product();
        if numel != t.data.len() {
            bail!(
                "{}: tensor `{name}` has shape {:?} but {} values",
                path.display(),
                t.shape,
                t.data.len()
            );
        }
        let end = offset + 4 * t.data.len();
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": "F32", "shape": t.shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    // serde_json's map is ordered by key: the header text is a function of its content.
    let mut head = serde_json::to_vec(&header)?;
    // The format pads the header with spaces so the data starts 8-byte aligned.
    head.resize(head.len().next_multiple_of(8), b' ');
    write_durable_with(path, |w| {
        w.write_all(&(head.len() as u64).to_le_bytes())?;
        w.write_all(&head)?;
        for (_, t) in &sorted {
            if cfg!(target_endian = "little") {
                w.write_all(bytemuck::cast_slice(&t.data))?;
            } else {
                for x in &t.data {
                    w.write_all(&x.to_le_bytes())?;
                }
            }
        }
        Ok(())
    })
}

/// Writes a small text file atomically and durably.
pub fn write_text_atomic(path: &Path, text: &str) -> Result<()> {
    write_durable(path, text.as_bytes())
}

/// Writes `bytes` to `path` atomically and durably ([`write_durable_with`]).
pub fn write_durable(path: &Path, bytes: &[u8]) -> Result<()> {
    write_durable_with(path, |w| w.write_all(bytes))
}

/// Writes a file so that a reader (or a crash, or a power cut) sees either the old file or the
/// complete new one, never a mix: the content goes to `<path>.tmp`, which is flushed to disk
/// (`fsync`) and renamed over `path`; then the directory is flushed so the rename itself is
/// durable. A failure (a full disk) removes the temporary file and leaves `path` untouched.
pub fn write_durable_with(
    path: &Path,
    fill: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>,
) -> Result<()> {
    let tmp = tmp_path(path);
    let res = (|| -> Result<()> {
        let file =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
        fill(&mut w).with_context(|| format!("writing {}", tmp.display()))?;
        let file = w
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(|| format!("writing {}", tmp.display()))?;
        file.sync_all()
            .with_context(|| format!("flushing {} to disk", tmp.display()))?;
        drop(file);
        std::fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return res;
    }
    crash_point(path);
    sync_dir(path)
}

/// Flushes the directory holding `path`, so a rename into it survives a power cut.
fn sync_dir(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    match std::fs::File::open(dir).and_then(|d| d.sync_all()) {
        Ok(()) => Ok(()),
        // Some file systems cannot flush a directory; the rename is as durable as they allow.
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::InvalidInput | std::io::ErrorKind::Unsupported
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("flushing directory {} to disk", dir.display())),
    }
}

/// Environment variable for crash tests: `PEPLER_CRASH_AFTER_RENAME=N` ends the process at once
/// (no destructors, no cleanup, no flush: what `kill -9` leaves) right after the N-th durable
/// rename of this process, counting from 1. `N:a,b` counts only files whose name starts with
/// `a` or `b`. Tests use it to prove that a kill at any rename leaves a run that resumes.
pub const CRASH_ENV: &str = "PEPLER_CRASH_AFTER_RENAME";

fn crash_point(path: &Path) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static RENAMES: AtomicU64 = AtomicU64::new(0);
    let Ok(spec) = std::env::var(CRASH_ENV) else {
        return;
    };
    let (n, filter) = spec.split_once(':').unwrap_or((spec.as_str(), ""));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if !filter.is_empty() && !filter.split(',').any(|p| name.starts_with(p)) {
        return;
    }
    let k = RENAMES.fetch_add(1, Ordering::SeqCst) + 1;
    if n.trim().parse::<u64>().ok() == Some(k) {
        eprintln!(
            "{CRASH_ENV}: crashing after rename {k} ({})",
            path.display()
        );
        // `_exit` semantics: Rust's `exit` runs no destructors of ours and flushes nothing we
        // buffer; unlike `abort` it leaves no core dump behind in tests.
        std::process::exit(137);
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// `t` unchanged if every value is finite; otherwise an error naming the file, the tensor and the
/// first bad element (a model with NaN or infinite weights cannot train or generate, and the
/// failure would otherwise surface much later as a NaN loss).
fn all_finite(file: &SafetensorsFile, name: &str, t: HostTensor) -> Result<HostTensor> {
    if let Some((i, x)) = t.data.iter().enumerate().find(|(_, x)| !x.is_finite()) {
        let count = t.data.iter().filter(|x| !x.is_finite()).count();
        bail!(
            "{}: tensor `{name}` holds {x} at element {i} ({count} non-finite values in all): \
             the weights are corrupt (or were saved from a diverged run)",
            file.path().display()
        );
    }
    Ok(t)
}

/// Non-parameter buffers some GPT-2 checkpoints store (causal masks), the tied LM head, and the
/// PEPLER tensors of a checkpoint we saved (the GPT-2 loader takes only the GPT-2 part).
fn is_known_non_param(name: &str) -> bool {
    name.starts_with("user_embeddings.")
        || name.starts_with("item_embeddings.")
        || name.starts_with("recommender.")
        || name.ends_with(".attn.bias")
        || name.ends_with(".attn.masked_bias")
        || name == "lm_head.weight"
        || name.ends_with(".attn.bias.weight")
}

impl ParamSet {
    /// Reads every parameter of `cfg` from `file`, stored under `prefix + name` (e.g. prefix
    /// `param.` for a parity dump, `` for our checkpoints). Missing, wrong-shape and
    /// wrong-dtype tensors are errors naming the file and the tensor.
    pub fn from_safetensors(
        file: &SafetensorsFile,
        cfg: &ModelConfig,
        prefix: &str,
    ) -> Result<Self> {
        cfg.validate()
            .with_context(|| format!("{}: model config", file.path().display()))?;
        ParamSet::try_from_fn(cfg, |spec| {
            let name = format!("{prefix}{}", spec.name);
            all_finite(file, &name, file.read_f32(&name, Some(&spec.shape))?)
        })
    }

    /// Loads a checkpoint written by `save`, taking the config from its metadata.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let file = SafetensorsFile::open(path)?;
        let text = file.require_meta(META_CONFIG)?;
        let cfg: ModelConfig = serde_json::from_str(&text).with_context(|| {
            format!(
                "{}: metadata `{META_CONFIG}` is not a model config",
                file.path().display()
            )
        })?;
        Self::from_safetensors(&file, &cfg, "")
    }

    /// Loads a checkpoint for a known config (the file's config metadata, if any, is not needed).
    pub fn load_with_config(path: impl AsRef<Path>, cfg: &ModelConfig) -> Result<Self> {
        let file = SafetensorsFile::open(path)?;
        Self::from_safetensors(&file, cfg, "")
    }

    /// Saves all parameters under their HF names (`transformer.*` as `save_pretrained` writes them;
    /// the tied `lm_head.weight` is not stored, as HF does) plus the PEPLER tensors, with
    /// metadata `format=pt` (HF requires it), our config and `extra`. Atomic.
    pub fn save(&self, path: impl AsRef<Path>, extra: &HashMap<String, String>) -> Result<()> {
        let mut meta = extra.clone();
        meta.insert("format".into(), "pt".into());
        meta.insert(META_FORMAT.into(), PARAMS_FORMAT.into());
        meta.insert(
            META_CONFIG.into(),
            serde_json::to_string(self.config()).context("serialising the model config")?,
        );
        write_f32_tensors(path, self.iter().map(|(s, t)| (s.name.as_str(), t)), meta)
    }

    /// Saves a Hugging Face model directory: `config.json` + `model.safetensors` (GPT-2 part readable
    /// by `GPT2LMHeadModel.from_pretrained(dir)`; PEPLER tensors alongside are ignored by HF).
    pub fn save_hf_dir(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        self.save(dir.join("model.safetensors"), &HashMap::new())?;
        write_text_atomic(&dir.join("config.json"), &self.config().to_hf_config_json())
    }

    /// Loads the released GPT-2 weights (HF `model.safetensors`, names with or without the
    /// `transformer.` prefix, fp32/fp16/bf16) into a model of config `cfg`; the GPT-2 shapes must
    /// match `cfg` except the vocabulary, which may be smaller: the missing rows (the PEPLER special
    /// tokens) are drawn N(0, 0.02) from `seed`, as the original's `resize_token_embeddings`. The
    /// PEPLER parameters are initialised from `seed` as in `ParamSet::init`.
    pub fn from_pretrained_gpt2(
        path: impl AsRef<Path>,
        cfg: &ModelConfig,
        seed: u64,
    ) -> Result<Self> {
        let file = SafetensorsFile::open(path)?;
        Self::from_pretrained_gpt2_file(&file, cfg, seed)
    }

    /// `from_pretrained_gpt2` on an already opened file.
    pub fn from_pretrained_gpt2_file(
        file: &SafetensorsFile,
        cfg: &ModelConfig,
        seed: u64,
    ) -> Result<Self> {
        let p = file.path().display();
        cfg.validate()
            .with_context(|| format!("{p}: model config"))?;
        // Which naming does the file use?
        let prefixed = file.contains("transformer.wte.weight");
        if !prefixed && !file.contains("wte.weight") {
            bail!("{p}: tensor `wte.weight` (or `transformer.wte.weight`) is missing: not a GPT-2 checkpoint?");
        }
        let stored = |hf: &str| -> String {
            let bare = hf.strip_prefix("transformer.").unwrap_or(hf);
            if prefixed {
                format!("transformer.{bare}")
            } else {
                bare.to_string()
            }
        };
        // Tensors in the file that we neither load nor know to ignore are a config mismatch
        // (e.g. more layers than `cfg`), which would silently drop weights.
        let wanted: std::collections::HashSet<String> = super::params::param_specs(cfg)
            .iter()
            .filter(|s| s.is_gpt2())
            .map(|s| stored(&s.name))
            .collect();
        let unexpected: Vec<String> = file
            .names()
            .into_iter()
            .filter(|n| !wanted.contains(n) && !is_known_non_param(n))
            .collect();
        if let Some(n) = unexpected.first() {
            bail!(
                "{p}: tensor `{n}` is not a parameter of the configured model ({} layers, {} wide); \
                 {} unexpected tensors in all",
                cfg.n_layer,
                cfg.n_embd,
                unexpected.len()
            );
        }
        ParamSet::try_from_fn(cfg, |spec| {
            if !spec.is_gpt2() {
                return Ok(init_tensor(spec, seed));
            }
            let name = stored(&spec.name);
            if spec.name == "transformer.wte.weight" {
                let t = file.read_f32(&name, None)?;
                let (v, c) = (spec.shape[0], spec.shape[1]);
                if t.shape.len() != 2 || t.shape[1] != c || t.shape[0] > v {
                    bail!(
                        "{p}: tensor `{name}` has shape {:?}, expected [<= {v}, {c}]",
                        t.shape
                    );
                }
                if v > t.shape[0] + PEPLER_ADDED_TOKENS {
                    // More than PEPLER's <bos>/<eos>/<pad> rows are missing: those tokens get
                    // untrained embeddings, which the user should know about.
                    eprintln!(
                        "warning: {p}: tensor `{name}` has {} rows but the vocabulary has {v} \
                         tokens: {} rows are new random embeddings, not only PEPLER's \
                         {PEPLER_ADDED_TOKENS} added tokens (is config.json's vocab_size or the \
                         tokenizer the model's?)",
                        t.shape[0],
                        v - t.shape[0]
                    );
                }
                return Ok(resize_vocab(all_finite(file, &name, t)?, v, seed));
            }
            all_finite(file, &name, file.read_f32(&name, Some(&spec.shape))?)
        })
    }
}

/// Appends rows to a [V0, C] embedding table up to `new_rows`, drawn N(0, 0.02) from a stream of
/// `seed` reserved for the resize (HF 4.18's `resize_token_embeddings` initialises the new table
/// with `_init_weights` and copies the old rows over).
pub fn resize_vocab(mut t: HostTensor, new_rows: usize, seed: u64) -> HostTensor {
    let (old, c) = (t.shape[0], t.shape[1]);
    if new_rows <= old {
        return t;
    }
    let mut extra = vec![0.0f32; (new_rows - old) * c];
    fill_normal(
        &mut seeded_rng(seed, "resize:transformer.wte.weight"),
        &mut extra,
        INIT_STD,
    );
    t.data.extend_from_slice(&extra);
    t.shape[0] = new_rows;
    t
}
