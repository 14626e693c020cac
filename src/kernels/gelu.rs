//! Launch wrappers for `kernels/gelu.cu` (CPU reference: `crate::ops::gelu`). `gelu_forward` and
//! `gelu_backward` are generic over the activation type (f32 or bf16); `bias_gelu_forward` is f32
//! only (in bf16 the GEMM's bias epilogue rounds once, then `gelu_forward` runs).

use anyhow::Result;

use super::{act_map_config, check_len, grid_for, to_i32, BLOCK};
use crate::device::{Device, KernelArg, LaunchConfig, View, ViewMut};
use crate::precision::Act;

/// Launch shape of `gelu_forward`/`gelu_backward` over `n` elements of `A`: one f32 or 8 bf16 per
/// thread, 256 threads per block.
pub fn gelu_config<A: Act>(kernel: &str, n: usize) -> Result<LaunchConfig> {
    act_map_config::<A>(kernel, n)
}

/// `out[i] = gelu(inp[i])` for `i < n` (`=`), computed in f32 and rounded once to `A`.
pub fn gelu_forward<A: Act>(
    dev: &Device,
    out: ViewMut<'_, A>,
    inp: View<'_, A>,
    n: usize,
) -> Result<()> {
    const K: &str = "gelu_forward";
    check_len(K, "out", out.len(), n)?;
    check_len(K, "inp", inp.len(), n)?;
    if n == 0 {
        return Ok(());
    }
    let cfg = gelu_config::<A>(K, n)?;
    let args = [KernelArg::from(&out), inp.into(), to_i32(K, "n", n)?.into()];
    // SAFETY: args match `gelu_forward[_bf16](A*, const A*, int)`; buffers hold >= n elements.
    unsafe { dev.launch(&A::kernel(K), &cfg, &args) }
}

/// `dinp[i] = gelu'(inp[i]) * dout[i]` for `i < n` (`=`), computed in f32 and rounded once to `A`.
pub fn gelu_backward<A: Act>(
    dev: &Device,
    dinp: ViewMut<'_, A>,
    inp: View<'_, A>,
    dout: View<'_, A>,
    n: usize,
) -> Result<()> {
    const K: &str = "gelu_backward";
    check_len(K, "dinp", dinp.len(), n)?;
    check_len(K, "inp", inp.len(), n)?;
    check_len(K, "dout", dout.len(), n)?;
    if n == 0 {
        return Ok(());
    }
    let cfg = gelu_config::<A>(K, n)?;
    let args = [
        KernelArg::from(&dinp),
        inp.into(),
        dout.into(),
        to_i32(K, "n", n)?.into(),
    ];
    // SAFETY: args match `gelu_backward[_bf16](A*, const A*, const A*, int)`; buffers hold >= n
    // elements.
    unsafe { dev.launch(&A::kernel(K), &cfg, &args) }
}

/// `pre[r, j] += bias[j]`, `out = gelu(pre)` over `rows x c` (see `kernels/gelu.cu`): the bias
/// add of the MLP's first matmul fused into its GELU.
pub fn bias_gelu_forward(
    dev: &Device,
    pre: ViewMut<'_, f32>,
    out: ViewMut<'_, f32>,
    bias: View<'_, f32>,
    rows: usize,
    c: usize,
) -> Result<()> {
    const K: &str = "bias_gelu_forward";
    if c == 0 {
        anyhow::bail!("{K}: c must be > 0");
    }
    let n = rows
        .checked_mul(c)
        .ok_or_else(|| anyhow::anyhow!("{K}: rows*c overflows"))?;
    check_len(K, "pre", pre.len(), n)?;
    check_len(K, "out", out.len(), n)?;
    check_len(K, "bias", bias.len(), c)?;
    if n == 0 {
        return Ok(());
    }
    let (mut pre, mut out) = (pre, out);
    // one element per thread, like the f32 gelu_forward
    let cfg = LaunchConfig::linear(grid_for(K, n, BLOCK as usize)?, BLOCK, 0);
    let args = [
        KernelArg::from(&pre.slice_mut(..n)),
        KernelArg::from(&out.slice_mut(..n)),
        bias.slice(..c).into(),
        to_i32(K, "rows", rows)?.into(),
        to_i32(K, "c", c)?.into(),
    ];
    to_i32(K, "rows*c", n)?;
    // SAFETY: args match `bias_gelu_forward(float*, float*, const float*, int, int)`; pre and out
    // are sliced to rows*c, bias to c.
    unsafe { dev.launch(K, &cfg, &args) }
}
