//! Whole training steps as graphs (`Pepler::train_step`, `src/model/step.rs`): on the emulated
//! device a step is recorded and replayed exactly as a CUDA graph would be, so these tests show
//! on every machine that a replayed step (new inputs, new dropout step, new AdamW factors, new
//! target count) computes the same bits as launching its kernels one by one, and that
//! `train_step` is the same as the five calls it replaces. The `_on_cuda` twins run the same
//! bodies on a GPU.

mod common;

use half::bf16;
use pepler_cuda::backend::cpu::CpuBackend;
use pepler_cuda::backend::gpu::GpuBackend;
use pepler_cuda::backend::{Act, AdamWParams, AdamWVariant, Backend};
use pepler_cuda::device::Device;
use pepler_cuda::model::batch::Batch;
use pepler_cuda::model::config::{ModelConfig, PromptKind, RecKind};
use pepler_cuda::model::params::ParamSet;
use pepler_cuda::model::pepler::{ForwardOptions, Pepler};
use pepler_cuda::model::step::{StepLaunch, TrainStep};

/// Continuous prompt, MLP rating head, dropout on: every per-step value is exercised.
fn config() -> ModelConfig {
    ModelConfig {
        dropout: 0.2,
        ..common::tiny(PromptKind::Continuous, RecKind::Mlp)
    }
}

/// A batch of `lens.len()` rows of `t` text positions, row r holding `lens[r]` real tokens;
/// `salt` changes the tokens, users, items and ratings but not the shape.
fn batch(cfg: &ModelConfig, t: usize, lens: &[usize], salt: usize) -> Batch {
    let b = lens.len();
    let (mut text, mut mask) = (Vec::new(), Vec::new());
    for (r, &n) in lens.iter().enumerate() {
        for j in 0..t {
            text.push(match j {
                0 => cfg.bos_id,
                _ if j + 1 == n => cfg.eos_id,
                _ if j < n => ((r * 7 + j * 5 + salt * 11) % 30) as u32,
                _ => cfg.pad_id,
            });
            mask.push((j < n) as u8);
        }
    }
    Batch {
        b,
        t,
        p: 0,
        users: (0..b).map(|r| ((r + salt) % 4) as u32).collect(),
        items: (0..b).map(|r| ((2 * r + salt) % 5) as u32).collect(),
        text,
        mask,
        rating: (0..b).map(|r| 0.1 * (r + salt) as f32 - 0.2).collect(),
        prompt: vec![],
    }
}

/// Batches: one shape four times (padded keys), another shape once, then the first again.
fn batches(cfg: &ModelConfig) -> Vec<Batch> {
    vec![
        batch(cfg, 5, &[5, 3, 4], 0),
        batch(cfg, 5, &[4, 5, 2], 1),
        batch(cfg, 5, &[3, 3, 5], 2),
        batch(cfg, 4, &[4, 2], 3),
        batch(cfg, 5, &[5, 2, 4], 4),
    ]
}

const HP: AdamWParams = AdamWParams {
    lr: 1e-2,
    beta1: 0.9,
    beta2: 0.999,
    eps: 1e-8,
    weight_decay: 0.01,
    variant: AdamWVariant::Torch,
};

/// Every trainable but the item embeddings (a frozen tensor in the group).
fn trainable<B: Backend, A: Act>(m: &Pepler<B, A>) -> Vec<bool> {
    m.specs()
        .iter()
        .map(|s| s.name != "item_embeddings.weight")
        .collect()
}

/// Everything a step leaves behind, as bits: losses, parameters, gradients, moments.
#[derive(Debug, PartialEq)]
struct Trace {
    losses: Vec<u32>,
    params: Vec<Vec<u32>>,
    grads: Vec<Vec<u32>>,
    moments: Vec<Vec<u32>>,
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn trace<B: Backend, A: Act>(m: &Pepler<B, A>, losses: Vec<u32>) -> Trace {
    let set = |p: ParamSet| p.iter().map(|(_, t)| bits(&t.data)).collect();
    let moments = m
        .optimizer_moments()
        .unwrap()
        .into_iter()
        .flatten()
        .flat_map(|(a, b)| [bits(&a), bits(&b)])
        .collect();
    Trace {
        losses,
        params: set(m.download_params().unwrap()),
        grads: set(m.download_grads().unwrap()),
        moments,
    }
}

fn model<B: Backend, A: Act>(be: B) -> Pepler<B, A> {
    let cfg = config();
    let mut m = Pepler::<B, A>::with_activations(be, &ParamSet::init(&cfg, 7)).unwrap();
    m.seed = 99;
    m
}

/// The batches through `train_step` (graphs on or off); the last step also asks for the norm.
fn with_train_step<B: Backend, A: Act>(be: B, graphs: bool) -> (Trace, Vec<StepLaunch>) {
    let mut m = model::<B, A>(be);
    m.set_step_graphs(graphs);
    let flags = trainable(&m);
    let all = batches(m.config());
    let (mut losses, mut launches) = (Vec::new(), Vec::new());
    for (k, b) in all.iter().enumerate() {
        let last = k + 1 == all.len();
        let r = m
            .train_step(
                b,
                TrainStep {
                    step: 10 + k as u64,
                    adam_step: 1 + k as u64,
                    hp: HP,
                    trainable: &flags,
                    clip_grad_norm: Some(0.5),
                    want_grad_norm: last,
                },
            )
            .unwrap();
        losses.extend([r.out.text_loss.to_bits(), r.out.loss.to_bits()]);
        if let Some(n) = r.grad_norm {
            assert!(n.is_finite() && n > 0.0, "gradient norm {n}");
            losses.push(n.to_bits());
        }
        launches.push(r.launch);
    }
    (trace(&m, losses), launches)
}

/// The same steps as the five calls `train_step` replaces.
fn with_calls<B: Backend, A: Act>(be: B) -> Trace {
    let mut m = model::<B, A>(be);
    let flags = trainable(&m);
    let all = batches(m.config());
    let mut losses = Vec::new();
    for (k, b) in all.iter().enumerate() {
        m.zero_grads().unwrap();
        let opts = ForwardOptions {
            train: true,
            step: 10 + k as u64,
            want_logits: false,
        };
        let out = m.forward(b, opts).unwrap();
        m.backward(Some(&flags)).unwrap();
        losses.extend([out.text_loss.to_bits(), out.loss.to_bits()]);
        if k + 1 == all.len() {
            losses.push(m.grad_norm().unwrap().to_bits());
        }
        m.clip_grad_norm(0.5).unwrap();
        m.adamw_step(HP, 1 + k as u64, &flags).unwrap();
    }
    trace(&m, losses)
}

fn emu() -> GpuBackend {
    GpuBackend::new(Device::emu().unwrap())
}

fn gpu() -> GpuBackend {
    GpuBackend::new(Device::cuda().expect("a CUDA GPU"))
}

/// Graphs on: plain (first sight), captured, replayed, plain (a new shape), replayed (the first
/// shape again; clipping already computes the norm the last step also reads); every bit as with
/// graphs off and as the five calls.
fn replayed_steps_equal_plain_steps<A: Act>(be: impl Fn() -> GpuBackend) {
    let (on, launches) = with_train_step::<_, A>(be(), true);
    use StepLaunch::*;
    assert_eq!(launches, [Plain, Captured, Replayed, Plain, Replayed]);
    let (off, plain) = with_train_step::<_, A>(be(), false);
    assert!(plain.iter().all(|&l| l == Plain));
    assert_eq!(on, off, "graphs on vs off");
    assert_eq!(on, with_calls::<_, A>(be()), "train_step vs the five calls");
}

#[test]
fn replayed_steps_equal_plain_steps_f32() {
    replayed_steps_equal_plain_steps::<f32>(emu);
}

#[test]
fn replayed_steps_equal_plain_steps_bf16() {
    replayed_steps_equal_plain_steps::<bf16>(emu);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn replayed_steps_equal_plain_steps_f32_on_cuda() {
    replayed_steps_equal_plain_steps::<f32>(gpu);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn replayed_steps_equal_plain_steps_bf16_on_cuda() {
    replayed_steps_equal_plain_steps::<bf16>(gpu);
}

/// The CPU backend has no graphs: `train_step` launches plainly and equals the five calls.
#[test]
fn train_step_equals_the_calls_on_cpu() {
    let (t, launches) = with_train_step::<_, f32>(CpuBackend::new(), true);
    assert!(launches.iter().all(|&l| l == StepLaunch::Plain));
    assert_eq!(t, with_calls::<_, f32>(CpuBackend::new()));
}

/// A larger batch reallocates the activations: the graphs that used the old ones are dropped,
/// and the shape captured before is captured again (seen already) instead of replayed.
#[test]
fn a_larger_batch_drops_the_graphs() {
    let mut m = model::<_, f32>(emu());
    let flags = trainable(&m);
    let cfg = m.config().clone();
    let step = |m: &mut Pepler<GpuBackend, f32>, b: &Batch, k: u64| {
        let s = TrainStep {
            step: k,
            adam_step: k,
            hp: HP,
            trainable: &flags,
            clip_grad_norm: None,
            want_grad_norm: false,
        };
        m.train_step(b, s).unwrap().launch
    };
    let small = batch(&cfg, 5, &[5, 3, 4], 0);
    assert_eq!(step(&mut m, &small, 1), StepLaunch::Plain);
    assert_eq!(step(&mut m, &small, 2), StepLaunch::Captured);
    assert_eq!(m.step_graphs(), 1);
    let large = batch(&cfg, 6, &[5, 3, 4, 6], 1);
    assert_eq!(step(&mut m, &large, 3), StepLaunch::Plain);
    assert_eq!(
        m.step_graphs(),
        0,
        "reallocated activations drop the graphs"
    );
    assert_eq!(step(&mut m, &small, 4), StepLaunch::Captured);
    assert_eq!(step(&mut m, &small, 5), StepLaunch::Replayed);
}
