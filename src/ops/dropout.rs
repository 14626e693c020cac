//! CPU reference for `dropout_forward`: inverted dropout whose mask comes from a counter-based hash of
//! (seed, step, site, index), so every backend (CPU, CUDA, emulated) draws the same mask with no RNG
//! state and the backward pass recomputes the mask instead of storing it.
//!
//! `keep(i) = uniform24(hash(seed, step, site, i)) >= p`; `out[i] = keep(i) ? inp[i] / (1 - p) : 0`.
//! The backward pass is the same function applied to the incoming gradient (same site, same step).
//! `uniform24` takes the top 24 bits of the hash: exactly representable in f32 on every device.

use rayon::prelude::*;

/// Identifies one dropout call: the model numbers its sites (layer, kind) and passes the step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DropoutSite {
    /// Probability of dropping an element, in [0, 1).
    pub p: f32,
    /// Run seed.
    pub seed: u64,
    /// Optimizer step (a fresh mask every step).
    pub step: u64,
    /// Site id within the model (layer and position in the layer).
    pub site: u32,
}

/// splitmix64 finaliser: a strong 64-bit mixer that needs only shifts, xors and multiplies.
#[inline]
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The counter-based hash: 32 random bits for element `index` of `site` at `step`.
#[inline]
pub fn dropout_hash(seed: u64, step: u64, site: u32, index: u64) -> u32 {
    let key = mix64(seed ^ mix64(step.wrapping_add(0x9e37_79b9_7f4a_7c15)) ^ ((site as u64) << 32));
    (mix64(key ^ index.wrapping_mul(0xd1b5_4a32_d192_ed03)) >> 32) as u32
}

/// Multiplier for element `index`: 0 (dropped) or 1/(1-p) (kept).
#[inline]
pub fn dropout_scale(s: &DropoutSite, index: u64) -> f32 {
    let u = (dropout_hash(s.seed, s.step, s.site, index) >> 8) as f32 * (1.0 / 16_777_216.0);
    if u >= s.p {
        1.0 / (1.0 - s.p)
    } else {
        0.0
    }
}

/// `out = dropout(inp)` (=); element `i` of the slice is counter `i`. Also the backward pass.
pub fn dropout_forward(out: &mut [f32], inp: &[f32], site: &DropoutSite) {
    assert_eq!(out.len(), inp.len(), "dropout_forward: lengths");
    const CHUNK: usize = 4096;
    out.par_chunks_mut(CHUNK)
        .zip(inp.par_chunks(CHUNK))
        .enumerate()
        .for_each(|(ci, (o, x))| {
            let base = (ci * CHUNK) as u64;
            for (j, (oo, xx)) in o.iter_mut().zip(x).enumerate() {
                *oo = *xx * dropout_scale(site, base + j as u64);
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropout_keeps_about_one_minus_p_and_rescales() {
        let site = DropoutSite {
            p: 0.25,
            seed: 7,
            step: 3,
            site: 11,
        };
        let inp = vec![1.0f32; 100_000];
        let mut out = vec![0.0; inp.len()];
        dropout_forward(&mut out, &inp, &site);
        let kept = out.iter().filter(|&&x| x != 0.0).count() as f64 / inp.len() as f64;
        assert!((kept - 0.75).abs() < 0.01, "kept fraction {kept}");
        assert!(out
            .iter()
            .all(|&x| x == 0.0 || (x - 1.0 / 0.75).abs() < 1e-6));
        // A different step draws a different mask.
        let mut out2 = vec![0.0; inp.len()];
        dropout_forward(&mut out2, &inp, &DropoutSite { step: 4, ..site });
        assert_ne!(out, out2);
    }
}
