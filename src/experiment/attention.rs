//! Attention maps for `pepler-cuda attention` (the paper's Fig. 8): the softmax probabilities of
//! one layer over `[user, item, <bos>, w1 … wn]`, computed on the host from the model's parameters
//! with the CPU reference ops (`ops::layernorm`, `ops::matmul`, `ops::attention`, …).
//!
//! Why a host forward instead of reading the backend's activations: backends own what they save
//! for the backward pass (the GPU backend keeps only each row's log-sum-exp, not the probabilities),
//! so the probabilities are recomputed here from the downloaded parameters: one short sequence,
//! no dropout — the same function of the same weights as the model's evaluation forward.
//! [`HostGpt2::logits`] runs the rest of the network too, so a test can check the host forward
//! against the backend (the next-token argmax must reproduce greedy generation).

use anyhow::{bail, Context, Result};

use crate::model::config::{ModelConfig, PromptKind};
use crate::model::params::ParamSet;
use crate::ops::attention::{attention_forward, AttnShape};
use crate::ops::gelu::gelu_forward;
use crate::ops::layernorm::layernorm_forward;
use crate::ops::matmul::{matmul_forward, WeightLayout};

/// Which heads of a layer a map shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadSel {
    /// The mean over all heads.
    Mean,
    /// One head (0-based).
    Head(usize),
}

impl std::str::FromStr for HeadSel {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        if s.eq_ignore_ascii_case("mean") {
            return Ok(HeadSel::Mean);
        }
        s.parse::<usize>()
            .map(HeadSel::Head)
            .map_err(|_| anyhow::anyhow!("--head `{s}`: expected `mean` or a head index (0-based)"))
    }
}

/// Which layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerSel {
    Last,
    /// 0-based.
    Index(usize),
}

impl std::str::FromStr for LayerSel {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        if s.eq_ignore_ascii_case("last") {
            return Ok(LayerSel::Last);
        }
        s.parse::<usize>().map(LayerSel::Index).map_err(|_| {
            anyhow::anyhow!("--layer `{s}`: expected `last` or a layer index (0-based)")
        })
    }
}

impl LayerSel {
    /// The 0-based index in a model of `n_layer` layers (an error when out of range).
    pub fn resolve(self, n_layer: usize) -> Result<usize> {
        match self {
            LayerSel::Last => Ok(n_layer - 1),
            LayerSel::Index(i) if i < n_layer => Ok(i),
            LayerSel::Index(i) => bail!(
                "--layer {i}: the model has {n_layer} layers (0..{})",
                n_layer - 1
            ),
        }
    }
}

/// A host-side GPT-2 + PEPLER forward over one continuous-prompt sequence.
pub struct HostGpt2<'a> {
    params: &'a ParamSet,
    cfg: &'a ModelConfig,
}

fn tensor<'p>(params: &'p ParamSet, name: &str) -> Result<&'p [f32]> {
    params
        .get(name)
        .map(|t| t.data.as_slice())
        .with_context(|| format!("the model has no parameter `{name}`"))
}

/// Everything the forward computes that callers look at.
pub struct HostForward {
    /// Sequence length L (2 prompt positions + tokens).
    pub len: usize,
    /// Attention probabilities of every layer, each (n_head, L, L).
    pub att: Vec<Vec<f32>>,
    /// The final hidden states after `ln_f`, (L, C).
    pub hidden: Vec<f32>,
}

impl<'a> HostGpt2<'a> {
    pub fn new(params: &'a ParamSet) -> Result<Self> {
        let cfg = params.config();
        if cfg.prompt != PromptKind::Continuous {
            bail!(
                "attention maps are drawn for the continuous prompt (PEPLER); this model uses the \
                 discrete prompt (PEPLER-D)"
            );
        }
        Ok(HostGpt2 { params, cfg })
    }

    /// The forward over `[user, item, tokens…]` (`tokens` in the model's vocabulary, typically
    /// `<bos>` followed by the explanation), without dropout.
    pub fn forward(&self, user: u32, item: u32, tokens: &[u32]) -> Result<HostForward> {
        let cfg = self.cfg;
        let p = self.params;
        let (c, nh) = (cfg.n_embd, cfg.n_head);
        let l = 2 + tokens.len();
        if l > cfg.n_positions {
            bail!("{l} positions exceed the model's {}", cfg.n_positions);
        }
        if user as usize >= cfg.n_users || item as usize >= cfg.n_items {
            bail!(
                "user {user} / item {item} outside the model's {} users / {} items",
                cfg.n_users,
                cfg.n_items
            );
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= cfg.vocab_size) {
            bail!("token {bad} outside the vocabulary of {}", cfg.vocab_size);
        }
        let wte = tensor(p, "transformer.wte.weight")?;
        let wpe = tensor(p, "transformer.wpe.weight")?;
        let ue = tensor(p, "user_embeddings.weight")?;
        let ie = tensor(p, "item_embeddings.weight")?;
        // Embeddings: prompt vectors and word embeddings, each plus its position's (as HF adds wpe
        // to `inputs_embeds` at every position, prompt included).
        let mut x = vec![0f32; l * c];
        for pos in 0..l {
            let row: &[f32] = match pos {
                0 => &ue[user as usize * c..][..c],
                1 => &ie[item as usize * c..][..c],
                _ => &wte[tokens[pos - 2] as usize * c..][..c],
            };
            for (k, o) in x[pos * c..(pos + 1) * c].iter_mut().enumerate() {
                *o = row[k] + wpe[pos * c + k];
            }
        }
        let eps = cfg.layer_norm_epsilon;
        let mut ln = vec![0f32; l * c];
        let (mut mean, mut rstd) = (vec![0f32; l], vec![0f32; l]);
        let mut qkv = vec![0f32; l * 3 * c];
        let mut atty = vec![0f32; l * c];
        let mut proj = vec![0f32; l * c];
        let mut fc = vec![0f32; l * 4 * c];
        let mut fcg = vec![0f32; l * 4 * c];
        let mut atts = Vec::with_capacity(cfg.n_layer);
        for li in 0..cfg.n_layer {
            let w = |s: &str| tensor(p, &format!("transformer.h.{li}.{s}"));
            layernorm_forward(
                &mut ln,
                &mut mean,
                &mut rstd,
                &x,
                w("ln_1.weight")?,
                w("ln_1.bias")?,
                l,
                c,
                eps,
            );
            matmul_forward(
                &mut qkv,
                &ln,
                w("attn.c_attn.weight")?,
                Some(w("attn.c_attn.bias")?),
                l,
                c,
                3 * c,
                WeightLayout::InOut,
            );
            let mut att = vec![0f32; nh * l * l];
            let shape = AttnShape { b: 1, l, c, nh };
            attention_forward(&mut atty, &mut att, &qkv, None, None, shape);
            atts.push(att);
            matmul_forward(
                &mut proj,
                &atty,
                w("attn.c_proj.weight")?,
                Some(w("attn.c_proj.bias")?),
                l,
                c,
                c,
                WeightLayout::InOut,
            );
            x.iter_mut().zip(&proj).for_each(|(a, b)| *a += b);
            layernorm_forward(
                &mut ln,
                &mut mean,
                &mut rstd,
                &x,
                w("ln_2.weight")?,
                w("ln_2.bias")?,
                l,
                c,
                eps,
            );
            matmul_forward(
                &mut fc,
                &ln,
                w("mlp.c_fc.weight")?,
                Some(w("mlp.c_fc.bias")?),
                l,
                c,
                4 * c,
                WeightLayout::InOut,
            );
            gelu_forward(&mut fcg, &fc);
            matmul_forward(
                &mut proj,
                &fcg,
                w("mlp.c_proj.weight")?,
                Some(w("mlp.c_proj.bias")?),
                l,
                4 * c,
                c,
                WeightLayout::InOut,
            );
            x.iter_mut().zip(&proj).for_each(|(a, b)| *a += b);
        }
        layernorm_forward(
            &mut ln,
            &mut mean,
            &mut rstd,
            &x,
            tensor(p, "transformer.ln_f.weight")?,
            tensor(p, "transformer.ln_f.bias")?,
            l,
            c,
            eps,
        );
        Ok(HostForward {
            len: l,
            att: atts,
            hidden: ln,
        })
    }

    /// Next-token logits (L, V) from a forward's hidden states (the LM head is tied to `wte`).
    pub fn logits(&self, fwd: &HostForward) -> Result<Vec<f32>> {
        let (c, v) = (self.cfg.n_embd, self.cfg.vocab_size);
        let mut out = vec![0f32; fwd.len * v];
        matmul_forward(
            &mut out,
            &fwd.hidden,
            tensor(self.params, "transformer.wte.weight")?,
            None,
            fwd.len,
            c,
            v,
            WeightLayout::OutIn,
        );
        Ok(out)
    }
}

/// One layer's map, reduced over heads: `(L, L)` row-major, row = query position.
pub fn select_heads(att: &[f32], nh: usize, l: usize, head: HeadSel) -> Result<Vec<f32>> {
    if att.len() != nh * l * l {
        bail!(
            "attention of {} values is not {nh} heads of {l}x{l}",
            att.len()
        );
    }
    match head {
        HeadSel::Head(h) if h < nh => Ok(att[h * l * l..(h + 1) * l * l].to_vec()),
        HeadSel::Head(h) => bail!("--head {h}: the model has {nh} heads (0..{})", nh - 1),
        HeadSel::Mean => {
            let mut m = vec![0f32; l * l];
            for h in 0..nh {
                for (o, a) in m.iter_mut().zip(&att[h * l * l..(h + 1) * l * l]) {
                    *o += a;
                }
            }
            m.iter_mut().for_each(|x| *x /= nh as f32);
            Ok(m)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The `attention` job

use std::path::PathBuf;

use super::plot::{heatmap_figure, HeatPanel};
use crate::backend::{Act, Backend};
use crate::cli::backend::OnBackend;
use crate::generate::{greedy, GenPrompt};
use crate::model::pepler::Pepler;
use crate::train::checkpoint;
use crate::train::run_log::write_atomic;
use crate::train::session::Session;

/// `pepler-cuda attention`: generate the explanation for one (user, item) with a trained run's
/// best model (on the chosen backend), then draw the chosen layer's attention over
/// `[user, item, <bos>, generated words]`; with `compare_init`, the untrained model (the run's
/// initial parameters: same seed, same weights as before its first step) beside it, over its own
/// generated words, as the paper's Fig. 8.
pub struct AttentionJob {
    pub run_dir: PathBuf,
    pub user: String,
    pub item: String,
    pub layer: LayerSel,
    pub head: HeadSel,
    pub compare_init: bool,
    pub out_dir: PathBuf,
}

/// One drawn model: its explanation and map.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AttentionPanel {
    pub model: String,
    pub explanation: String,
    pub labels: Vec<String>,
    /// (L, L) row-major, row = query position.
    pub weights: Vec<f32>,
}

/// What the job wrote.
#[derive(Clone, Debug)]
pub struct AttentionOutcome {
    pub panels: Vec<AttentionPanel>,
    pub layer: usize,
    pub files: Vec<PathBuf>,
}

fn token_label(session: &Session, model_id: u32) -> Result<String> {
    let ids = session.tokenizer_ids(&[model_id])?;
    let tok = &session.tokenizer;
    Ok(if ids[0] == tok.bos_id() {
        "<bos>".into()
    } else if ids[0] == tok.eos_id() {
        "<eos>".into()
    } else if ids[0] == tok.pad_id() {
        "<pad>".into()
    } else {
        let s = tok.decode(&ids, false)?;
        let t = s.trim();
        if t.is_empty() {
            format!("{s:?}")
        } else {
            t.to_string()
        }
    })
}

impl AttentionJob {
    /// Generates with `params` loaded into `model` (same configuration), then maps the attention.
    #[allow(clippy::too_many_arguments)]
    fn panel<B: Backend, A: Act>(
        &self,
        model: &mut Pepler<B, A>,
        params: &ParamSet,
        session: &Session,
        name: &str,
        (u, i): (u32, u32),
        layer: usize,
    ) -> Result<AttentionPanel> {
        let cfg = params.config().clone();
        model.upload_params(params)?;
        let max_words = cfg.n_positions.saturating_sub(3).clamp(1, 20);
        let gen = greedy(
            model,
            GenPrompt::Continuous {
                users: &[u],
                items: &[i],
            },
            max_words,
        )?
        .pop()
        .unwrap_or_default();
        let mut tokens = vec![cfg.bos_id];
        tokens.extend_from_slice(&gen);
        let host = HostGpt2::new(params)?;
        let fwd = host.forward(u, i, &tokens)?;
        let weights = select_heads(&fwd.att[layer], cfg.n_head, fwd.len, self.head)?;
        let mut labels = vec![format!("user {}", self.user), format!("item {}", self.item)];
        for &t in &tokens {
            labels.push(token_label(session, t)?);
        }
        let words: Vec<u32> = gen.iter().copied().filter(|&t| t != cfg.eos_id).collect();
        let explanation = session
            .tokenizer
            .decode(&session.tokenizer_ids(&words)?, true)?
            .trim()
            .to_string();
        Ok(AttentionPanel {
            model: name.into(),
            explanation,
            labels,
            weights,
        })
    }
}

impl OnBackend for AttentionJob {
    type Out = AttentionOutcome;

    fn run<B: Backend, A: Act>(self, be: B) -> Result<AttentionOutcome> {
        let (params, side) = checkpoint::load_model(&self.run_dir)?;
        let cfg = &side.train_config;
        HostGpt2::new(&params)?;
        let session = Session::load(cfg)?;
        if session.vocab != side.vocab.clone().map(|v| v.restored()) {
            bail!(
                "{}: the model's compact vocabulary differs from the one its dataset gives now \
                 (was the data changed?)",
                self.run_dir.display()
            );
        }
        let u = session.dataset.users.lookup(&self.user)?;
        let i = session.dataset.items.lookup(&self.item)?;
        let mc = params.config().clone();
        let layer = self.layer.resolve(mc.n_layer)?;
        let mut model = Pepler::<B, A>::with_activations(be, &params)?;
        let mut panels = Vec::new();
        if self.compare_init {
            let init = session.initial_params(cfg, &mc)?;
            let name = "before training";
            panels.push(self.panel(&mut model, &init, &session, name, (u, i), layer)?);
        }
        let name = "after training";
        panels.push(self.panel(&mut model, &params, &session, name, (u, i), layer)?);
        std::fs::create_dir_all(&self.out_dir)
            .with_context(|| format!("creating {}", self.out_dir.display()))?;
        let heads = match self.head {
            HeadSel::Mean => format!("mean of {} heads", mc.n_head),
            HeadSel::Head(h) => format!("head {h}"),
        };
        let title = format!(
            "Attention of layer {} of {} ({heads}), user {} / item {}",
            layer + 1,
            mc.n_layer,
            self.user,
            self.item
        );
        let hp: Vec<HeatPanel> = panels
            .iter()
            .enumerate()
            .map(|(k, p)| HeatPanel {
                title: if panels.len() > 1 {
                    format!("({}) {}", (b'a' + k as u8) as char, p.model)
                } else {
                    p.model.clone()
                },
                labels: p.labels.clone(),
                weights: p.weights.clone(),
            })
            .collect();
        let [svg, png] = heatmap_figure(&title, &hp)?.write(&self.out_dir, "attention")?;
        let json_path = self.out_dir.join("attention.json");
        let json = serde_json::json!({
            "user": self.user,
            "item": self.item,
            "layer": layer,
            "head": heads,
            "panels": panels,
        });
        write_atomic(&json_path, serde_json::to_string_pretty(&json)?.as_bytes())?;
        Ok(AttentionOutcome {
            panels,
            layer,
            files: vec![png, svg, json_path],
        })
    }
}
