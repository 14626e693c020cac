//! Launch wrappers for `kernels/gather.cu` (CPU reference: `crate::ops::gather`): the rows of a
//! (rows, c) activation picked by index, and their gradient added back.

use anyhow::Result;

use super::{check_len, grid_for, mul, to_i32, BLOCK};
use crate::device::{Device, KernelArg, LaunchConfig, View, ViewMut};
use crate::precision::Act;

/// Launch shape: one element per thread, 256 threads per block.
pub fn row_gather_config(kernel: &str, n: usize, c: usize) -> Result<LaunchConfig> {
    let total = mul(kernel, "n*c", n, c)?;
    Ok(LaunchConfig::linear(
        grid_for(kernel, total, BLOCK as usize)?,
        BLOCK,
        0,
    ))
}

/// Shared by both launchers: sizes checked, then `kernel(dst, src, ids, n, c, bound)`, where ids
/// outside `0..bound` are skipped.
#[allow(clippy::too_many_arguments)]
fn launch_rows<A: Act>(
    dev: &Device,
    base: &str,
    dst: ViewMut<'_, A>,
    src: View<'_, A>,
    ids: View<'_, i32>,
    n: usize,
    c: usize,
    dst_rows: usize,
    src_rows: usize,
    bound: usize,
) -> Result<()> {
    check_len(base, "ids", ids.len(), n)?;
    check_len(
        base,
        "dst",
        dst.len(),
        mul(base, "dst rows*c", dst_rows, c)?,
    )?;
    check_len(
        base,
        "src",
        src.len(),
        mul(base, "src rows*c", src_rows, c)?,
    )?;
    if n == 0 || c == 0 {
        return Ok(());
    }
    let cfg = row_gather_config(base, n, c)?;
    let args = [
        KernelArg::from(&dst),
        src.into(),
        ids.into(),
        to_i32(base, "n", n)?.into(),
        to_i32(base, "c", c)?.into(),
        to_i32(base, "rows", bound)?.into(),
    ];
    // SAFETY: args match `<base>[_bf16](T*, const T*, const int*, int n, int c, int rows)`; dst
    // and src hold the rows the kernel may touch (ids outside 0..rows are skipped by the kernel).
    unsafe { dev.launch(&A::kernel(base), &cfg, &args) }
}

/// `out[r, :] = src[ids[r], :]` for `r < n` (`=`); `src` holds `src_rows` rows of `c`.
pub fn row_gather<A: Act>(
    dev: &Device,
    out: ViewMut<'_, A>,
    src: View<'_, A>,
    ids: View<'_, i32>,
    n: usize,
    c: usize,
    src_rows: usize,
) -> Result<()> {
    launch_rows(
        dev,
        "row_gather",
        out,
        src,
        ids,
        n,
        c,
        n,
        src_rows,
        src_rows,
    )
}

/// `dst[ids[r], :] += src[r, :]` for `r < n` (`+=`); `dst` holds `dst_rows` rows of `c`; the ids
/// must be distinct (see the kernel's header).
pub fn row_scatter_add<A: Act>(
    dev: &Device,
    dst: ViewMut<'_, A>,
    src: View<'_, A>,
    ids: View<'_, i32>,
    n: usize,
    c: usize,
    dst_rows: usize,
) -> Result<()> {
    launch_rows(
        dev,
        "row_scatter_add",
        dst,
        src,
        ids,
        n,
        c,
        dst_rows,
        n,
        dst_rows,
    )
}
