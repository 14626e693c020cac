//! Launch wrapper for `kernels/residual.cu` (CPU reference: `crate::ops::residual`), generic over
//! the activation type (f32 or bf16).

use anyhow::Result;

use super::{act_per_thread, check_len, grid_for, to_i32, BLOCK};
use crate::device::{Device, KernelArg, LaunchConfig, View, ViewMut};
use crate::precision::{Act, Precision};

/// Launch shape for `n` elements of `A`: 4 f32 (one float4) or 8 bf16 (one 16-byte access) per
/// thread, 256 threads per block.
pub fn residual_forward_config<A: Act>(n: usize) -> Result<LaunchConfig> {
    let per_thread = match A::PRECISION {
        Precision::Fp32 => 4,
        Precision::Bf16 => act_per_thread::<A>(),
    };
    Ok(LaunchConfig::linear(
        grid_for("residual_forward", n, per_thread * BLOCK as usize)?,
        BLOCK,
        0,
    ))
}

/// `out[i] = a[i] + b[i]` for `i < n` (`=`): one f32 add, rounded once to `A`.
pub fn residual_forward<A: Act>(
    dev: &Device,
    out: ViewMut<'_, A>,
    a: View<'_, A>,
    b: View<'_, A>,
    n: usize,
) -> Result<()> {
    const K: &str = "residual_forward";
    check_len(K, "out", out.len(), n)?;
    check_len(K, "a", a.len(), n)?;
    check_len(K, "b", b.len(), n)?;
    if n == 0 {
        return Ok(());
    }
    let cfg = residual_forward_config::<A>(n)?;
    let args = [
        KernelArg::from(&out),
        a.into(),
        b.into(),
        to_i32(K, "n", n)?.into(),
    ];
    // SAFETY: args match `residual_forward[_bf16](A*, const A*, const A*, int)`; every buffer
    // holds >= n elements, which is all the kernel touches.
    unsafe { dev.launch(&A::kernel(K), &cfg, &args) }
}
