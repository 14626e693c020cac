//! CPU reference for `kernels/layernorm.cu`: LayerNorm over the last dimension (PyTorch
//! `nn.LayerNorm`, biased variance), llm.c style.
//!
//! Layouts (row-major): `inp`, `out`, `dout`, `dinp` are `rows x c`; `weight`, `bias`, `dweight`,
//! `dbias` are `c`; `mean`, `rstd` are `rows` (fp32, saved by the forward for the backward).
//! Forward writes (`=`); backward accumulates (`+=`) into all three gradients: `dinp` because
//! LayerNorm's input sits on the residual stream, `dweight`/`dbias` for gradient accumulation.
//! Deterministic: each output's summation order is fixed (columns sum rows in order 0..rows).

use rayon::prelude::*;

/// Below this many elements the op runs on the calling thread.
const PAR_MIN: usize = 1 << 16;

/// One row of the forward's zipped iteration: (((out row, mean), rstd), inp row).
type RowItem<'a> = (((&'a mut [f32], &'a mut f32), &'a mut f32), &'a [f32]);

/// `out[r,i] = (inp[r,i] - mean[r]) * rstd[r] * weight[i] + bias[i]` with
/// `mean[r] = sum_i inp[r,i] / c`, `rstd[r] = 1 / sqrt(sum_i (inp[r,i]-mean[r])^2 / c + eps)`.
///
/// # Panics
/// If a slice length does not match `rows`/`c`.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_forward(
    out: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
    inp: &[f32],
    weight: &[f32],
    bias: &[f32],
    rows: usize,
    c: usize,
    eps: f32,
) {
    assert!(c > 0, "layernorm_forward: c must be > 0");
    assert_eq!(out.len(), rows * c, "layernorm_forward: out");
    assert_eq!(inp.len(), rows * c, "layernorm_forward: inp");
    assert_eq!(mean.len(), rows, "layernorm_forward: mean");
    assert_eq!(rstd.len(), rows, "layernorm_forward: rstd");
    assert_eq!(weight.len(), c, "layernorm_forward: weight");
    assert_eq!(bias.len(), c, "layernorm_forward: bias");
    let row = |(((o, m), s), x): RowItem<'_>| {
        let mu = x.iter().sum::<f32>() / c as f32;
        let var = x.iter().map(|&v| (v - mu) * (v - mu)).sum::<f32>() / c as f32;
        let r = 1.0 / (var + eps).sqrt();
        for i in 0..c {
            o[i] = (x[i] - mu) * r * weight[i] + bias[i];
        }
        *m = mu;
        *s = r;
    };
    if rows * c >= PAR_MIN {
        out.par_chunks_mut(c)
            .zip(mean.par_iter_mut())
            .zip(rstd.par_iter_mut())
            .zip(inp.par_chunks(c))
            .for_each(row);
    } else {
        out.chunks_mut(c)
            .zip(mean.iter_mut())
            .zip(rstd.iter_mut())
            .zip(inp.chunks(c))
            .for_each(row);
    }
}

/// The fused residual add + LayerNorm of `kernels/layernorm.cu`: `resid = a + b` (=, exactly
/// `ops::residual::residual_forward`), then [`layernorm_forward`] of `resid` (=).
///
/// # Panics
/// If a slice length does not match `rows`/`c`.
#[allow(clippy::too_many_arguments)]
pub fn residual_layernorm_forward(
    resid: &mut [f32],
    out: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
    a: &[f32],
    b: &[f32],
    weight: &[f32],
    bias: &[f32],
    rows: usize,
    c: usize,
    eps: f32,
) {
    assert_eq!(resid.len(), rows * c, "residual_layernorm_forward: resid");
    super::residual::residual_forward(resid, a, b);
    layernorm_forward(out, mean, rstd, resid, weight, bias, rows, c, eps);
}

/// Backward of [`layernorm_forward`] given the saved `mean`/`rstd`. With `n = (x - mean) * rstd`,
/// `g = weight * dout`:
/// `dinp += (g - mean(g) - n * mean(g * n)) * rstd`, `dweight += sum_rows n * dout`,
/// `dbias += sum_rows dout`.
///
/// # Panics
/// If a slice length does not match `rows`/`c`.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward(
    dinp: &mut [f32],
    dweight: &mut [f32],
    dbias: &mut [f32],
    dout: &[f32],
    inp: &[f32],
    weight: &[f32],
    mean: &[f32],
    rstd: &[f32],
    rows: usize,
    c: usize,
) {
    assert!(c > 0, "layernorm_backward: c must be > 0");
    assert_eq!(dinp.len(), rows * c, "layernorm_backward: dinp");
    assert_eq!(dout.len(), rows * c, "layernorm_backward: dout");
    assert_eq!(inp.len(), rows * c, "layernorm_backward: inp");
    assert_eq!(dweight.len(), c, "layernorm_backward: dweight");
    assert_eq!(dbias.len(), c, "layernorm_backward: dbias");
    assert_eq!(weight.len(), c, "layernorm_backward: weight");
    assert_eq!(mean.len(), rows, "layernorm_backward: mean");
    assert_eq!(rstd.len(), rows, "layernorm_backward: rstd");

    // dinp: rows are independent.
    let row = |(r, di): (usize, &mut [f32])| {
        let x = &inp[r * c..(r + 1) * c];
        let g = &dout[r * c..(r + 1) * c];
        let (mu, rs) = (mean[r], rstd[r]);
        let mut dnorm_mean = 0.0f32;
        let mut dnorm_norm_mean = 0.0f32;
        for i in 0..c {
            let n = (x[i] - mu) * rs;
            let d = weight[i] * g[i];
            dnorm_mean += d;
            dnorm_norm_mean += d * n;
        }
        dnorm_mean /= c as f32;
        dnorm_norm_mean /= c as f32;
        for i in 0..c {
            let n = (x[i] - mu) * rs;
            let d = weight[i] * g[i];
            di[i] += (d - dnorm_mean - n * dnorm_norm_mean) * rs;
        }
    };
    // dweight/dbias: columns are independent; each sums its rows in order 0..rows.
    let col = |(i, (dw, db)): (usize, (&mut f32, &mut f32))| {
        let (mut sw, mut sb) = (0.0f32, 0.0f32);
        for r in 0..rows {
            let g = dout[r * c + i];
            sw += (inp[r * c + i] - mean[r]) * rstd[r] * g;
            sb += g;
        }
        *dw += sw;
        *db += sb;
    };
    if rows * c >= PAR_MIN {
        dinp.par_chunks_mut(c).enumerate().for_each(row);
        dweight
            .par_iter_mut()
            .zip(dbias.par_iter_mut())
            .enumerate()
            .for_each(col);
    } else {
        dinp.chunks_mut(c).enumerate().for_each(row);
        dweight
            .iter_mut()
            .zip(dbias.iter_mut())
            .enumerate()
            .for_each(col);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_normalizes() {
        let inp = [1.0, 2.0, 3.0, 4.0, -1.0, -1.0, -1.0, -1.0];
        let (w, b) = ([1.0; 4], [0.5; 4]);
        let (mut out, mut m, mut s) = ([0.0; 8], [0.0; 2], [0.0; 2]);
        layernorm_forward(&mut out, &mut m, &mut s, &inp, &w, &b, 2, 4, 1e-5);
        assert_eq!(m, [2.5, -1.0]);
        assert!((s[0] - 1.0 / (1.25f32 + 1e-5).sqrt()).abs() < 1e-6);
        assert!((out[0] - (0.5 - 1.5 * s[0])).abs() < 1e-6);
        assert_eq!(&out[4..], &[0.5; 4]);
    }

    #[test]
    fn backward_matches_finite_difference() {
        // loss = sum(out * k) for a fixed k; check dinp/dweight/dbias numerically (f64 forward).
        let (rows, c) = (3, 5);
        let inp: Vec<f32> = (0..rows * c)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.3)
            .collect();
        let w: Vec<f32> = (0..c).map(|i| 0.5 + 0.1 * i as f32).collect();
        let b: Vec<f32> = (0..c).map(|i| 0.05 * i as f32).collect();
        let k: Vec<f32> = (0..rows * c)
            .map(|i| ((i * 5 % 7) as f32 - 3.0) * 0.25)
            .collect();
        let loss = |x: &[f64], w: &[f64], b: &[f64]| -> f64 {
            let mut l = 0.0;
            for r in 0..rows {
                let row = &x[r * c..(r + 1) * c];
                let mu = row.iter().sum::<f64>() / c as f64;
                let var = row.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / c as f64;
                let s = 1.0 / (var + 1e-5).sqrt();
                for i in 0..c {
                    l += ((row[i] - mu) * s * w[i] + b[i]) * k[r * c + i] as f64;
                }
            }
            l
        };
        let (mut out, mut m, mut s) = (vec![0.0; rows * c], vec![0.0; rows], vec![0.0; rows]);
        layernorm_forward(&mut out, &mut m, &mut s, &inp, &w, &b, rows, c, 1e-5);
        let (mut di, mut dw, mut db) = (vec![0.0; rows * c], vec![0.0; c], vec![0.0; c]);
        layernorm_backward(&mut di, &mut dw, &mut db, &k, &inp, &w, &m, &s, rows, c);
        let to64 = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
        let (x0, w0, b0) = (to64(&inp), to64(&w), to64(&b));
        let h = 1e-5;
        for j in 0..rows * c {
            let (mut xp, mut xm) = (x0.clone(), x0.clone());
            xp[j] += h;
            xm[j] -= h;
            let fd = (loss(&xp, &w0, &b0) - loss(&xm, &w0, &b0)) / (2.0 * h);
            assert!(
                (di[j] as f64 - fd).abs() < 1e-3,
                "dinp[{j}] {} vs {fd}",
                di[j]
            );
        }
        for j in 0..c {
            let (mut wp, mut wm) = (w0.clone(), w0.clone());
            wp[j] += h;
            wm[j] -= h;
            let fd = (loss(&x0, &wp, &b0) - loss(&x0, &wm, &b0)) / (2.0 * h);
            assert!(
                (dw[j] as f64 - fd).abs() < 1e-3,
                "dweight[{j}] {} vs {fd}",
                dw[j]
            );
            let (mut bp, mut bm) = (b0.clone(), b0.clone());
            bp[j] += h;
            bm[j] -= h;
            let fd = (loss(&x0, &w0, &bp) - loss(&x0, &w0, &bm)) / (2.0 * h);
            assert!(
                (db[j] as f64 - fd).abs() < 1e-3,
                "dbias[{j}] {} vs {fd}",
                db[j]
            );
        }
    }
}
