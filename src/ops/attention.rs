//! CPU reference for `attention_forward` / `attention_backward` (causal multi-head self-attention with
//! a key-padding mask, GPT-2 layout) and `attention_cached_forward` (the same attention for new
//! positions against a KV cache, used by greedy decoding).
//!
//! Layouts (row-major): `qkv` (B, L, 3C) = [q | k | v] per position as HF's `c_attn` output, head `h`
//! owns channels `h*hd..(h+1)*hd` of each; `out` (B, L, C); `att` (B, NH, L, L) holds the softmax
//! probabilities (before attention dropout) for the backward pass; `key_mask` (B, L), 1 = attend.
//! Scores are `q.k / sqrt(hd)` (division, as HF eager). A key `j` is visible to query `t` iff `j <= t`
//! and `key_mask[b, j] != 0`; invisible keys get probability exactly 0 (HF adds `finfo.min`, which
//! underflows to 0 after the max-subtracted exp). A query with no visible key gets all-zero
//! probabilities (cannot happen in PEPLER: prompt positions are always attended).
//! KV cache: `k_cache`, `v_cache` (B, NH, Lmax, hd).
//!
//! Determinism: every dot product runs in channel order and every sum over keys in key order; rayon
//! splits only over sequences (disjoint output slices). The cached path uses the same row routine,
//! so it reproduces the full computation's bits.

use super::dropout::{dropout_scale, DropoutSite};
use rayon::prelude::*;

/// Attention geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnShape {
    /// Sequences.
    pub b: usize,
    /// Positions per sequence.
    pub l: usize,
    /// Channels (n_embd).
    pub c: usize,
    /// Heads.
    pub nh: usize,
}

impl AttnShape {
    /// Channels per head.
    pub fn hd(&self) -> usize {
        self.c / self.nh
    }
}

#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut s = 0.0f32;
    for (x, y) in a.iter().zip(b) {
        s += x * y;
    }
    s
}

/// Softmax of the scores of one query over keys `0..scores.len()` (visible per `vis`), in place.
/// Invisible keys end at exactly 0. Shared by the full and cached paths (same bits).
#[inline]
fn masked_softmax(scores: &mut [f32], vis: impl Fn(usize) -> bool) {
    let mut maxv = f32::NEG_INFINITY;
    for (j, s) in scores.iter().enumerate() {
        if vis(j) && *s > maxv {
            maxv = *s;
        }
    }
    if maxv == f32::NEG_INFINITY {
        scores.iter_mut().for_each(|s| *s = 0.0);
        return;
    }
    let mut sum = 0.0f32;
    for (j, s) in scores.iter_mut().enumerate() {
        if vis(j) {
            *s = (*s - maxv).exp();
            sum += *s;
        } else {
            *s = 0.0;
        }
    }
    let inv = 1.0 / sum;
    scores.iter_mut().for_each(|s| *s *= inv);
}

/// Forward: `out` (=) and `att` (=). See module docs for layouts.
pub fn attention_forward(
    out: &mut [f32],
    att: &mut [f32],
    qkv: &[f32],
    key_mask: Option<&[i32]>,
    dropout: Option<&DropoutSite>,
    s: AttnShape,
) {
    let AttnShape { b: _, l, c, nh } = s;
    let hd = s.hd();
    assert_eq!(c % nh, 0, "attention: c {c} not divisible by nh {nh}");
    assert_eq!(out.len(), s.b * l * c, "attention_forward: out");
    assert_eq!(att.len(), s.b * nh * l * l, "attention_forward: att");
    assert_eq!(qkv.len(), s.b * l * 3 * c, "attention_forward: qkv");
    if let Some(m) = key_mask {
        assert_eq!(m.len(), s.b * l, "attention_forward: key_mask");
    }
    let scale = (hd as f32).sqrt();
    out.par_chunks_mut(l * c)
        .zip(att.par_chunks_mut(nh * l * l))
        .enumerate()
        .for_each(|(b, (out_b, att_b))| {
            let qkv_b = &qkv[b * l * 3 * c..(b + 1) * l * 3 * c];
            let mask_b = key_mask.map(|m| &m[b * l..(b + 1) * l]);
            for h in 0..nh {
                for t in 0..l {
                    let q = &qkv_b[t * 3 * c + h * hd..][..hd];
                    let row = &mut att_b[(h * l + t) * l..(h * l + t + 1) * l];
                    for (j, r) in row.iter_mut().enumerate().take(t + 1) {
                        *r = dot(q, &qkv_b[j * 3 * c + c + h * hd..][..hd]) / scale;
                    }
                    masked_softmax(&mut row[..t + 1], |j| mask_b.is_none_or(|m| m[j] != 0));
                    row[t + 1..].iter_mut().for_each(|r| *r = 0.0);
                    let o = &mut out_b[t * c + h * hd..][..hd];
                    o.iter_mut().for_each(|x| *x = 0.0);
                    for (j, &p) in row.iter().enumerate().take(t + 1) {
                        let p = match dropout {
                            Some(d) => {
                                p * dropout_scale(d, (((b * nh + h) * l + t) * l + j) as u64)
                            }
                            None => p,
                        };
                        let v = &qkv_b[j * 3 * c + 2 * c + h * hd..][..hd];
                        for (x, y) in o.iter_mut().zip(v) {
                            *x += p * y;
                        }
                    }
                }
            }
        });
}

/// Per-row log-sum-exp of the visible scaled scores, `lse` (B, NH, L) (=): `max_j s_tj +
/// ln(sum_j exp(s_tj - max_j s_tj))` over the keys `j` visible to `t`, with `s_tj = q_t.k_j /
/// sqrt(hd)` as in [`attention_forward`]. It is what the fused GPU forward saves for its backward
/// instead of the probabilities (`p_tj = exp(s_tj - lse_t)`). A query with no visible key stores
/// `+inf`, so that `exp(s - lse) = 0` reproduces its all-zero probabilities without a special case.
pub fn attention_row_lse(lse: &mut [f32], qkv: &[f32], key_mask: Option<&[i32]>, s: AttnShape) {
    let AttnShape { b: _, l, c, nh } = s;
    let hd = s.hd();
    assert_eq!(c % nh, 0, "attention: c {c} not divisible by nh {nh}");
    assert_eq!(lse.len(), s.b * nh * l, "attention_row_lse: lse");
    assert_eq!(qkv.len(), s.b * l * 3 * c, "attention_row_lse: qkv");
    if let Some(m) = key_mask {
        assert_eq!(m.len(), s.b * l, "attention_row_lse: key_mask");
    }
    let scale = (hd as f32).sqrt();
    lse.par_chunks_mut(nh * l)
        .enumerate()
        .for_each(|(b, lse_b)| {
            let qkv_b = &qkv[b * l * 3 * c..(b + 1) * l * 3 * c];
            let vis = |j: usize| key_mask.is_none_or(|m| m[b * l + j] != 0);
            let mut scores = vec![0.0f32; l];
            for h in 0..nh {
                for t in 0..l {
                    let q = &qkv_b[t * 3 * c + h * hd..][..hd];
                    let mut maxv = f32::NEG_INFINITY;
                    for (j, r) in scores.iter_mut().enumerate().take(t + 1) {
                        *r = dot(q, &qkv_b[j * 3 * c + c + h * hd..][..hd]) / scale;
                        if vis(j) && *r > maxv {
                            maxv = *r;
                        }
                    }
                    lse_b[h * l + t] = if maxv == f32::NEG_INFINITY {
                        f32::INFINITY
                    } else {
                        let sum: f32 = (0..=t)
                            .filter(|&j| vis(j))
                            .map(|j| (scores[j] - maxv).exp())
                            .sum();
                        maxv + sum.ln()
                    };
                }
            }
        });
}

/// Backward: `dqkv` (=) from `dout`, using the saved `att` (pre-dropout probabilities).
pub fn attention_backward(
    dqkv: &mut [f32],
    dout: &[f32],
    qkv: &[f32],
    att: &[f32],
    dropout: Option<&DropoutSite>,
    s: AttnShape,
) {
    let AttnShape { b: _, l, c, nh } = s;
    let hd = s.hd();
    assert_eq!(dqkv.len(), s.b * l * 3 * c, "attention_backward: dqkv");
    assert_eq!(dout.len(), s.b * l * c, "attention_backward: dout");
    assert_eq!(qkv.len(), s.b * l * 3 * c, "attention_backward: qkv");
    assert_eq!(att.len(), s.b * nh * l * l, "attention_backward: att");
    let scale = (hd as f32).sqrt();
    dqkv.par_chunks_mut(l * 3 * c)
        .enumerate()
        .for_each(|(b, dqkv_b)| {
            dqkv_b.iter_mut().for_each(|x| *x = 0.0);
            let qkv_b = &qkv[b * l * 3 * c..(b + 1) * l * 3 * c];
            let dout_b = &dout[b * l * c..(b + 1) * l * c];
            let mut dp = vec![0.0f32; l];
            for h in 0..nh {
                for t in 0..l {
                    let p_row = &att[((b * nh + h) * l + t) * l..][..l];
                    let dy = &dout_b[t * c + h * hd..][..hd];
                    // dp_j = dy . v_j (through dropout); dv_j += p'_j dy.
                    for j in 0..=t {
                        let ds = match dropout {
                            Some(d) => dropout_scale(d, (((b * nh + h) * l + t) * l + j) as u64),
                            None => 1.0,
                        };
                        let v = &qkv_b[j * 3 * c + 2 * c + h * hd..][..hd];
                        dp[j] = dot(dy, v) * ds;
                        let pj = p_row[j] * ds;
                        let dv = &mut dqkv_b[j * 3 * c + 2 * c + h * hd..][..hd];
                        for (x, y) in dv.iter_mut().zip(dy) {
                            *x += pj * y;
                        }
                    }
                    // Softmax backward: ds_j = p_j (dp_j - sum_k p_k dp_k); masked keys have p_j = 0.
                    let mut pdp = 0.0f32;
                    for j in 0..=t {
                        pdp += p_row[j] * dp[j];
                    }
                    for j in 0..=t {
                        let dsc = p_row[j] * (dp[j] - pdp) / scale;
                        if dsc == 0.0 {
                            continue;
                        }
                        // dq_t += dsc k_j ; dk_j += dsc q_t (q, k are in disjoint channel ranges).
                        let (q_off, k_off) = (t * 3 * c + h * hd, j * 3 * c + c + h * hd);
                        for i in 0..hd {
                            let kv = qkv_b[k_off + i];
                            let qv = qkv_b[q_off + i];
                            dqkv_b[q_off + i] += dsc * kv;
                            dqkv_b[k_off + i] += dsc * qv;
                        }
                    }
                }
            }
        });
}

/// Cached attention for `n` new positions `start..start+n` of every sequence: appends their k, v to
/// the caches (B, NH, lmax, hd), then writes `out` (B, n, C) (=) attending to keys `0..=start+i`.
/// No key mask (decoding attends to every prompt and generated position) and no dropout.
#[allow(clippy::too_many_arguments)]
pub fn attention_cached_forward(
    out: &mut [f32],
    qkv: &[f32],
    k_cache: &mut [f32],
    v_cache: &mut [f32],
    start: usize,
    n: usize,
    lmax: usize,
    s: AttnShape,
) {
    let AttnShape {
        b: batch,
        l: _,
        c,
        nh,
    } = s;
    let hd = s.hd();
    assert!(
        start + n <= lmax,
        "attention_cached_forward: {start}+{n} > cache length {lmax}"
    );
    assert_eq!(out.len(), batch * n * c, "attention_cached_forward: out");
    assert_eq!(
        qkv.len(),
        batch * n * 3 * c,
        "attention_cached_forward: qkv"
    );
    assert_eq!(
        k_cache.len(),
        batch * nh * lmax * hd,
        "attention_cached_forward: k_cache"
    );
    assert_eq!(
        v_cache.len(),
        k_cache.len(),
        "attention_cached_forward: v_cache"
    );
    let scale = (hd as f32).sqrt();
    out.par_chunks_mut(n * c)
        .zip(k_cache.par_chunks_mut(nh * lmax * hd))
        .zip(v_cache.par_chunks_mut(nh * lmax * hd))
        .enumerate()
        .for_each(|(b, ((out_b, kc), vc))| {
            let qkv_b = &qkv[b * n * 3 * c..(b + 1) * n * 3 * c];
            for h in 0..nh {
                for i in 0..n {
                    let pos = start + i;
                    kc[(h * lmax + pos) * hd..][..hd]
                        .copy_from_slice(&qkv_b[i * 3 * c + c + h * hd..][..hd]);
                    vc[(h * lmax + pos) * hd..][..hd]
                        .copy_from_slice(&qkv_b[i * 3 * c + 2 * c + h * hd..][..hd]);
                }
            }
            let mut row = vec![0.0f32; lmax];
            for h in 0..nh {
                for i in 0..n {
                    let t = start + i;
                    let q = &qkv_b[i * 3 * c + h * hd..][..hd];
                    for (j, r) in row.iter_mut().enumerate().take(t + 1) {
                        *r = dot(q, &kc[(h * lmax + j) * hd..][..hd]) / scale;
                    }
                    masked_softmax(&mut row[..t + 1], |_| true);
                    let o = &mut out_b[i * c + h * hd..][..hd];
                    o.iter_mut().for_each(|x| *x = 0.0);
                    for (j, &p) in row.iter().enumerate().take(t + 1) {
                        let v = &vc[(h * lmax + j) * hd..][..hd];
                        for (x, y) in o.iter_mut().zip(v) {
                            *x += p * y;
                        }
                    }
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_attention_reproduces_full_attention_bits() {
        let s = AttnShape {
            b: 2,
            l: 5,
            c: 8,
            nh: 2,
        };
        let qkv: Vec<f32> = (0..s.b * s.l * 3 * s.c)
            .map(|i| ((i * 31 % 23) as f32 - 11.0) / 10.0)
            .collect();
        let mut out = vec![0.0; s.b * s.l * s.c];
        let mut att = vec![0.0; s.b * s.nh * s.l * s.l];
        attention_forward(&mut out, &mut att, &qkv, None, None, s);
        let lmax = 6;
        let hd = s.hd();
        let mut kc = vec![0.0; s.b * s.nh * lmax * hd];
        let mut vc = kc.clone();
        // Prefill 3 positions, then one at a time.
        let take = |t0: usize, n: usize| -> Vec<f32> {
            let mut v = Vec::new();
            for b in 0..s.b {
                v.extend_from_slice(&qkv[(b * s.l + t0) * 3 * s.c..(b * s.l + t0 + n) * 3 * s.c]);
            }
            v
        };
        let mut o3 = vec![0.0; s.b * 3 * s.c];
        attention_cached_forward(&mut o3, &take(0, 3), &mut kc, &mut vc, 0, 3, lmax, s);
        for b in 0..s.b {
            assert_eq!(
                &o3[b * 3 * s.c..(b + 1) * 3 * s.c],
                &out[b * s.l * s.c..(b * s.l + 3) * s.c]
            );
        }
        for t in 3..5 {
            let mut o1 = vec![0.0; s.b * s.c];
            attention_cached_forward(&mut o1, &take(t, 1), &mut kc, &mut vc, t, 1, lmax, s);
            for b in 0..s.b {
                assert_eq!(
                    &o1[b * s.c..(b + 1) * s.c],
                    &out[(b * s.l + t) * s.c..(b * s.l + t + 1) * s.c]
                );
            }
        }
    }

    #[test]
    fn masked_keys_get_exactly_zero_probability() {
        let s = AttnShape {
            b: 1,
            l: 4,
            c: 4,
            nh: 1,
        };
        let qkv: Vec<f32> = (0..s.l * 3 * s.c)
            .map(|i| (i as f32 * 0.37).sin())
            .collect();
        let mask = [1, 0, 1, 1];
        let mut out = vec![0.0; s.l * s.c];
        let mut att = vec![0.0; s.l * s.l];
        attention_forward(&mut out, &mut att, &qkv, Some(&mask), None, s);
        for t in 0..4 {
            assert_eq!(att[t * 4 + 1], 0.0);
            let sum: f32 = att[t * 4..t * 4 + 4].iter().sum();
            assert!((sum - 1.0).abs() < 1e-6);
        }
    }
}
