//! Model parameters on the host (Contract 3): the canonical parameter list of a config (Hugging
//! Face GPT-2 names and layouts + PEPLER names, Contract 2), seeded initialisation with the
//! original's distributions, and named access. Safetensors I/O lives in `safetensors_io.rs`.

use std::collections::HashMap;

use anyhow::{bail, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rayon::prelude::*;

use super::config::{ModelConfig, RecKind};

/// GPT-2's `initializer_range`.
pub const INIT_STD: f32 = 0.02;
/// PEPLER's `initrange` for the user/item embeddings and the MLP head weights.
pub const PEPLER_INIT_RANGE: f32 = 0.1;

/// A dense row-major f32 tensor on the host.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    /// Checks that `data` has `prod(shape)` elements.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            bail!(
                "tensor of shape {shape:?} needs {n} values, got {}",
                data.len()
            );
        }
        Ok(HostTensor { shape, data })
    }

    pub fn zeros(shape: &[usize]) -> Self {
        HostTensor {
            shape: shape.to_vec(),
            data: vec![0.0; shape.iter().product()],
        }
    }

    pub fn numel(&self) -> usize {
        self.data.len()
    }
}

/// How a parameter is initialised (the original's distributions).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// N(0, std): GPT-2 embeddings and Conv1D weights.
    Normal(f32),
    /// U(-a, a): PEPLER user/item embeddings, MLP head weights.
    Uniform(f32),
    /// All zeros: biases.
    Zeros,
    /// All ones: LayerNorm weights.
    Ones,
}

/// One parameter: Hugging Face name, shape, and its initialisation.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub init: Init,
}

impl ParamSpec {
    fn new(name: impl Into<String>, shape: &[usize], init: Init) -> Self {
        ParamSpec {
            name: name.into(),
            shape: shape.to_vec(),
            init,
        }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// True for the GPT-2 part (names under `transformer.`); false for the PEPLER additions.
    pub fn is_gpt2(&self) -> bool {
        self.name.starts_with("transformer.")
    }
}

/// Canonical parameter list for a config, in a fixed order (the order PyTorch's
/// `named_parameters()` gives for the original model: transformer, user/item embeddings,
/// recommender), with HF names and layouts. The LM head is tied to `transformer.wte.weight`.
pub fn param_specs(cfg: &ModelConfig) -> Vec<ParamSpec> {
    let c = cfg.n_embd;
    // HF `_init_weights`: c_proj weights get the GPT-2 paper's 1/sqrt(2 * n_layer) scaling.
    let proj_std = INIT_STD / ((2 * cfg.n_layer) as f32).sqrt();
    let mut v = vec![
        ParamSpec::new(
            "transformer.wte.weight",
            &[cfg.vocab_size, c],
            Init::Normal(INIT_STD),
        ),
        ParamSpec::new(
            "transformer.wpe.weight",
            &[cfg.n_positions, c],
            Init::Normal(INIT_STD),
        ),
    ];
    for i in 0..cfg.n_layer {
        let p = |s: &str| format!("transformer.h.{i}.{s}");
        v.push(ParamSpec::new(p("ln_1.weight"), &[c], Init::Ones));
        v.push(ParamSpec::new(p("ln_1.bias"), &[c], Init::Zeros));
        v.push(ParamSpec::new(
            p("attn.c_attn.weight"),
            &[c, 3 * c],
            Init::Normal(INIT_STD),
        ));
        v.push(ParamSpec::new(p("attn.c_attn.bias"), &[3 * c], Init::Zeros));
        v.push(ParamSpec::new(
            p("attn.c_proj.weight"),
            &[c, c],
            Init::Normal(proj_std),
        ));
        v.push(ParamSpec::new(p("attn.c_proj.bias"), &[c], Init::Zeros));
        v.push(ParamSpec::new(p("ln_2.weight"), &[c], Init::Ones));
        v.push(ParamSpec::new(p("ln_2.bias"), &[c], Init::Zeros));
        v.push(ParamSpec::new(
            p("mlp.c_fc.weight"),
            &[c, 4 * c],
            Init::Normal(INIT_STD),
        ));
        v.push(ParamSpec::new(p("mlp.c_fc.bias"), &[4 * c], Init::Zeros));
        v.push(ParamSpec::new(
            p("mlp.c_proj.weight"),
            &[4 * c, c],
            Init::Normal(proj_std),
        ));
        v.push(ParamSpec::new(p("mlp.c_proj.bias"), &[c], Init::Zeros));
    }
    v.push(ParamSpec::new("transformer.ln_f.weight", &[c], Init::Ones));
    v.push(ParamSpec::new("transformer.ln_f.bias", &[c], Init::Zeros));
    if cfg.has_id_embeddings() {
        let u = Init::Uniform(PEPLER_INIT_RANGE);
        v.push(ParamSpec::new(
            "user_embeddings.weight",
            &[cfg.n_users, c],
            u,
        ));
        v.push(ParamSpec::new(
            "item_embeddings.weight",
            &[cfg.n_items, c],
            u,
        ));
    }
    if cfg.rec == RecKind::Mlp {
        let h = cfg.mlp_hidden;
        let u = Init::Uniform(PEPLER_INIT_RANGE);
        v.push(ParamSpec::new(
            "recommender.first_layer.weight",
            &[h, 2 * c],
            u,
        ));
        v.push(ParamSpec::new(
            "recommender.first_layer.bias",
            &[h],
            Init::Zeros,
        ));
        for j in 0..cfg.mlp_layers {
            v.push(ParamSpec::new(
                format!("recommender.layers.{j}.weight"),
                &[h, h],
                u,
            ));
            v.push(ParamSpec::new(
                format!("recommender.layers.{j}.bias"),
                &[h],
                Init::Zeros,
            ));
        }
        v.push(ParamSpec::new("recommender.last_layer.weight", &[1, h], u));
        v.push(ParamSpec::new(
            "recommender.last_layer.bias",
            &[1],
            Init::Zeros,
        ));
    }
    v
}

/// 64-bit FNV-1a: a stable hash of a tensor name, used to give each tensor its own RNG stream so
/// that a tensor's initial values depend only on (seed, name, shape), not on which other
/// parameters the config has.
pub(crate) fn name_stream(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A deterministic RNG for (seed, purpose): ChaCha20 seeded with `seed`, stream = hash(purpose).
pub(crate) fn seeded_rng(seed: u64, purpose: &str) -> ChaCha20Rng {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    rng.set_stream(name_stream(purpose));
    rng
}

/// Fills `out` with N(0, std) draws (Box-Muller in f64, both outputs used).
pub(crate) fn fill_normal(rng: &mut ChaCha20Rng, out: &mut [f32], std: f32) {
    let mut chunks = out.chunks_exact_mut(2);
    for pair in &mut chunks {
        let (a, b) = box_muller(rng);
        pair[0] = (a * std as f64) as f32;
        pair[1] = (b * std as f64) as f32;
    }
    if let [last] = chunks.into_remainder() {
        *last = (box_muller(rng).0 * std as f64) as f32;
    }
}

fn box_muller(rng: &mut ChaCha20Rng) -> (f64, f64) {
    // u1 in (0, 1] so ln(u1) is finite.
    let u1: f64 = 1.0 - rng.gen::<f64>();
    let u2: f64 = rng.gen::<f64>();
    let r = (-2.0 * u1.ln()).sqrt();
    let t = std::f64::consts::TAU * u2;
    (r * t.cos(), r * t.sin())
}

/// Fills `out` with U(-a, a) draws.
pub(crate) fn fill_uniform(rng: &mut ChaCha20Rng, out: &mut [f32], a: f32) {
    for x in out.iter_mut() {
        *x = ((rng.gen::<f64>() * 2.0 - 1.0) * a as f64) as f32;
    }
}

/// Fills one tensor per its `Init`, from the (seed, tensor name) stream.
pub fn init_tensor(spec: &ParamSpec, seed: u64) -> HostTensor {
    let mut t = HostTensor::zeros(&spec.shape);
    match spec.init {
        Init::Zeros => {}
        Init::Ones => t.data.fill(1.0),
        Init::Normal(std) => fill_normal(&mut seeded_rng(seed, &spec.name), &mut t.data, std),
        Init::Uniform(a) => fill_uniform(&mut seeded_rng(seed, &spec.name), &mut t.data, a),
    }
    t
}

/// Named host tensors in `param_specs` order, for one config.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSet {
    config: ModelConfig,
    specs: Vec<ParamSpec>,
    tensors: Vec<HostTensor>,
    index: HashMap<String, usize>,
}

impl ParamSet {
    fn from_parts(config: &ModelConfig, tensors: Vec<HostTensor>) -> Self {
        let specs = param_specs(config);
        debug_assert_eq!(specs.len(), tensors.len());
        let index = specs
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.clone(), i))
            .collect();
        ParamSet {
            config: config.clone(),
            specs,
            tensors,
            index,
        }
    }

    /// All parameters zero (a buffer to download into, or gradients with the same layout).
    pub fn zeros(cfg: &ModelConfig) -> Self {
        let t = param_specs(cfg)
            .iter()
            .map(|s| HostTensor::zeros(&s.shape))
            .collect();
        Self::from_parts(cfg, t)
    }

    /// Fresh parameters with the original's distributions (HF GPT-2 `_init_weights` for the
    /// transformer, PEPLER's uniform(-0.1, 0.1) for user/item embeddings and MLP weights, zero
    /// biases, unit LayerNorm weights), deterministic in `seed`.
    pub fn init(cfg: &ModelConfig, seed: u64) -> Self {
        // Each tensor has its own RNG stream, so initialising them in parallel gives the same bits.
        let t = param_specs(cfg)
            .par_iter()
            .map(|s| init_tensor(s, seed))
            .collect();
        Self::from_parts(cfg, t)
    }

    /// Builds a set by asking `f` for each spec's tensor, in canonical order; `f`'s tensors must
    /// have the spec's shape (checked; the error names the tensor).
    pub fn try_from_fn(
        cfg: &ModelConfig,
        mut f: impl FnMut(&ParamSpec) -> Result<HostTensor>,
    ) -> Result<Self> {
        let specs = param_specs(cfg);
        let mut tensors = Vec::with_capacity(specs.len());
        for s in &specs {
            let t = f(s)?;
            if t.shape != s.shape || t.data.len() != s.numel() {
                bail!(
                    "tensor `{}` has shape {:?}, expected {:?}",
                    s.name,
                    t.shape,
                    s.shape
                );
            }
            tensors.push(t);
        }
        Ok(Self::from_parts(cfg, tensors))
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }
    pub fn specs(&self) -> &[ParamSpec] {
        &self.specs
    }
    pub fn len(&self) -> usize {
        self.tensors.len()
    }
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }
    /// Total number of scalars.
    pub fn num_elements(&self) -> usize {
        self.tensors.iter().map(|t| t.numel()).sum()
    }
    /// Position of `name` in canonical order.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }
    pub fn get(&self, name: &str) -> Option<&HostTensor> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }
    pub fn get_mut(&mut self, name: &str) -> Option<&mut HostTensor> {
        match self.index.get(name) {
            Some(&i) => Some(&mut self.tensors[i]),
            None => None,
        }
    }
    /// Like `get`, with an error naming the missing parameter.
    pub fn tensor(&self, name: &str) -> Result<&HostTensor> {
        match self.get(name) {
            Some(t) => Ok(t),
            None => bail!("no parameter named `{name}` in this model"),
        }
    }
    /// Tensor by canonical position.
    pub fn at(&self, i: usize) -> &HostTensor {
        &self.tensors[i]
    }
    pub fn at_mut(&mut self, i: usize) -> &mut HostTensor {
        &mut self.tensors[i]
    }
    /// (spec, tensor) pairs in canonical order.
    pub fn iter(&self) -> impl Iterator<Item = (&ParamSpec, &HostTensor)> {
        self.specs.iter().zip(self.tensors.iter())
    }
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&ParamSpec, &mut HostTensor)> {
        self.specs.iter().zip(self.tensors.iter_mut())
    }
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.specs.iter().map(|s| s.name.as_str())
    }
    /// Consumes the set, giving the tensors in canonical order.
    pub fn into_tensors(self) -> Vec<HostTensor> {
        self.tensors
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::PromptKind;

    #[test]
    fn specs_have_gpt2_small_count() {
        let cfg = ModelConfig::gpt2_small(1, 1).with_prompt(PromptKind::Discrete);
        let specs = param_specs(&cfg);
        assert_eq!(specs.len(), 2 + 12 * 12 + 2);
        let n: usize = specs.iter().map(|s| s.numel()).sum();
        // 124,439,808 for the 50257 vocab; + 3 rows of 768.
        assert_eq!(n, 124_439_808 + 3 * 768);
    }

    #[test]
    fn mlp_head_specs_in_order() {
        let cfg = ModelConfig::tiny(3, 4).with_rec(RecKind::Mlp, 1.0);
        let names: Vec<_> = param_specs(&cfg).into_iter().map(|s| s.name).collect();
        let tail = &names[names.len() - 10..];
        assert_eq!(
            tail,
            [
                "user_embeddings.weight",
                "item_embeddings.weight",
                "recommender.first_layer.weight",
                "recommender.first_layer.bias",
                "recommender.layers.0.weight",
                "recommender.layers.0.bias",
                "recommender.layers.1.weight",
                "recommender.layers.1.bias",
                "recommender.last_layer.weight",
                "recommender.last_layer.bias",
            ]
        );
    }

    #[test]
    fn init_is_deterministic_and_has_the_right_distributions() {
        let cfg = ModelConfig::tiny(50, 60).with_rec(RecKind::Mlp, 1.0);
        let a = ParamSet::init(&cfg, 7);
        assert_eq!(a, ParamSet::init(&cfg, 7));
        assert_ne!(a, ParamSet::init(&cfg, 8));
        let wte = &a.get("transformer.wte.weight").unwrap().data;
        let mean = wte.iter().map(|&x| x as f64).sum::<f64>() / wte.len() as f64;
        let var = wte.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / wte.len() as f64;
        assert!(mean.abs() < 1e-3, "mean {mean}");
        assert!((var.sqrt() - 0.02).abs() < 2e-4, "std {}", var.sqrt());
        let proj = &a.get("transformer.h.1.mlp.c_proj.weight").unwrap().data;
        let sd = (proj.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / proj.len() as f64).sqrt();
        assert!((sd - 0.01).abs() < 5e-4, "c_proj std {sd}"); // 0.02 / sqrt(2 * 2)
        let u = &a.get("user_embeddings.weight").unwrap().data;
        assert!(u.iter().all(|&x| x.abs() <= 0.1) && u.iter().any(|&x| x.abs() > 0.09));
        assert!(a
            .get("recommender.first_layer.bias")
            .unwrap()
            .data
            .iter()
            .all(|&x| x == 0.0));
        assert!(a
            .get("transformer.ln_f.weight")
            .unwrap()
            .data
            .iter()
            .all(|&x| x == 1.0));
        // A tensor's values do not depend on which other tensors the config has.
        let plain = ParamSet::init(&ModelConfig::tiny(50, 60), 7);
        assert_eq!(
            plain.get("user_embeddings.weight"),
            a.get("user_embeddings.weight")
        );
    }
}
