//! Model tests written once and run on every backend (burn's testgen pattern: `model_tests!` expands
//! the bodies into one module per backend — `cpu`, `emu` (the GPU backend on the emulated device)
//! and `cuda` (`#[ignore]`d, names ending `_on_cuda`)): gradients against finite differences,
//! padding invariance, bitwise determinism, dropout, frozen-gradient skipping, a forward/backward
//! check against the PyTorch fixtures (the full parity table is `pepler-cuda check-parity`), and
//! the GPU backend against the CPU backend on random configurations (head sizes 8..128, L up to
//! 300: forward, backward and three AdamW steps). `model_tests_bf16!` runs the precision-independent
//! properties with bf16 activations (`cpu_bf16`, `emu_bf16`, `model_bf16_on_cuda`).

mod common;

use common::tiny;
use half::bf16;
use pepler_cuda::backend::cpu::CpuBackend;
use pepler_cuda::backend::gpu::GpuBackend;
use pepler_cuda::backend::{Act, Backend};
use pepler_cuda::device::Device;
use pepler_cuda::model::batch::Batch;
use pepler_cuda::model::config::{ModelConfig, PromptKind, RecKind};
use pepler_cuda::model::params::ParamSet;
use pepler_cuda::model::pepler::{ForwardOptions, ForwardOutput, Pepler};
use pepler_cuda::model::safetensors_io::SafetensorsFile;

/// Random params with non-trivial LayerNorm weights and biases (so no term hides behind 1 or 0).
fn params(cfg: &ModelConfig, seed: u64) -> ParamSet {
    let mut ps = ParamSet::init(cfg, seed);
    let mut k = 0u32;
    for (spec, t) in ps.iter_mut() {
        if spec.name.contains("ln_") || spec.name.ends_with("bias") {
            for x in t.data.iter_mut() {
                k = k.wrapping_mul(1664525).wrapping_add(1013904223);
                *x += ((k >> 8) as f32 / 16_777_216.0 - 0.5) * 0.2;
            }
        }
        // Larger embeddings than GPT-2's 0.02 so the gradients are well above f32 noise.
        if spec.name.contains("wte") || spec.name.contains("wpe") {
            t.data.iter_mut().for_each(|x| *x *= 3.0);
        }
    }
    ps
}

/// Rows: lengths 5 (full), 3, 4 (padded).
fn batch(cfg: &ModelConfig) -> Batch {
    let (b, t) = (3, 5);
    let lens = [5usize, 3, 4];
    let mut text = Vec::new();
    let mut mask = Vec::new();
    for (r, &n) in lens.iter().enumerate() {
        for j in 0..t {
            let tok = if j == 0 {
                cfg.bos_id
            } else if j + 1 == n {
                cfg.eos_id
            } else if j < n {
                ((r * 7 + j * 5) % 30) as u32
            } else {
                cfg.pad_id
            };
            text.push(tok);
            mask.push((j < n) as u8);
        }
    }
    let p = if cfg.prompt == PromptKind::Discrete {
        2
    } else {
        0
    };
    Batch {
        b,
        t,
        p,
        users: vec![0, 3, 1],
        items: vec![4, 2, 2],
        text,
        mask,
        rating: vec![0.1, -0.2, 0.3], // near the heads' outputs: a small, well-resolved loss
        prompt: if p > 0 {
            vec![3, 9, 11, cfg.pad_id, 20, 21]
        } else {
            vec![]
        },
    }
}

fn train() -> ForwardOptions {
    ForwardOptions {
        train: true,
        step: 1,
        want_logits: false,
    }
}

/// `opts` with the full logits requested.
fn with_logits(opts: ForwardOptions) -> ForwardOptions {
    ForwardOptions {
        want_logits: true,
        ..opts
    }
}

/// The original PEPLER optimizer settings (lr 1e-3, betas 0.9/0.999, eps 1e-6) with `variant`
/// and `weight_decay`.
fn adamw(
    variant: pepler_cuda::backend::AdamWVariant,
    weight_decay: f64,
) -> pepler_cuda::backend::AdamWParams {
    pepler_cuda::backend::AdamWParams {
        variant,
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-6,
        weight_decay,
    }
}

/// A model with activations stored as `A`.
fn model<B: Backend, A: Act>(be: B, ps: &ParamSet) -> Pepler<B, A> {
    Pepler::<B, A>::with_activations(be, ps).unwrap()
}

fn loss_of<B: Backend>(mk: &impl Fn() -> B, ps: &ParamSet, bt: &Batch) -> f64 {
    let mut m = Pepler::new(mk(), ps).unwrap();
    m.forward(bt, ForwardOptions::default()).unwrap().loss as f64
}

/// One training step's gradients from zero: the forward's output and every gradient (`need`: only
/// those, as `Pepler::backward`).
fn forward_backward<B: Backend, A: Act>(
    m: &mut Pepler<B, A>,
    bt: &Batch,
    opts: ForwardOptions,
    need: Option<&[bool]>,
) -> (ForwardOutput, ParamSet) {
    m.zero_grads().unwrap();
    let out = m.forward(bt, opts).unwrap();
    m.backward(need).unwrap();
    (out, m.download_grads().unwrap())
}

/// Index of the largest-magnitude entry (the best-resolved gradient coordinate).
fn argmax_abs(x: &[f32]) -> usize {
    (0..x.len())
        .max_by(|&a, &b| x[a].abs().total_cmp(&x[b].abs()))
        .unwrap()
}

fn gradient_check<B: Backend>(mk: &impl Fn() -> B, prompt: PromptKind, rec: RecKind) {
    let cfg = tiny(prompt.clone(), rec);
    let ps = params(&cfg, 11);
    let bt = batch(&cfg);
    let mut m = Pepler::new(mk(), &ps).unwrap();
    let (_, grads) = forward_backward(&mut m, &bt, train(), None);
    let mut checked = 0;
    for (spec, g) in grads.iter() {
        // A few coordinates per tensor: the largest-|g| one (to beat f32 noise) and two fixed ones.
        for &i in &[argmax_abs(&g.data), 0, g.data.len() / 2] {
            let h = 1e-2f32
                * ps.at(ps.index_of(&spec.name).unwrap()).data[i]
                    .abs()
                    .max(0.1);
            let mut plus = ps.clone();
            plus.get_mut(&spec.name).unwrap().data[i] += h;
            let mut minus = ps.clone();
            minus.get_mut(&spec.name).unwrap().data[i] -= h;
            let hp = plus.get(&spec.name).unwrap().data[i] as f64;
            let hm = minus.get(&spec.name).unwrap().data[i] as f64;
            let fd = (loss_of(mk, &plus, &bt) - loss_of(mk, &minus, &bt)) / (hp - hm);
            let an = g.data[i] as f64;
            let err = (fd - an).abs();
            // f32 central differences: ~1e-3 relative on large entries, absolute floor for tiny ones.
            assert!(
                err <= 2e-2 * an.abs().max(fd.abs()) + 2e-4,
                "{prompt:?}/{rec:?} {}[{i}]: analytic {an:.6e} vs finite difference {fd:.6e}",
                spec.name
            );
            checked += 1;
        }
    }
    assert!(checked >= 3 * grads.len());
}

fn extra_padding_leaves_real_logits_and_losses_unchanged<B: Backend>(mk: &impl Fn() -> B) {
    for prompt in [PromptKind::Continuous, PromptKind::Discrete] {
        let rec = if prompt == PromptKind::Continuous {
            RecKind::Mf
        } else {
            RecKind::None
        };
        let cfg = tiny(prompt.clone(), rec);
        let ps = params(&cfg, 5);
        let bt = batch(&cfg);
        let p = bt.prompt_len(&cfg);
        // Same batch with 3 extra pad columns.
        let extra = 3;
        let mut wide = bt.clone();
        wide.t = bt.t + extra;
        wide.text.clear();
        wide.mask.clear();
        for r in 0..bt.b {
            wide.text
                .extend_from_slice(&bt.text[r * bt.t..(r + 1) * bt.t]);
            wide.text.extend(std::iter::repeat_n(cfg.pad_id, extra));
            wide.mask
                .extend_from_slice(&bt.mask[r * bt.t..(r + 1) * bt.t]);
            wide.mask.extend(std::iter::repeat_n(0u8, extra));
        }
        let mut m = Pepler::new(mk(), &ps).unwrap();
        let opts = with_logits(ForwardOptions::default());
        let a = m.forward(&bt, opts).unwrap();
        let b = m.forward(&wide, opts).unwrap();
        assert!(
            (a.loss - b.loss).abs() <= 1e-6 * a.loss.abs(),
            "{} vs {}",
            a.loss,
            b.loss
        );
        let (la, lb) = (a.logits.unwrap(), b.logits.unwrap());
        let v = cfg.vocab_size;
        let (l1, l2) = (p + bt.t, p + wide.t);
        for r in 0..bt.b {
            for pos in 0..l1 {
                if pos >= p && bt.mask[r * bt.t + pos - p] == 0 {
                    continue; // padded positions may differ
                }
                let x = &la[(r * l1 + pos) * v..(r * l1 + pos + 1) * v];
                let y = &lb[(r * l2 + pos) * v..(r * l2 + pos + 1) * v];
                for (u, w) in x.iter().zip(y) {
                    assert!(
                        (u - w).abs() <= 1e-5 * (1.0 + u.abs()),
                        "{prompt:?} row {r} pos {pos}: {u} vs {w}"
                    );
                }
            }
        }
    }
}

fn forward_and_backward_are_bitwise_deterministic<B: Backend, A: Act>(mk: &impl Fn() -> B) {
    let cfg = tiny(PromptKind::Continuous, RecKind::Mlp);
    let ps = params(&cfg, 3);
    let bt = batch(&cfg);
    let run = || {
        let mut m = model::<B, A>(mk(), &ps);
        forward_backward(&mut m, &bt, with_logits(train()), None)
    };
    let (o1, g1) = run();
    let (o2, g2) = run();
    assert_eq!(o1.loss.to_bits(), o2.loss.to_bits());
    assert_eq!(o1.logits, o2.logits);
    for ((_, a), (_, b)) in g1.iter().zip(g2.iter()) {
        let ab: Vec<u32> = a.data.iter().map(|x| x.to_bits()).collect();
        let bb: Vec<u32> = b.data.iter().map(|x| x.to_bits()).collect();
        assert_eq!(ab, bb);
    }
}

fn dropout_changes_training_loss_deterministically_and_not_eval<B: Backend>(mk: &impl Fn() -> B) {
    let mut cfg = tiny(PromptKind::Continuous, RecKind::None);
    cfg.dropout = 0.3;
    let ps = params(&cfg, 3);
    let bt = batch(&cfg);
    let mut m = Pepler::new(mk(), &ps).unwrap();
    let at = |step| ForwardOptions { step, ..train() };
    let loss = |m: &mut Pepler<B>, opts| m.forward(&bt, opts).unwrap().loss;
    let eval = loss(&mut m, ForwardOptions::default());
    let t1 = loss(&mut m, at(1));
    let t1b = loss(&mut m, at(1));
    let t2 = loss(&mut m, at(2));
    assert_ne!(eval, t1);
    assert_eq!(t1.to_bits(), t1b.to_bits());
    assert_ne!(t1, t2);
    // The dropout path's gradients also match finite differences (masks are recomputed, not stored).
    let (out, g) = forward_backward(&mut m, &bt, at(7), None);
    let name = "transformer.h.0.mlp.c_fc.weight";
    let gi = g.get(name).unwrap();
    let i = argmax_abs(&gi.data);
    let h = 1e-2f32;
    let mut plus = ps.clone();
    plus.get_mut(name).unwrap().data[i] += h;
    let mut mp = Pepler::new(mk(), &plus).unwrap();
    let fd = (loss(&mut mp, at(7)) as f64 - out.loss as f64) / h as f64;
    let an = gi.data[i] as f64;
    assert!(
        (fd - an).abs() <= 5e-2 * an.abs() + 1e-3,
        "dropout grad {an} vs fd {fd}"
    );
}

fn skipped_gradients_stay_zero_and_the_rest_are_unchanged<B: Backend, A: Act>(mk: &impl Fn() -> B) {
    let cfg = tiny(PromptKind::Continuous, RecKind::Mf);
    let ps = params(&cfg, 9);
    let bt = batch(&cfg);
    let mut m = model::<B, A>(mk(), &ps);
    let (_, all) = forward_backward(&mut m, &bt, train(), None);
    let need: Vec<bool> = ps.names().map(|n| n.contains("embeddings")).collect();
    let (_, some) = forward_backward(&mut m, &bt, train(), Some(&need));
    for (k, ((s, a), (_, b))) in all.iter().zip(some.iter()).enumerate() {
        if need[k] {
            assert_eq!(a, b, "{}", s.name);
        } else {
            assert!(b.data.iter().all(|&x| x == 0.0), "{}", s.name);
        }
    }
}

fn grad_norm_is_the_norm_of_all_gradients_and_clipping_scales_them<B: Backend, A: Act>(
    mk: &impl Fn() -> B,
) {
    let cfg = tiny(PromptKind::Continuous, RecKind::Mlp);
    let ps = params(&cfg, 4);
    let bt = batch(&cfg);
    let mut m = model::<B, A>(mk(), &ps);
    let (_, g) = forward_backward(&mut m, &bt, train(), None);
    let all: Vec<f32> = g.iter().flat_map(|(_, t)| t.data.iter().copied()).collect();
    let want = pepler_cuda::ops::global_norm::global_norm(&all);
    let norm = m.grad_norm().unwrap();
    assert!((norm - want).abs() <= 1e-5 * want, "norm {norm} vs {want}");
    // above the norm: unchanged, bit for bit
    m.clip_grad_norm(2.0 * norm).unwrap();
    assert_eq!(m.download_grads().unwrap(), g);
    // half the norm: every gradient scaled by max / (norm + 1e-6)
    m.clip_grad_norm(0.5 * norm).unwrap();
    let coef = 0.5 * norm / (norm + 1e-6);
    for ((s, a), (_, b)) in m.download_grads().unwrap().iter().zip(g.iter()) {
        for (x, y) in a.data.iter().zip(&b.data) {
            assert!(
                (x - y * coef).abs() <= 1e-6 * y.abs() + 1e-12,
                "{}: {x} vs {}",
                s.name,
                y * coef
            );
        }
    }
    assert!(m.clip_grad_norm(0.0).is_err());
}

// ------------------------------------------------------------------ PyTorch fixtures

fn fixture_batch(f: &SafetensorsFile, cfg: &ModelConfig) -> Batch {
    let (ts, text) = f.read_i64("batch.text").unwrap();
    let (_, mask) = f.read_i64("batch.mask").unwrap();
    let (_, users) = f.read_i64("batch.user").unwrap();
    let (_, items) = f.read_i64("batch.item").unwrap();
    let rating = f.read_f32("batch.rating", None).unwrap().data;
    let (p, prompt) = if cfg.prompt == PromptKind::Discrete {
        let (s, pr) = f.read_i64("batch.prompt").unwrap();
        (s[1], pr.iter().map(|&x| x as u32).collect())
    } else {
        (0, vec![])
    };
    Batch {
        b: ts[0],
        t: ts[1],
        p,
        users: users.iter().map(|&x| x as u32).collect(),
        items: items.iter().map(|&x| x as u32).collect(),
        text: text.iter().map(|&x| x as u32).collect(),
        mask: mask.iter().map(|&x| x as u8).collect(),
        rating,
        prompt,
    }
}

/// `actual` against the fixture's tensor `name` with THE parity table's tolerance for that name.
fn assert_parity(case: &str, name: &str, actual: &[f32], expected: &[f32]) {
    use pepler_cuda::parity::compare::compare;
    use pepler_cuda::parity::tolerances::tolerance_for;
    let tol = tolerance_for(name, 1e-3).expect("a parity tensor name");
    let row = compare(
        name,
        actual,
        &[actual.len()],
        expected,
        &[expected.len()],
        tol,
    );
    assert!(
        row.pass,
        "{case}: {name}: max abs {:.3e}, {:.2}x its tolerance {tol}",
        row.max_abs, row.worst_ratio
    );
}

fn forward_and_gradients_agree_with_pytorch_fixtures<B: Backend>(mk: &impl Fn() -> B) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity");
    let mut n = 0;
    for case in [
        "continuous_ragged",
        "continuous_mf",
        "continuous_mlp",
        "discrete",
    ] {
        let path = dir.join(format!("{case}.safetensors"));
        let f = SafetensorsFile::open(&path).unwrap();
        let cfg = ModelConfig::from_dump_json(&f.require_meta("config").unwrap()).unwrap();
        let ps = ParamSet::from_safetensors(&f, &cfg, "param.").unwrap();
        let bt = fixture_batch(&f, &cfg);
        let mut m = Pepler::new(mk(), &ps).unwrap();
        let (out, g) = forward_backward(&mut m, &bt, with_logits(train()), None);
        let want = |name: &str| f.read_f32(name, None).unwrap().data;
        let logits = out.logits.as_ref().unwrap();
        assert_parity(case, "out.logits", logits, &want("out.logits"));
        assert_parity(case, "out.loss", &[out.loss], &want("out.loss"));
        for (spec, t) in g.iter() {
            let name = format!("grad.{}", spec.name);
            assert_parity(case, &name, &t.data, &want(&name));
        }
        n += 1;
    }
    assert_eq!(n, 4);
}

// ------------------------------------------------------------------ every backend

/// The properties that hold whatever the precision (bitwise determinism, skipped gradients, the
/// gradient norm), for activations of type `$act`; inside a module that defines `mk()`.
macro_rules! precision_tests {
    ($act:ty $(, #[$attr:meta])?) => {
        $(#[$attr])?
        #[test]
        fn forward_and_backward_are_bitwise_deterministic() {
            super::forward_and_backward_are_bitwise_deterministic::<_, $act>(&mk);
        }

        $(#[$attr])?
        #[test]
        fn skipped_gradients_stay_zero_and_the_rest_are_unchanged() {
            super::skipped_gradients_stay_zero_and_the_rest_are_unchanged::<_, $act>(&mk);
        }

        $(#[$attr])?
        #[test]
        fn grad_norm_is_the_norm_of_all_gradients_and_clipping_scales_them() {
            super::grad_norm_is_the_norm_of_all_gradients_and_clipping_scales_them::<_, $act>(
                &mk,
            );
        }
    };
}

/// Expands the test bodies above into a module per backend: `$mk` builds a fresh backend.
macro_rules! model_tests {
    ($module:ident, $mk:expr $(, #[$attr:meta])?) => {
        mod $module {
            use super::*;

            fn mk() -> impl Backend {
                $mk
            }

            precision_tests!(f32 $(, #[$attr])?);

            $(#[$attr])?
            #[test]
            fn gradients_match_finite_differences() {
                for (prompt, rec) in [
                    (PromptKind::Continuous, RecKind::Mlp),
                    (PromptKind::Continuous, RecKind::Mf),
                    (PromptKind::Continuous, RecKind::None),
                    (PromptKind::Discrete, RecKind::None),
                ] {
                    gradient_check(&mk, prompt, rec);
                }
            }

            $(#[$attr])?
            #[test]
            fn extra_padding_leaves_real_logits_and_losses_unchanged() {
                super::extra_padding_leaves_real_logits_and_losses_unchanged(&mk);
            }

            $(#[$attr])?
            #[test]
            fn dropout_changes_training_loss_deterministically_and_not_eval() {
                super::dropout_changes_training_loss_deterministically_and_not_eval(&mk);
            }

            $(#[$attr])?
            #[test]
            fn forward_and_gradients_agree_with_pytorch_fixtures() {
                super::forward_and_gradients_agree_with_pytorch_fixtures(&mk);
            }
        }
    };
}

/// The bf16 modules: `precision_tests!` with bf16 activations. Finite differences and exact padding
/// invariance are fp32 properties (bf16's rounding is coarser than the differences they measure);
/// bf16 numerics are checked against PyTorch in tests/parity.rs and against the CPU below.
macro_rules! model_tests_bf16 {
    ($module:ident, $mk:expr $(, #[$attr:meta])?) => {
        mod $module {
            use super::*;

            fn mk() -> impl Backend {
                $mk
            }

            precision_tests!(bf16 $(, #[$attr])?);
        }
    };
}

model_tests!(cpu, CpuBackend::new());
model_tests_bf16!(cpu_bf16, CpuBackend::new());
model_tests_bf16!(
    emu_bf16,
    GpuBackend::new(Device::emu().expect("emulated device"))
);
model_tests_bf16!(
    model_bf16_on_cuda,
    GpuBackend::new(Device::cuda().expect("this test needs a CUDA GPU")),
    #[ignore = "needs a CUDA GPU"]
);
model_tests!(
    emu,
    GpuBackend::new(Device::emu().expect("emulated device"))
);
// `cargo test -- --ignored _on_cuda` on a GPU machine runs exactly these (and the other *_on_cuda).
model_tests!(
    model_on_cuda,
    GpuBackend::new(Device::cuda().expect("this test needs a CUDA GPU")),
    #[ignore = "needs a CUDA GPU"]
);

// ------------------------------------------------------------------ GPU backend vs CPU backend

/// A random configuration: `hd`-wide heads, `l` positions (prompt included), `b` sequences.
struct RandomCase {
    hd: usize,
    nh: usize,
    l: usize,
    b: usize,
    prompt: PromptKind,
    rec: RecKind,
    dropout: f32,
}

impl RandomCase {
    fn config(&self) -> ModelConfig {
        let mut cfg = tiny(self.prompt.clone(), self.rec);
        cfg.n_embd = self.hd * self.nh;
        cfg.n_head = self.nh;
        cfg.n_layer = 2;
        cfg.n_positions = self.l.max(16);
        cfg.dropout = self.dropout;
        cfg
    }

    /// Ragged rows: sequence r keeps `t - 3r` tokens (at least 2), the rest is padding.
    fn batch(&self, cfg: &ModelConfig) -> Batch {
        let p = if self.prompt == PromptKind::Discrete {
            3
        } else {
            2
        };
        let t = self.l - p;
        let mut text = Vec::new();
        let mut mask = Vec::new();
        for r in 0..self.b {
            let n = t.saturating_sub(3 * r).max(2);
            for j in 0..t {
                let tok = match j {
                    0 => cfg.bos_id,
                    _ if j + 1 == n => cfg.eos_id,
                    _ if j < n => ((r * 13 + j * 7) % 30) as u32,
                    _ => cfg.pad_id,
                };
                text.push(tok);
                mask.push((j < n) as u8);
            }
        }
        let (p, prompt) = if self.prompt == PromptKind::Discrete {
            (p, (0..self.b * p).map(|k| (k * 5 % 30) as u32).collect())
        } else {
            (0, vec![])
        };
        Batch {
            b: self.b,
            t,
            p,
            users: (0..self.b).map(|r| (r % cfg.n_users) as u32).collect(),
            items: (0..self.b)
                .map(|r| ((r * 2) % cfg.n_items) as u32)
                .collect(),
            text,
            mask,
            rating: (0..self.b).map(|r| 0.1 * r as f32 - 0.1).collect(),
            prompt,
        }
    }
}

/// Everything one training run exposes, named as the parity table names it.
fn three_steps<B: Backend, A: Act>(be: B, ps: &ParamSet, bt: &Batch) -> Vec<(String, Vec<f32>)> {
    let hp = adamw(pepler_cuda::backend::AdamWVariant::Torch, 0.01);
    let mut m = model::<B, A>(be, ps);
    let all = vec![true; ps.len()];
    let mut out = Vec::new();
    for step in 1..=3u64 {
        let opts = ForwardOptions {
            step,
            ..with_logits(train())
        };
        let (o, g) = forward_backward(&mut m, bt, opts, None);
        if step == 1 {
            out.push(("out.logits".to_string(), o.logits.unwrap()));
            out.push(("out.loss".to_string(), vec![o.loss]));
            for (spec, t) in g.iter() {
                out.push((format!("grad.{}", spec.name), t.data.clone()));
            }
        }
        m.adamw_step(hp, step, &all).unwrap();
    }
    for (spec, t) in m.download_params().unwrap().iter() {
        out.push((format!("step3.param.{}", spec.name), t.data.clone()));
    }
    out
}

/// The GPU backend on `dev` against the CPU backend, both with activations in `A`, every tensor
/// within the parity table's tolerance for its name at `A`'s precision.
fn gpu_matches_cpu_on_random_configs<A: Act>(dev: impl Fn() -> Device) {
    use pepler_cuda::parity::compare::compare;
    use pepler_cuda::parity::tolerances::tolerance_for_at;
    let cases = [
        RandomCase {
            hd: 8,
            nh: 3,
            l: 300,
            b: 1,
            prompt: PromptKind::Continuous,
            rec: RecKind::Mf,
            dropout: 0.1,
        },
        RandomCase {
            hd: 24,
            nh: 2,
            l: 33,
            b: 3,
            prompt: PromptKind::Discrete,
            rec: RecKind::None,
            dropout: 0.0,
        },
        RandomCase {
            hd: 40,
            nh: 1,
            l: 57,
            b: 2,
            prompt: PromptKind::Continuous,
            rec: RecKind::Mlp,
            dropout: 0.1,
        },
        RandomCase {
            hd: 64,
            nh: 2,
            l: 27,
            b: 3,
            prompt: PromptKind::Continuous,
            rec: RecKind::Mf,
            dropout: 0.1,
        },
        RandomCase {
            hd: 128,
            nh: 1,
            l: 300,
            b: 1,
            prompt: PromptKind::Continuous,
            rec: RecKind::None,
            dropout: 0.0,
        },
    ];
    for case in &cases {
        let cfg = case.config();
        let ps = params(&cfg, 17);
        let bt = case.batch(&cfg);
        let want = three_steps::<_, A>(CpuBackend::new(), &ps, &bt);
        let got = three_steps::<_, A>(GpuBackend::new(dev()), &ps, &bt);
        let mut bad = Vec::new();
        for ((name, g), (_, w)) in got.iter().zip(&want) {
            let tol = tolerance_for_at(A::PRECISION, name, 1e-3).expect("a parity name");
            let row = compare(name, g, &[g.len()], w, &[w.len()], tol);
            if !row.pass {
                bad.push(format!(
                    "{name}: max abs {:.3e}, {:.1}x its tolerance",
                    row.max_abs, row.worst_ratio
                ));
            }
        }
        assert!(
            bad.is_empty(),
            "hd {} nh {} L {} B {}: {} tensors outside tolerance:\n{}",
            case.hd,
            case.nh,
            case.l,
            case.b,
            bad.len(),
            bad.join("\n")
        );
    }
}

#[test]
fn emu_matches_cpu_on_random_configs() {
    gpu_matches_cpu_on_random_configs::<f32>(|| Device::emu().unwrap());
}

/// The bf16 kernels against the CPU's bf16 reference (same rounding points, different summation
/// orders: a value on a rounding boundary may land one bf16 ulp apart, and that propagates).
#[test]
fn emu_matches_cpu_on_random_configs_in_bf16() {
    gpu_matches_cpu_on_random_configs::<bf16>(|| Device::emu().unwrap());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_matches_cpu_on_random_configs_on_cuda() {
    gpu_matches_cpu_on_random_configs::<f32>(|| {
        Device::cuda().expect("this test needs a CUDA GPU")
    });
    gpu_matches_cpu_on_random_configs::<bf16>(|| {
        Device::cuda().expect("this test needs a CUDA GPU")
    });
}

/// After the first step of a shape, a training step allocates nothing on the device.
#[test]
fn gpu_backend_allocates_only_in_the_first_step() {
    let cfg = tiny(PromptKind::Continuous, RecKind::Mlp);
    let ps = params(&cfg, 3);
    let bt = batch(&cfg);
    let mut m = Pepler::new(GpuBackend::new(Device::emu().unwrap()), &ps).unwrap();
    let hp = adamw(pepler_cuda::backend::AdamWVariant::Hf, 0.0);
    let all = vec![true; ps.len()];
    let mut counts = Vec::new();
    for step in 1..=3u64 {
        m.zero_grads().unwrap();
        m.forward(&bt, ForwardOptions { step, ..train() }).unwrap();
        m.backward(None).unwrap();
        m.adamw_step(hp, step, &all).unwrap();
        counts.push(m.backend().allocations());
    }
    assert!(counts[0] > 0);
    assert_eq!(
        counts[0], counts[2],
        "allocations after steps 1, 2, 3: {counts:?}"
    );
}

/// One training step (zero_grad + forward + backward + AdamW on every parameter) at GPT-2 small
/// shapes, batch 8 x 22 text tokens (24 positions with the prompt), dropout 0.1: the same step as
/// `scripts/reference/bench_step.py`. Prints the median of 10 steps after 2 warmup steps.
#[test]
#[ignore = "timing; run: cargo test --release --test model gpt2_small -- --ignored --nocapture"]
fn gpt2_small_training_step_time() {
    let cfg = ModelConfig::gpt2_small(100, 100);
    let ps = ParamSet::init(&cfg, 1);
    let (b, t) = (8, 22);
    let mut text = Vec::new();
    let mut mask = Vec::new();
    for r in 0..b {
        let n = t - (r % 4) * 3; // ragged rows
        for j in 0..t {
            let tok = match j {
                0 => cfg.bos_id,
                _ if j + 1 == n => cfg.eos_id,
                _ if j < n => ((r * 7919 + j * 104_729) % 50_000) as u32,
                _ => cfg.pad_id,
            };
            text.push(tok);
            mask.push((j < n) as u8);
        }
    }
    let bt = Batch {
        b,
        t,
        p: 0,
        users: (0..b as u32).collect(),
        items: (0..b as u32).collect(),
        text,
        mask,
        rating: vec![3.0; b],
        prompt: vec![],
    };
    let mut m = Pepler::new(CpuBackend::new(), &ps).unwrap();
    let hp = adamw(pepler_cuda::backend::AdamWVariant::Torch, 0.0);
    let all = vec![true; ps.len()];
    let mut times = Vec::new();
    for step in 1..=12u64 {
        let t0 = std::time::Instant::now();
        m.zero_grads().unwrap();
        let out = m
            .forward(
                &bt,
                ForwardOptions {
                    train: true,
                    step,
                    want_logits: false,
                },
            )
            .unwrap();
        let t1 = t0.elapsed();
        m.backward(None).unwrap();
        let t2 = t0.elapsed();
        m.adamw_step(hp, step, &all).unwrap();
        let dt = t0.elapsed();
        eprintln!(
            "step {step}: loss {:.4} forward {:.3}s backward {:.3}s adamw {:.3}s total {:.3}s",
            out.loss,
            t1.as_secs_f64(),
            (t2 - t1).as_secs_f64(),
            (dt - t2).as_secs_f64(),
            dt.as_secs_f64()
        );
        if step > 2 {
            times.push(dt.as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    eprintln!(
        "{{\"impl\": \"rust-cpu\", \"threads\": {}, \"median_step_s\": {:.4}}}",
        rayon::current_num_threads(),
        times[times.len() / 2]
    );
}
