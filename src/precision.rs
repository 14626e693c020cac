//! Training precision: which element type the activations are stored in.
//!
//! Mixed precision (`--precision bf16`) follows one rule, the same on every backend:
//! - **activations and activation gradients** are stored as [`Act`] (`f32` or `bf16`): the inputs
//!   and outputs of GEMMs, layernorm, attention, GELU, residual adds, dropout, the logits, the KV
//!   cache and the rating head;
//! - **everything reduced or accumulated** stays `f32`: layernorm's mean/rstd, attention's
//!   log-sum-exp, per-row losses and the loss scalars, norms, and every parameter, parameter
//!   gradient and AdamW moment (fp32 master weights);
//! - **GEMM weights** are read from a copy of the masters in `Act` that the optimizer rewrites in
//!   the same launch as the update (for `f32` the copy is the master itself);
//! - **arithmetic** is f32: a kernel loads `Act`, computes in f32 (GEMMs accumulate in f32) and
//!   rounds once, to nearest even, when it stores an `Act`.
//!
//! The CPU reference of a bf16 op is its f32 reference (`crate::ops`) on the inputs widened to
//! f32, with the outputs rounded to bf16 ([`Act::round_slice`]); the kernels are tested against it.

use std::borrow::Cow;

use anyhow::Result;

use crate::backend::Backend;
use crate::device::{DType, Elem};

/// The element type activations are stored in: `f32` or `half::bf16` (see the module docs).
pub trait Act: Elem + Copy + Default {
    /// The precision this type stores.
    const PRECISION: Precision;
    /// Suffix of the kernel names of this element type (`""` for f32, `"_bf16"`), so a launcher
    /// finds `layernorm_forward` or `layernorm_forward_bf16`.
    const KERNEL_SUFFIX: &'static str;
    /// Exact widening.
    fn to_f32(self) -> f32;
    /// Rounding to nearest even (exact for f32).
    fn from_f32(x: f32) -> Self;

    /// `xs` as f32: borrowed for f32, widened copies otherwise.
    fn widen(xs: &[Self]) -> Cow<'_, [f32]>;
    /// Rounds every element of `dst` from `src` (a copy for f32).
    fn narrow_into(dst: &mut [Self], src: &[f32]) {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = Self::from_f32(s);
        }
    }
    /// Runs `f` on `out` as a mutable f32 slice holding its current values, then stores the result
    /// rounded: in place for f32, through a widened copy otherwise.
    fn with_f32_mut<R>(out: &mut [Self], f: impl FnOnce(&mut [f32]) -> R) -> R;

    /// Rounds f32 values to what this type can hold, in place (a no-op for f32): the CPU
    /// reference of a kernel that stores `Self`.
    fn round_slice(xs: &mut [f32]) {
        for x in xs {
            *x = Self::from_f32(*x).to_f32();
        }
    }

    /// The weight a GEMM reads (see the module docs): the f32 master itself for f32, its copy in
    /// `Self` otherwise (an error if the model has none).
    fn gemm_weight<'a, B: Backend + ?Sized>(
        master: &'a B::Buf<f32>,
        copy: Option<&'a B::Buf<Self>>,
    ) -> Result<&'a B::Buf<Self>>;

    /// The name of the kernel `base` for this element type.
    fn kernel(base: &str) -> String {
        format!("{base}{}", Self::KERNEL_SUFFIX)
    }
}

impl Act for f32 {
    const PRECISION: Precision = Precision::Fp32;
    const KERNEL_SUFFIX: &'static str = "";
    fn to_f32(self) -> f32 {
        self
    }
    fn from_f32(x: f32) -> Self {
        x
    }
    fn widen(xs: &[f32]) -> Cow<'_, [f32]> {
        Cow::Borrowed(xs)
    }
    fn narrow_into(dst: &mut [f32], src: &[f32]) {
        dst.copy_from_slice(&src[..dst.len()]);
    }
    fn with_f32_mut<R>(out: &mut [f32], f: impl FnOnce(&mut [f32]) -> R) -> R {
        f(out)
    }
    fn round_slice(_: &mut [f32]) {}
    fn gemm_weight<'a, B: Backend + ?Sized>(
        master: &'a B::Buf<f32>,
        _: Option<&'a B::Buf<f32>>,
    ) -> Result<&'a B::Buf<f32>> {
        Ok(master)
    }
}

impl Act for half::bf16 {
    const PRECISION: Precision = Precision::Bf16;
    const KERNEL_SUFFIX: &'static str = "_bf16";
    fn to_f32(self) -> f32 {
        half::bf16::to_f32(self)
    }
    fn from_f32(x: f32) -> Self {
        // half's conversion rounds to nearest even and keeps NaN a NaN, like __float2bfloat16_rn
        half::bf16::from_f32(x)
    }
    fn widen(xs: &[half::bf16]) -> Cow<'_, [f32]> {
        Cow::Owned(xs.iter().map(|x| x.to_f32()).collect())
    }
    fn with_f32_mut<R>(out: &mut [half::bf16], f: impl FnOnce(&mut [f32]) -> R) -> R {
        let mut wide: Vec<f32> = out.iter().map(|x| x.to_f32()).collect();
        let r = f(&mut wide);
        Self::narrow_into(out, &wide);
        r
    }
    fn gemm_weight<'a, B: Backend + ?Sized>(
        _: &'a B::Buf<f32>,
        copy: Option<&'a B::Buf<half::bf16>>,
    ) -> Result<&'a B::Buf<half::bf16>> {
        copy.ok_or_else(|| anyhow::anyhow!("bf16 GEMM: the model has no bf16 copy of a weight"))
    }
}

/// `--precision`: the element type of activations (see the module docs).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// Everything in f32.
    #[default]
    Fp32,
    /// bf16 activations, f32 master weights, moments and reductions.
    Bf16,
}

impl Precision {
    /// The element type of activations.
    pub fn dtype(self) -> DType {
        match self {
            Precision::Fp32 => DType::F32,
            Precision::Bf16 => DType::BF16,
        }
    }

    /// fp32 (for serde's `skip_serializing_if`).
    pub fn is_fp32(&self) -> bool {
        *self == Precision::Fp32
    }

    /// The command line's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;

    #[test]
    fn bf16_rounds_to_nearest_even_and_widens_exactly() {
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1.0)
        assert_eq!(bf16::from_f32(1.0 + 1.0 / 256.0).to_f32(), 1.0);
        // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: even is 1 + 2^-6
        assert_eq!(
            <bf16 as Act>::from_f32(1.0 + 3.0 / 256.0).to_f32(),
            1.0 + 1.0 / 64.0
        );
        let mut xs = [1.0f32 + 1.0 / 1024.0, -3.0e-3, 65504.0];
        <bf16 as Act>::round_slice(&mut xs);
        for x in xs {
            assert_eq!(bf16::from_f32(x).to_f32(), x, "{x} is representable");
        }
        assert!(<bf16 as Act>::from_f32(f32::NAN).to_f32().is_nan());
    }

    #[test]
    fn with_f32_mut_sees_current_values_and_rounds_the_result() {
        let mut out = [bf16::from_f32(1.0), bf16::from_f32(2.0)];
        <bf16 as Act>::with_f32_mut(&mut out, |w| {
            assert_eq!(w, &[1.0, 2.0]);
            w[0] += 1.0 / 1024.0; // below half an ulp of 1: rounds back to 1
            w[1] = 3.0;
        });
        assert_eq!(out.map(|x| x.to_f32()), [1.0, 3.0]);
        let mut f = [1.5f32];
        <f32 as Act>::with_f32_mut(&mut f, |w| w[0] += 1.0 / 1024.0);
        assert_eq!(f[0], 1.5 + 1.0 / 1024.0);
    }

    #[test]
    fn kernel_names_by_type() {
        assert_eq!(<f32 as Act>::kernel("gelu_forward"), "gelu_forward");
        assert_eq!(<bf16 as Act>::kernel("gelu_forward"), "gelu_forward_bf16");
    }
}
