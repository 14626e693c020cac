//! AdamW update, CPU reference (the GPU kernel `kernels/adamw.cu` runs the same arithmetic).
//!
//! Semantics are exactly `torch.optim.AdamW` (default, non-fused, non-foreach:
//! `_single_tensor_adamw` in torch 2.x), operation by operation, so fp32 results agree with PyTorch:
//!
//! ```text
//! p  = p * (1 - lr*wd)                         # scalar computed in f64 (Python float), cast to f32
//! m  = lerp(m, g, 1-b1) = fma(1-b1, g - m, m)  # torch's vectorised lerp uses an FMA for weight < .5
//! v  = fma((1-b2) * g, g, v * b2)              # mul_(b2) then addcmul_, which GCC contracts to FMA
//! bc1 = 1 - b1^t, bc2 = 1 - b2^t               # f64
//! denom = sqrt(v) / f32(sqrt(bc2)) + f32(eps)  # true division by the scalar
//! p  = p + (f32(-lr/bc1) * m) / denom          # addcdiv_: self + value * t1 / t2
//! ```
//! Scalars are computed in f64 like Python does and cast to f32 once (`AdamWScalars`), then every
//! element op is one f32 operation (or one FMA). Checked against torch 2.5.1 on random data: `m` and
//! `v` agree bit for bit, and `p` agrees bit for bit given torch's `sqrt`; torch's CPU `sqrt` (MKL
//! VML) is itself not correctly rounded (about 17% of values are 1 ulp off), so `p` can differ from
//! torch by an ulp of the update in those elements.
//!
//! All outputs are written in place (`=`); the op is elementwise, so parallel chunks are
//! deterministic.

use rayon::prelude::*;

/// The f32 scalars one AdamW step uses, computed from the hyper-parameters in f64 exactly as
/// torch's Python code computes them. A GPU kernel takes these same values as arguments.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWScalars {
    /// `1 - lr * weight_decay` (the decoupled weight-decay factor).
    pub decay: f32,
    /// `1 - beta1`, the lerp weight of the first moment.
    pub one_minus_beta1: f32,
    pub beta2: f32,
    /// `1 - beta2`, the addcmul value of the second moment.
    pub one_minus_beta2: f32,
    /// `sqrt(1 - beta2^t)`.
    pub bias_correction2_sqrt: f32,
    pub eps: f32,
    /// `-lr / (1 - beta1^t)`.
    pub neg_step_size: f32,
}

impl AdamWScalars {
    /// Scalars for step `step` (counting from 1). Hyper-parameters are f64 because torch computes
    /// with Python floats: passing `1e-3f32 as f64` instead of `1e-3` can change `neg_step_size`.
    pub fn new(lr: f64, beta1: f64, beta2: f64, eps: f64, weight_decay: f64, step: u64) -> Self {
        let t = step as f64;
        // Python's `beta ** step` on floats is C `pow`, as is `f64::powf`.
        let bias_correction1 = 1.0 - beta1.powf(t);
        let bias_correction2 = 1.0 - beta2.powf(t);
        let step_size = lr / bias_correction1;
        AdamWScalars {
            decay: (1.0 - lr * weight_decay) as f32,
            one_minus_beta1: (1.0 - beta1) as f32,
            beta2: beta2 as f32,
            one_minus_beta2: (1.0 - beta2) as f32,
            bias_correction2_sqrt: bias_correction2.sqrt() as f32,
            eps: eps as f32,
            neg_step_size: (-step_size) as f32,
        }
    }
}

/// One torch AdamW update of `param` from `grad` with moments `m`, `v` (all `=` in place).
/// `step` counts from 1 (the tensor's own step count after incrementing, as torch's `state['step']`).
/// Panics if the slices differ in length (callers check shapes and return errors first).
#[allow(clippy::too_many_arguments)]
pub fn adamw_update(
    param: &mut [f32],
    grad: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    step: u64,
) {
    let s = AdamWScalars::new(lr, beta1, beta2, eps, weight_decay, step);
    adamw_update_scalars(param, grad, m, v, &s);
}

/// One update of `transformers.AdamW` (transformers 4.18, `correct_bias=True`), the optimizer the
/// original PEPLER scripts use. It differs from torch's AdamW in two places: eps is added to
/// `sqrt(v)` *before* the bias correction (`step = lr * sqrt(1 - b2^t) / (1 - b1^t)`,
/// `p -= step * m / (sqrt(v) + eps)`), and weight decay is applied after the update, to the updated
/// parameter (`p -= lr * wd * p`). Same arguments and `=` semantics as [`adamw_update`].
///
/// Operation by operation as torch runs transformers' Python on the CPU (checked against torch 2.5.1
/// on random data, and bit for bit on step 1 of the `continuous_hf_adamw` parity fixture given f64
/// scalars), with the scalars as f64 Python floats cast to f32 once:
///
/// ```text
/// m = fma(g, 1-b1, m * b1)                 # exp_avg.mul_(b1).add_(g, alpha=1-b1): vectorised fmadd
/// v = fma((1-b2) * g, g, v * b2)           # exp_avg_sq.mul_(b2).addcmul_(g, g, value=1-b2)
/// denom = sqrt(v) + eps                    # exp_avg_sq.sqrt().add_(eps)
/// p = p + (-step * m) / denom              # p.addcdiv_(m, denom, value=-step): self + value * t1 / t2
/// p = fma(p, -lr*wd, p)                    # if wd > 0: p.add_(p, alpha=-lr*wd)
/// ```
#[allow(clippy::too_many_arguments)]
pub fn adamw_update_hf(
    param: &mut [f32],
    grad: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    step: u64,
) {
    let s = HfScalars::new(lr, beta1, beta2, eps, weight_decay, step);
    for_each_chunk("adamw_update_hf", param, grad, m, v, |p, g, m, v| {
        update_chunk(p, g, m, v, &s)
    });
}

/// The f32 scalars of one `transformers.AdamW` step, computed in f64 as its Python code does. A GPU
/// kernel takes these same values as arguments.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HfScalars {
    pub beta1: f32,
    pub one_minus_beta1: f32,
    pub beta2: f32,
    pub one_minus_beta2: f32,
    pub eps: f32,
    /// `-(lr * sqrt(1 - b2^t) / (1 - b1^t))`.
    pub neg_step_size: f32,
    /// `-lr * weight_decay`, applied only when `weight_decay > 0` (as transformers does).
    pub decay: Option<f32>,
}

impl HfScalars {
    /// Scalars for step `step` (counting from 1); f64 hyper-parameters as in [`AdamWScalars::new`].
    pub fn new(lr: f64, beta1: f64, beta2: f64, eps: f64, weight_decay: f64, step: u64) -> Self {
        let t = step as f64;
        // Python's `beta ** step` (C `pow`), then `lr * math.sqrt(bc2) / bc1` left to right.
        let bias_correction1 = 1.0 - beta1.powf(t);
        let bias_correction2 = 1.0 - beta2.powf(t);
        let step_size = lr * bias_correction2.sqrt() / bias_correction1;
        HfScalars {
            beta1: beta1 as f32,
            one_minus_beta1: (1.0 - beta1) as f32,
            beta2: beta2 as f32,
            one_minus_beta2: (1.0 - beta2) as f32,
            eps: eps as f32,
            neg_step_size: (-step_size) as f32,
            decay: (weight_decay > 0.0).then_some((-lr * weight_decay) as f32),
        }
    }
}

impl ChunkUpdate for HfScalars {
    #[inline(always)]
    fn update(&self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        let s = self;
        for i in 0..p.len() {
            let gi = g[i];
            let mi = gi.mul_add(s.one_minus_beta1, m[i] * s.beta1);
            let vi = (s.one_minus_beta2 * gi).mul_add(gi, v[i] * s.beta2);
            let denom = vi.sqrt() + s.eps;
            let mut pi = p[i] + (s.neg_step_size * mi) / denom;
            if let Some(decay) = s.decay {
                pi = pi.mul_add(decay, pi);
            }
            p[i] = pi;
            m[i] = mi;
            v[i] = vi;
        }
    }
}

/// Runs the elementwise update `f` over matching chunks of the four slices in parallel (chunking
/// changes nothing in the result, only the speed). Panics, naming `op`, if the lengths differ.
fn for_each_chunk(
    op: &str,
    param: &mut [f32],
    grad: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    f: impl Fn(&mut [f32], &[f32], &mut [f32], &mut [f32]) + Sync + Send,
) {
    let n = param.len();
    assert!(
        grad.len() == n && m.len() == n && v.len() == n,
        "{op}: param {n}, grad {}, m {}, v {} elements",
        grad.len(),
        m.len(),
        v.len()
    );
    const CHUNK: usize = 1 << 15;
    param
        .par_chunks_mut(CHUNK)
        .zip(grad.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .for_each(|(((p, g), m), v)| f(p, g, m, v));
}

/// `adamw_update` with precomputed scalars.
pub fn adamw_update_scalars(
    param: &mut [f32],
    grad: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    s: &AdamWScalars,
) {
    for_each_chunk("adamw_update", param, grad, m, v, |p, g, m, v| {
        update_chunk(p, g, m, v, s)
    });
}

/// One elementwise AdamW formula over a chunk (`m`, `v`, `p` updated in place).
trait ChunkUpdate: Sync {
    fn update(&self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]);
}

/// Runs `s.update` compiled with hardware FMA when the CPU has it (otherwise `mul_add` is a libm
/// call): the results are identical, `mul_add` is always a fused operation; only the speed differs.
fn update_chunk<S: ChunkUpdate>(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], s: &S) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports FMA (checked just above).
            unsafe { update_chunk_fma(p, g, m, v, s) };
            return;
        }
    }
    s.update(p, g, m, v);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn update_chunk_fma<S: ChunkUpdate>(
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    s: &S,
) {
    s.update(p, g, m, v);
}

impl ChunkUpdate for AdamWScalars {
    #[inline(always)]
    fn update(&self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        let s = self;
        for i in 0..p.len() {
            let gi = g[i];
            let pi = p[i] * s.decay;
            let mi = s.one_minus_beta1.mul_add(gi - m[i], m[i]);
            let vi = (s.one_minus_beta2 * gi).mul_add(gi, v[i] * s.beta2);
            let denom = vi.sqrt() / s.bias_correction2_sqrt + s.eps;
            p[i] = pi + (s.neg_step_size * mi) / denom;
            m[i] = mi;
            v[i] = vi;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A straightforward f64 AdamW (the textbook formula) for a sanity bound.
    fn adamw_f64(p: f64, g: f64, m: &mut f64, v: &mut f64, t: u64, wd: f64) -> f64 {
        let (lr, b1, b2, eps) = (1e-3, 0.9, 0.999, 1e-6);
        let p = p * (1.0 - lr * wd);
        *m = b1 * *m + (1.0 - b1) * g;
        *v = b2 * *v + (1.0 - b2) * g * g;
        let mh = *m / (1.0 - b1.powf(t as f64));
        let vh = *v / (1.0 - b2.powf(t as f64));
        p - lr * mh / (vh.sqrt() + eps)
    }

    #[test]
    fn adamw_update_tracks_the_f64_formula() {
        let n = 1000;
        let mut p: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.37).sin() * 0.1).collect();
        let (mut m, mut v) = (vec![0.0f32; n], vec![0.0f32; n]);
        let mut p64: Vec<f64> = p.iter().map(|&x| x as f64).collect();
        let (mut m64, mut v64) = (vec![0.0f64; n], vec![0.0f64; n]);
        for t in 1..=5u64 {
            let g: Vec<f32> = (0..n)
                .map(|i| ((i as f32 + t as f32) * 1.3).cos())
                .collect();
            adamw_update(&mut p, &g, &mut m, &mut v, 1e-3, 0.9, 0.999, 1e-6, 0.01, t);
            for i in 0..n {
                p64[i] = adamw_f64(p64[i], g[i] as f64, &mut m64[i], &mut v64[i], t, 0.01);
            }
        }
        for i in 0..n {
            assert!(
                (p[i] as f64 - p64[i]).abs() < 1e-6,
                "{i}: {} vs {}",
                p[i],
                p64[i]
            );
        }
    }

    #[test]
    fn first_step_moves_each_weight_by_about_lr() {
        // With m = v = 0, step 1 gives m_hat/sqrt(v_hat) = sign(g): |dp| ~= lr.
        let mut p = vec![0.5f32, -0.5, 0.0];
        let g = [2.0f32, -0.25, 1e-3];
        let (mut m, mut v) = (vec![0.0; 3], vec![0.0; 3]);
        adamw_update(&mut p, &g, &mut m, &mut v, 1e-2, 0.9, 0.999, 1e-8, 0.0, 1);
        assert!(
            (p[0] - 0.49).abs() < 1e-6 && (p[1] + 0.49).abs() < 1e-6,
            "{p:?}"
        );
        assert!((p[2] + 0.01).abs() < 1e-5, "{p:?}");
    }

    #[test]
    fn scalars_match_pythons_arithmetic() {
        let s = AdamWScalars::new(1e-3, 0.9, 0.999, 1e-6, 0.01, 3);
        // Python: -(1e-3 / (1 - 0.9**3)), (1 - 0.999**3) ** 0.5
        assert_eq!(s.neg_step_size, (-(1e-3f64 / (1.0 - 0.729))) as f32);
        assert_eq!(
            s.bias_correction2_sqrt,
            (1.0f64 - 0.997002999).sqrt() as f32
        );
        assert_eq!(s.decay, 0.99999f32);
        assert_eq!(s.one_minus_beta1, 0.1f32);
    }

    #[test]
    fn hf_variant_puts_eps_outside_the_bias_correction() {
        // f64 transformers.AdamW for three steps against the f32 implementation.
        let (lr, b1, b2, eps, wd) = (1e-3, 0.9, 0.999, 1e-6, 0.01);
        let g = [0.3f32, -2.0, 1e-7, 0.0];
        let (mut p, mut m, mut v) = ([0.5f32, -0.25, 1.0, 2.0], [0f32; 4], [0f32; 4]);
        let mut r: Vec<(f64, f64, f64)> = p.iter().map(|&x| (x as f64, 0.0, 0.0)).collect();
        for t in 1..=3u64 {
            adamw_update_hf(&mut p, &g, &mut m, &mut v, lr, b1, b2, eps, wd, t);
            let ss = lr * (1.0 - b2.powi(t as i32)).sqrt() / (1.0 - b1.powi(t as i32));
            for (i, (rp, rm, rv)) in r.iter_mut().enumerate() {
                let gi = g[i] as f64;
                *rm = *rm * b1 + gi * (1.0 - b1);
                *rv = *rv * b2 + (1.0 - b2) * gi * gi;
                *rp -= ss * *rm / (rv.sqrt() + eps);
                *rp -= lr * wd * *rp;
                assert!(
                    (p[i] as f64 - *rp).abs() <= 1e-6 * rp.abs().max(1e-3),
                    "step {t} [{i}]"
                );
            }
        }
        // A gradient near eps: torch's variant (eps after the correction) moves the weight more.
        let (mut pt, mut mt, mut vt) = ([1.0f32], [0f32], [0f32]);
        let (mut ph, mut mh, mut vh) = ([1.0f32], [0f32], [0f32]);
        adamw_update(&mut pt, &[1e-7], &mut mt, &mut vt, lr, b1, b2, eps, 0.0, 1);
        adamw_update_hf(&mut ph, &[1e-7], &mut mh, &mut vh, lr, b1, b2, eps, 0.0, 1);
        assert!(
            (1.0 - pt[0]) > 5.0 * (1.0 - ph[0]),
            "torch {} hf {}",
            pt[0],
            ph[0]
        );
    }
}
