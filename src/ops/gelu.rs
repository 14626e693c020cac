//! CPU reference for `kernels/gelu.cu`: GELU with GPT-2's tanh approximation.
//!
//! `gelu(x) = 0.5 x (1 + tanh(s (x + 0.044715 x^3)))`, `s = sqrt(2/pi)` (PyTorch
//! `approximate="tanh"`; forward and backward differentiate the same formula).
//! Elementwise over `n` values; both functions write with `=`.

use rayon::prelude::*;

/// sqrt(2/pi), as in GPT-2 / llm.c.
pub const GELU_SCALING_FACTOR: f32 = 0.797_884_6;
/// The cubic coefficient of the tanh approximation.
pub const GELU_CUBIC: f32 = 0.044715;

const PAR_CHUNK: usize = 1 << 15;

/// GELU of one value (the same float expression the kernel evaluates).
#[inline]
pub fn gelu(x: f32) -> f32 {
    let cube = GELU_CUBIC * x * x * x;
    0.5 * x * (1.0 + (GELU_SCALING_FACTOR * (x + cube)).tanh())
}

/// d gelu(x) / dx. Uses sech^2 = 1 - tanh^2, which cannot overflow (cosh can).
#[inline]
pub fn gelu_grad(x: f32) -> f32 {
    let cube = GELU_CUBIC * x * x * x;
    let t = (GELU_SCALING_FACTOR * (x + cube)).tanh();
    let sech2 = 1.0 - t * t;
    0.5 * (1.0 + t) + x * 0.5 * sech2 * GELU_SCALING_FACTOR * (1.0 + 3.0 * GELU_CUBIC * x * x)
}

/// `out[i] = gelu(inp[i])` (`=`).
///
/// # Panics
/// If the slices differ in length.
pub fn gelu_forward(out: &mut [f32], inp: &[f32]) {
    assert_eq!(
        out.len(),
        inp.len(),
        "gelu_forward: out and inp differ in length"
    );
    out.par_chunks_mut(PAR_CHUNK)
        .zip(inp.par_chunks(PAR_CHUNK))
        .for_each(|(o, x)| {
            for (o, &x) in o.iter_mut().zip(x) {
                *o = gelu(x);
            }
        });
}

/// The MLP's first layer after its GEMM: `pre[r, j] += bias[j]` (the bias add of
/// `matmul_forward`, one f32 add) and `out = gelu(pre)` (=), over rows of `c`. Bit-identical to
/// `matmul_forward`'s bias add followed by [`gelu_forward`]; the GPU does both in one pass.
pub fn bias_gelu_forward(pre: &mut [f32], out: &mut [f32], bias: &[f32], c: usize) {
    assert_eq!(pre.len(), out.len(), "bias_gelu_forward: lengths");
    assert!(
        c > 0 && bias.len() == c && pre.len().is_multiple_of(c),
        "bias_gelu_forward: shape"
    );
    pre.par_chunks_mut(c)
        .zip(out.par_chunks_mut(c))
        .for_each(|(p, o)| {
            for ((pv, ov), b) in p.iter_mut().zip(o.iter_mut()).zip(bias) {
                *pv += *b;
                *ov = gelu(*pv);
            }
        });
}

/// `dinp[i] = gelu'(inp[i]) * dout[i]` (`=`: GELU's input is not on the residual stream).
///
/// # Panics
/// If the slices differ in length.
pub fn gelu_backward(dinp: &mut [f32], inp: &[f32], dout: &[f32]) {
    assert_eq!(
        dinp.len(),
        inp.len(),
        "gelu_backward: dinp and inp differ in length"
    );
    assert_eq!(
        dinp.len(),
        dout.len(),
        "gelu_backward: dinp and dout differ in length"
    );
    dinp.par_chunks_mut(PAR_CHUNK)
        .zip(inp.par_chunks(PAR_CHUNK).zip(dout.par_chunks(PAR_CHUNK)))
        .for_each(|(d, (x, g))| {
            for ((d, &x), &g) in d.iter_mut().zip(x).zip(g) {
                *d = gelu_grad(x) * g;
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        assert_eq!(gelu(0.0), 0.0);
        // torch.nn.functional.gelu(torch.tensor(1.0), approximate="tanh") = 0.8411920
        assert!((gelu(1.0) - 0.841_192).abs() < 1e-6);
        assert!((gelu(-3.0) - (-0.003_637_392)).abs() < 1e-6);
        assert!((gelu_grad(0.0) - 0.5).abs() < 1e-7);
        assert_eq!(gelu_grad(100.0), 1.0);
        assert_eq!(gelu_grad(-100.0), 0.0);
    }

    #[test]
    fn backward_matches_finite_difference() {
        for &x in &[-2.5f32, -0.7, 0.1, 0.9, 2.2] {
            let h = 1e-2f64;
            let f = |v: f64| {
                let s = (2.0 / std::f64::consts::PI).sqrt();
                0.5 * v * (1.0 + (s * (v + 0.044715 * v * v * v)).tanh())
            };
            let fd = (f(x as f64 + h) - f(x as f64 - h)) / (2.0 * h);
            let mut d = [0.0f32];
            gelu_backward(&mut d, &[x], &[1.0]);
            assert!((d[0] as f64 - fd).abs() < 1e-4, "x={x}: {} vs {fd}", d[0]);
        }
    }
}
