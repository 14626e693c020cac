//! CPU reference for `kernels/softmax.cu`: softmax over the last dimension of a `rows x c`
//! row-major matrix, max-subtracted for stability, written with `=`.
//!
//! `out[r,i] = exp(inp[r,i] - max_r) / sum_j exp(inp[r,j] - max_r)`. A row of all `-inf` has no
//! defined softmax and yields NaN (as PyTorch does).

use rayon::prelude::*;

const PAR_MIN: usize = 1 << 16;

/// Row softmax (`=`).
///
/// # Panics
/// If a slice length does not match `rows * c`.
pub fn softmax_forward(out: &mut [f32], inp: &[f32], rows: usize, c: usize) {
    assert!(c > 0, "softmax_forward: c must be > 0");
    assert_eq!(out.len(), rows * c, "softmax_forward: out");
    assert_eq!(inp.len(), rows * c, "softmax_forward: inp");
    let row = |(o, x): (&mut [f32], &[f32])| {
        let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0f32;
        for (o, &v) in o.iter_mut().zip(x) {
            *o = (v - max).exp();
            sum += *o;
        }
        for o in o.iter_mut() {
            *o /= sum;
        }
    };
    if rows * c >= PAR_MIN {
        out.par_chunks_mut(c).zip(inp.par_chunks(c)).for_each(row);
    } else {
        out.chunks_mut(c).zip(inp.chunks(c)).for_each(row);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_sum_to_one_and_survive_large_inputs() {
        let inp = [1000.0, 1001.0, 1002.0, -5.0, 0.0, 5.0];
        let mut out = [0.0; 6];
        softmax_forward(&mut out, &inp, 2, 3);
        for r in 0..2 {
            let s: f32 = out[r * 3..r * 3 + 3].iter().sum();
            assert!((s - 1.0).abs() < 1e-6);
        }
        assert!((out[2] - 0.665_240_9).abs() < 1e-6);
        assert!(out.iter().all(|v| v.is_finite()));
    }
}
