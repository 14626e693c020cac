//! THE tolerance table for PyTorch parity: every checked tensor is classified by its name into one
//! class, and each class has one `Tolerance`. Keeping the table in one place, keyed by name, avoids
//! tolerances drifting onto the wrong tensors (llm.c's lesson).
//!
//! fp32 reasoning: one f32 rounding is 6e-8 relative; our CPU backend sums in a different order
//! than MKL/oneDNN (blocked GEMMs, vectorised reductions), and a GPU backend in yet another, so a
//! dot product of length K differs by ~sqrt(K) ulps, and errors grow through a dozen ops per block.
//! About 1e-5 relative (~170 ulps) with a floor proportional to the tensor's own scale is what
//! "the same fp32 math" means; a real bug (a swapped term, a wrong mask, a missing bias, a wrong
//! shift) is orders of magnitude larger. On the committed fixtures the CPU backend uses under 13% of
//! every tolerance (see the `used` column of `pepler-cuda check-parity`).
//!
//! The table has a precision axis ([`tolerance_at`]): bf16 training is checked against the same
//! fp32 dumps with tolerances derived from bf16's unit roundoff (2^-8), explained beside them.

use std::fmt;

use crate::precision::Precision;

/// Pass iff `|a - e| <= abs + rel * |e| + rel_max * max|e|` for every element, `max|e|` taken over
/// the whole expected tensor. The `rel_max` term is an absolute floor in units of the tensor's own
/// scale: in a sum with cancellation an element's rounding error follows the size of the terms
/// (about the tensor's scale), not the size of the result; a fixed absolute floor would be far too
/// loose for a tensor whose values are all ~1e-6 (LayerNorm gradients) and too tight for O(100).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerance {
    pub abs: f32,
    pub rel: f32,
    pub rel_max: f32,
}

impl Tolerance {
    pub const EXACT: Tolerance = Tolerance {
        abs: 0.0,
        rel: 0.0,
        rel_max: 0.0,
    };

    /// The allowed error for element `expected` of a tensor whose largest magnitude is `max`.
    pub fn bound(&self, expected: f32, max: f32) -> f32 {
        self.abs + self.rel * expected.abs() + self.rel_max * max
    }

    /// Whether `actual` is close enough; NaN on either side fails, equal infinities pass.
    pub fn allows(&self, actual: f32, expected: f32, max: f32) -> bool {
        (actual - expected).abs() <= self.bound(expected, max) || actual == expected
    }
}

impl fmt::Display for Tolerance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Tolerance::EXACT {
            return write!(f, "bitwise");
        }
        write!(f, "{:.0e}r", self.rel)?;
        if self.rel_max > 0.0 {
            write!(f, "+{:.0e}m", self.rel_max)?;
        }
        if self.abs > 0.0 {
            write!(f, "+{:.0e}", self.abs)?;
        }
        Ok(())
    }
}

/// What a checked tensor is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorClass {
    /// `out.logits`: [B, L, V].
    Logits,
    /// `out.text_loss`, `out.rating_loss`, `out.loss`, `step{k}.loss`: scalars.
    Loss,
    /// `out.rating`: [B] predicted ratings.
    Rating,
    /// `grad.<param>`: step-0 gradients.
    Grad,
    /// `step{k}.param.<name>`: trainable parameters after k AdamW steps.
    StepParam,
    /// `frozen.<name>`: frozen parameters after the steps (must not move at all).
    Frozen,
}

/// The class of a dump tensor name (`None` for names that are inputs, not checks).
pub fn classify(name: &str) -> Option<TensorClass> {
    if name == "out.logits" {
        Some(TensorClass::Logits)
    } else if name == "out.rating" {
        Some(TensorClass::Rating)
    } else if name.starts_with("out.") && name.ends_with("loss") {
        Some(TensorClass::Loss)
    } else if name.starts_with("grad.") {
        Some(TensorClass::Grad)
    } else if name.starts_with("step") && name.ends_with(".loss") && !name.contains(".param.") {
        Some(TensorClass::Loss)
    } else if name.starts_with("step") && name.contains(".param.") {
        Some(TensorClass::StepParam)
    } else if name.starts_with("frozen.") {
        Some(TensorClass::Frozen)
    } else {
        None
    }
}

/// The fp32 column of the table (see [`tolerance_at`]).
pub fn tolerance(class: TensorClass, lr: f64, step: usize) -> Tolerance {
    tolerance_at(Precision::Fp32, class, lr, step)
}

/// bf16's unit roundoff: 2^-8 (8 significant bits, round to nearest).
const BF16_U: f32 = 1.0 / 256.0;

/// The one table, by class and precision. `lr` and `step` matter only for `StepParam`.
///
/// bf16 column (`--precision bf16`, checked against the same fp32 PyTorch dumps): every stored
/// activation is rounded to bf16, relative error up to u = 2^-8, and a value's error is the sum
/// of the roundings on its path. On the fixtures' path to a logit (embedding, per block two
/// layernorms, four GEMM outputs, attention, GELU, two residual adds, then ln_f and the LM head)
/// the roundings are independent, so they add like a random walk: about sqrt(#roundings) u of
/// the values' scale, i.e. a few u for the fixtures' 1-2 layers. Gradients pass the same path
/// twice (forward activations, then bf16 activation gradients). The values below are 4u for
/// forward outputs and 8u for gradients, both relative to the element and as a floor in units of
/// the tensor's scale (cancellation); the `used` column of `check-parity --precision bf16` shows
/// what the fixtures take.
pub fn tolerance_at(precision: Precision, class: TensorClass, lr: f64, step: usize) -> Tolerance {
    if precision == Precision::Bf16 {
        return match class {
            // A handful of bf16 roundings on the path, each u of the tensor's scale.
            TensorClass::Logits | TensorClass::Rating => Tolerance {
                abs: 0.0,
                rel: 4.0 * BF16_U,
                rel_max: 4.0 * BF16_U,
            },
            // The mean of log-softmax terms computed in f32 from bf16 logits: the logits' error.
            TensorClass::Loss => Tolerance {
                abs: 1e-6,
                rel: 4.0 * BF16_U,
                rel_max: 0.0,
            },
            // Sums over positions of products of bf16 activations and bf16 activation
            // gradients, accumulated in f32: both factors carry the forward's error, the
            // gradient also the backward's.
            TensorClass::Grad => Tolerance {
                abs: 0.0,
                rel: 8.0 * BF16_U,
                rel_max: 8.0 * BF16_U,
            },
            // AdamW divides each gradient by its own RMS: where a gradient is within its bf16
            // error of zero, its sign (and with it the update, +-lr at step 1) is not determined
            // by the precision, so the bound is the largest possible difference, 2 lr per step
            // taken; the gradient rows above are what checks the arithmetic.
            TensorClass::StepParam => Tolerance {
                abs: (lr * 2.0 * step.max(1) as f64) as f32,
                rel: 1e-6,
                rel_max: 0.0,
            },
            // The f32 masters of frozen parameters are never written, whatever the precision.
            TensorClass::Frozen => Tolerance::EXACT,
        };
    }
    match class {
        // Logits are O(1) (|x| up to ~5 in the fixtures), each a length-C dot product of the final
        // LayerNorm output with wte after n_layer blocks: 1e-5 relative, and 1e-6 of the tensor's
        // largest logit for logits near zero (their error comes from O(max) inputs).
        TensorClass::Logits => Tolerance {
            abs: 0.0,
            rel: 1e-5,
            rel_max: 1e-6,
        },
        // Losses are means of O(1) log-probabilities (text) or of squared O(1) errors (rating):
        // each term a few ulps, averaged. Scalars, so rel_max would only double rel; the tiny
        // absolute floor keeps an exactly-zero rating loss comparable.
        TensorClass::Loss => Tolerance {
            abs: 1e-7,
            rel: 1e-5,
            rel_max: 0.0,
        },
        // Ratings: MF is a length-C dot product of O(0.1) vectors (can cancel to ~0: the floor
        // in units of the largest rating); MLP is a sigmoid chain, O(0.1..1).
        TensorClass::Rating => Tolerance {
            abs: 0.0,
            rel: 1e-5,
            rel_max: 1e-6,
        },
        // Gradients: each element is a sum over B*L positions (and over the vocab for wte) with
        // heavy cancellation, so small elements carry error in units of the tensor's scale: the
        // floor is 1e-5 of the tensor's largest entry (the CPU backend uses under 8% of the
        // resulting bound on the fixtures), plus 1e-5 relative for the large entries. A tensor
        // whose gradient is exactly zero everywhere must then be exactly zero, as it should.
        TensorClass::Grad => Tolerance {
            abs: 0.0,
            rel: 1e-5,
            rel_max: 1e-5,
        },
        // After k AdamW steps: the update divides each gradient by its own RMS, so an entry with
        // |g| near eps (1e-6) turns a 1e-7 relative gradient difference into an update difference
        // of up to ~lr * 1e-3, and it compounds over steps (docs/parity-format.md measured ~1e-4
        // of the update for two correct implementations; torch's own CPU sqrt is off by one ulp
        // in ~17% of elements, see ops::adamw). So: an absolute term of 2e-3 * lr per step taken
        // (the update scale is lr), plus 1e-6 relative for the parameter value itself (a few ulps,
        // from the decoupled weight decay's product).
        TensorClass::StepParam => Tolerance {
            abs: (lr * 2e-3 * step.max(1) as f64) as f32,
            rel: 1e-6,
            rel_max: 0.0,
        },
        // Frozen parameters are never written: any change at all, even of one bit, is a bug.
        TensorClass::Frozen => Tolerance::EXACT,
    }
}

/// Tolerance of a named tensor at fp32, or `None` for names that are not checks.
pub fn tolerance_for(name: &str, lr: f64) -> Option<Tolerance> {
    tolerance_for_at(Precision::Fp32, name, lr)
}

/// Tolerance of a named tensor at `precision`, or `None` for names that are not checks.
pub fn tolerance_for_at(precision: Precision, name: &str, lr: f64) -> Option<Tolerance> {
    let class = classify(name)?;
    let step = name
        .strip_prefix("step")
        .and_then(|r| r.split('.').next())
        .and_then(|k| k.parse::<usize>().ok())
        .unwrap_or(0);
    Some(tolerance_at(precision, class, lr, step))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_dump_name_has_one_class() {
        assert_eq!(classify("out.logits"), Some(TensorClass::Logits));
        assert_eq!(classify("out.rating_loss"), Some(TensorClass::Loss));
        assert_eq!(classify("out.rating"), Some(TensorClass::Rating));
        assert_eq!(classify("step3.loss"), Some(TensorClass::Loss));
        assert_eq!(
            classify("grad.transformer.wte.weight"),
            Some(TensorClass::Grad)
        );
        assert_eq!(
            classify("step2.param.transformer.h.0.ln_1.weight"),
            Some(TensorClass::StepParam)
        );
        assert_eq!(
            classify("frozen.transformer.wpe.weight"),
            Some(TensorClass::Frozen)
        );
        assert_eq!(classify("batch.text"), None);
        assert_eq!(classify("param.transformer.wte.weight"), None);
        let t = tolerance_for("step4.param.user_embeddings.weight", 1e-3).unwrap();
        assert!((t.abs - 8e-6).abs() < 1e-9, "{t:?}");
    }

    #[test]
    fn nan_never_passes_and_the_floor_scales_with_the_tensor() {
        let t = Tolerance {
            abs: 1.0,
            rel: 1.0,
            rel_max: 1.0,
        };
        assert!(!t.allows(f32::NAN, 0.0, 1.0));
        assert!(!t.allows(0.0, f32::NAN, 1.0));
        assert!(Tolerance::EXACT.allows(0.5, 0.5, 0.5));
        assert!(!Tolerance::EXACT.allows(0.5, 0.5000001, 0.5));
        let g = tolerance(TensorClass::Grad, 0.0, 0);
        assert!(g.allows(1e-6, 0.0, 1.0) && !g.allows(1e-6, 0.0, 1e-3));
    }
}
