//! CPU reference for `kernels/global_norm.cu`: the global L2 norm of all gradients (reported per
//! epoch) and torch's `clip_grad_norm_` scaling (`--clip-grad-norm`, off by default: the original
//! does not clip).
//!
//! `global_norm(x) = sqrt(sum_i x[i]^2)`, summed in f64 in index order and rounded to f32 once (the
//! most accurate reference; the GPU sums f32 partials in a fixed tree). `scale_by_clip` multiplies
//! by `min(1, max_norm / (norm + 1e-6))` with torch's f32 arithmetic (NaN propagates, as torch's
//! `clamp`). Both write `=` (the scaling in place).

/// The L2 norm of `x` (f64 accumulation, one rounding to f32).
pub fn global_norm(x: &[f32]) -> f32 {
    x.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt() as f32
}

/// torch's clip coefficient: `min(max_norm / (norm + 1e-6), 1)` in f32 (NaN stays NaN).
pub fn clip_coef(norm: f32, max_norm: f32) -> f32 {
    let coef = max_norm / (norm + 1e-6);
    if coef > 1.0 {
        1.0
    } else {
        coef
    }
}

/// `x *= clip_coef(norm, max_norm)` (in place).
pub fn scale_by_clip(x: &mut [f32], norm: f32, max_norm: f32) {
    let coef = clip_coef(norm, max_norm);
    x.iter_mut().for_each(|v| *v *= coef);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn norm_and_clip_follow_torch() {
        let mut g = vec![3.0f32, 4.0];
        let n = global_norm(&g);
        assert_eq!(n, 5.0);
        scale_by_clip(&mut g, n, 1.0);
        let c = 1.0f32 / (5.0 + 1e-6);
        assert_eq!(g, vec![3.0 * c, 4.0 * c]);
        // under the limit: unchanged
        let mut h = vec![0.1f32, -0.2];
        let hn = global_norm(&h);
        scale_by_clip(&mut h, hn, 1.0);
        assert_eq!(h, vec![0.1, -0.2]);
        assert!(clip_coef(f32::NAN, 1.0).is_nan());
    }
}
