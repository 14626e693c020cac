//! CPU reference for `crossentropy_forward`: softmax cross-entropy over the vocabulary with an ignore
//! index, fused with its backward like llm.c's classifier: the logits buffer is overwritten in place
//! by `dlogits = (softmax - onehot(target)) * dscale` when a gradient is requested.
//!
//! Shapes: `logits` (rows, v), `targets` (rows) i32, `losses` (rows). A row whose target is negative
//! (HF's -100) is ignored: loss 0 and, with a gradient, dlogits 0. `losses[r] = logsumexp(row) -
//! row[target]` (=). Rows run in parallel; each row's reductions run in vocabulary order.

use rayon::prelude::*;

/// Per-row losses (=) and, if `dscale` is `Some`, dlogits in place of the logits.
pub fn crossentropy_forward(
    losses: &mut [f32],
    logits: &mut [f32],
    targets: &[i32],
    rows: usize,
    v: usize,
    dscale: Option<f32>,
) {
    assert_eq!(losses.len(), rows, "crossentropy_forward: losses");
    assert_eq!(logits.len(), rows * v, "crossentropy_forward: logits");
    assert_eq!(targets.len(), rows, "crossentropy_forward: targets");
    losses
        .par_iter_mut()
        .zip(logits.par_chunks_mut(v))
        .zip(targets.par_iter())
        .for_each(|((loss, row), &tgt)| {
            if tgt < 0 {
                *loss = 0.0;
                if dscale.is_some() {
                    row.iter_mut().for_each(|x| *x = 0.0);
                }
                return;
            }
            let t = tgt as usize;
            assert!(t < v, "crossentropy_forward: target {t} >= vocab {v}");
            let maxv = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            let mut sum = 0.0f32;
            for &x in row.iter() {
                sum += (x - maxv).exp();
            }
            *loss = sum.ln() - (row[t] - maxv);
            if let Some(scale) = dscale {
                let inv = 1.0 / sum;
                for x in row.iter_mut() {
                    *x = (*x - maxv).exp() * inv * scale;
                }
                row[t] -= scale;
            }
        });
}

/// Mean of `losses[r]` over the rows with a target (`targets[r] >= 0`), summed in f64 in row order
/// and cast to f32 once (NaN when no row has a target, as torch's mean reduction). The GPU's
/// `crossentropy_mean` forms the same value on the device.
pub fn crossentropy_mean(losses: &[f32], targets: &[i32]) -> f32 {
    assert_eq!(losses.len(), targets.len(), "crossentropy_mean: lengths");
    let (mut sum, mut n) = (0.0f64, 0usize);
    for (&l, &t) in losses.iter().zip(targets) {
        if t >= 0 {
            sum += l as f64;
            n += 1;
        }
    }
    (sum / n as f64) as f32
}

/// Greedy decoding helper: `out[r]` = index of the largest logit of row `r` (first on ties).
pub fn argmax_forward(out: &mut [i32], logits: &[f32], rows: usize, v: usize) {
    assert_eq!(out.len(), rows, "argmax_forward: out");
    assert_eq!(logits.len(), rows * v, "argmax_forward: logits");
    out.par_iter_mut()
        .zip(logits.par_chunks(v))
        .for_each(|(o, row)| {
            let mut best = 0usize;
            for (j, &x) in row.iter().enumerate() {
                if x > row[best] {
                    best = j;
                }
            }
            *o = best as i32;
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crossentropy_matches_formula_and_gradient_sums_to_zero() {
        let mut logits = vec![1.0f32, 2.0, 3.0, 0.5, 0.5, 0.5];
        let mut losses = vec![9.0; 2];
        crossentropy_forward(&mut losses, &mut logits, &[2, -100], 2, 3, Some(0.5));
        let want = (1f32.exp() + 2f32.exp() + 3f32.exp()).ln() - 3.0;
        assert!((losses[0] - want).abs() < 1e-6);
        assert_eq!(losses[1], 0.0);
        assert!(logits[..3].iter().sum::<f32>().abs() < 1e-6);
        assert!(logits[2] < 0.0);
        assert_eq!(&logits[3..], &[0.0, 0.0, 0.0]);
    }
}
