//! Launch wrappers for `kernels/embedding.cu` (CPU reference: `crate::ops::embedding`).
//!
//! The table gradient is deterministic without atomics: a first launch links every occurrence of an
//! id to the next one (scratch from the caller, [`embedding_backward_scratch_len`] i32 elements,
//! contents overwritten), a second lets the first occurrence walk its chain in (b, j) order, so
//! `dtable` gets exactly the CPU reference's bits. Ids are validated on the host before upload
//! (`Batch::validate`); an out-of-range id that reaches a kernel is skipped (see the .cu header).
//! The launchers are generic over the activation type `A` (f32 or bf16) of `out` / `dout`; the
//! tables and their gradients are always f32, and the backward sums the exactly widened `dout`
//! in f32, so it is bit-identical to the CPU reference on the widened values in both precisions.
//! The forward's launch shape depends on `A` (bf16: a thread per 8 channels); the backward's not.

use anyhow::{bail, Result};

use super::{act_per_thread, check_len, grid_for, mul, opt_ref, to_i32, BLOCK};
use crate::device::{Device, KernelArg, LaunchConfig, View, ViewMut};
use crate::ops::embedding::EmbedShape;
use crate::precision::Act;

/// Element counts one call touches: (out = batch*seq*c, ids = batch*n, wpe rows needed).
fn sizes(kernel: &str, s: &EmbedShape) -> Result<(usize, usize, usize)> {
    if s.c == 0 {
        bail!("{kernel}: c must be > 0");
    }
    if s.offset + s.n > s.seq {
        bail!("{kernel}: offset {} + n {} > seq {}", s.offset, s.n, s.seq);
    }
    let out = mul(
        kernel,
        "batch*seq*c",
        mul(kernel, "batch*seq", s.batch, s.seq)?,
        s.c,
    )?;
    let ids = mul(kernel, "batch*n", s.batch, s.n)?;
    let wpe_rows = s.pos0 + s.offset + s.n;
    to_i32(kernel, "batch*seq*c", out)?;
    to_i32(kernel, "pos0+offset+n", wpe_rows)?;
    Ok((out, ids, wpe_rows))
}

/// Rows of a table view of `len` elements (must be whole rows of `c`).
fn table_rows(kernel: &str, what: &str, len: usize, c: usize) -> Result<i32> {
    if !len.is_multiple_of(c) {
        bail!("{kernel}: {what} of {len} elements is not (rows, {c})");
    }
    to_i32(kernel, "table rows", len / c)
}

/// The int arguments shared by the kernels: batch, n, seq, offset, pos0, c.
fn shape_args(kernel: &str, s: &EmbedShape) -> Result<[KernelArg; 6]> {
    Ok([
        to_i32(kernel, "batch", s.batch)?.into(),
        to_i32(kernel, "n", s.n)?.into(),
        to_i32(kernel, "seq", s.seq)?.into(),
        to_i32(kernel, "offset", s.offset)?.into(),
        to_i32(kernel, "pos0", s.pos0)?.into(),
        to_i32(kernel, "c", s.c)?.into(),
    ])
}

/// Launch shape of the forward: a thread per output element (f32), or per chunk of 8 channels of
/// an output row (bf16: one 16-byte store, see `kernels/embedding.cu`).
pub fn embedding_forward_config<A: Act>(s: &EmbedShape) -> Result<LaunchConfig> {
    let per_row = s.c.div_ceil(act_per_thread::<A>());
    Ok(LaunchConfig::linear(
        grid_for("embedding_forward", s.batch * s.n * per_row, BLOCK as usize)?,
        BLOCK,
        0,
    ))
}

/// `out[b, offset+j] = table[ids[b*n+j]] (+ wpe[pos0+offset+j])` (=, the f32 sum rounded once to
/// `A`); see `ops::embedding`. `out` holds (batch, seq, c), `table` whole rows of `c`, `ids`
/// batch*n.
pub fn embedding_forward<A: Act>(
    dev: &Device,
    out: ViewMut<'_, A>,
    table: View<'_, f32>,
    ids: View<'_, i32>,
    wpe: Option<View<'_, f32>>,
    s: EmbedShape,
) -> Result<()> {
    const K: &str = "embedding_forward";
    let (n_out, n_ids, wpe_rows) = sizes(K, &s)?;
    check_len(K, "out", out.len(), n_out)?;
    check_len(K, "ids", ids.len(), n_ids)?;
    let rows = table_rows(K, "table", table.len(), s.c)?;
    if let Some(w) = &wpe {
        check_len(K, "wpe", w.len(), wpe_rows * s.c)?;
    }
    if n_ids == 0 {
        return Ok(());
    }
    let mut out = out;
    let out = out.slice_mut(..n_out);
    let wpe = wpe.map(|w| w.slice(..wpe_rows * s.c));
    let cfg = embedding_forward_config::<A>(&s)?;
    let [batch, n, seq, offset, pos0, c] = shape_args(K, &s)?;
    let args = [
        KernelArg::from(&out),
        table.into(),
        ids.slice(..n_ids).into(),
        opt_ref(&wpe),
        batch,
        n,
        seq,
        offset,
        pos0,
        c,
        rows.into(),
    ];
    // SAFETY: args match `embedding_forward[_bf16](A*, const float*, const int*, const float*, int
    // x7)`; out holds batch*seq*c, ids batch*n, wpe (pos0+offset+n)*c; table reads are bounded by
    // `rows` (the kernel skips ids outside 0..rows).
    unsafe { dev.launch(&A::kernel(K), &cfg, &args) }
}

/// Scratch elements (i32) [`embedding_backward`] needs for `s`: a `next` link and a head flag per
/// id of the call.
pub fn embedding_backward_scratch_len(s: &EmbedShape) -> usize {
    2 * s.batch * s.n
}

/// Launch shapes of the backward: (chain pass, table pass, wpe pass).
pub fn embedding_backward_config(
    s: &EmbedShape,
) -> Result<(LaunchConfig, LaunchConfig, LaunchConfig)> {
    const K: &str = "embedding_backward";
    let count = s.batch * s.n;
    let chain = LaunchConfig::linear(grid_for(K, count, BLOCK as usize)?, BLOCK, 0);
    // a block per occurrence; its threads cover c (a warp multiple, at most 256)
    let tpb = s.c.div_ceil(32).clamp(1, BLOCK as usize / 32) * 32;
    let table = LaunchConfig {
        grid: (
            u32::try_from(count.max(1)).map_err(|_| anyhow::anyhow!("{K}: too many ids"))?,
            grid_for(K, s.c, tpb)?,
            1,
        ),
        block: (tpb as u32, 1, 1),
        dyn_smem: 0,
    };
    let wpe = LaunchConfig::linear(grid_for(K, s.n * s.c, BLOCK as usize)?, BLOCK, 0);
    Ok((chain, table, wpe))
}

/// Backward of [`embedding_forward`]: `dtable[ids[b*n+j]] += dout[b, offset+j]`,
/// `dwpe[pos0+offset+j] += dout[b, offset+j]`, both summed in (b, j) order like the CPU reference
/// (bit-identical to it). `None` skips that gradient. `scratch` needs
/// [`embedding_backward_scratch_len`] elements when `dtable` is given (contents overwritten).
#[allow(clippy::too_many_arguments)]
pub fn embedding_backward<A: Act>(
    dev: &Device,
    dtable: Option<ViewMut<'_, f32>>,
    dwpe: Option<ViewMut<'_, f32>>,
    scratch: ViewMut<'_, i32>,
    dout: View<'_, A>,
    ids: View<'_, i32>,
    s: EmbedShape,
) -> Result<()> {
    const K: &str = "embedding_backward";
    let (n_out, n_ids, wpe_rows) = sizes(K, &s)?;
    check_len(K, "dout", dout.len(), n_out)?;
    check_len(K, "ids", ids.len(), n_ids)?;
    if let Some(dw) = &dwpe {
        check_len(K, "dwpe", dw.len(), wpe_rows * s.c)?;
    }
    let rows = match &dtable {
        Some(dt) => {
            check_len(
                K,
                "scratch",
                scratch.len(),
                embedding_backward_scratch_len(&s),
            )?;
            Some(table_rows(K, "dtable", dt.len(), s.c)?)
        }
        None => None,
    };
    if n_ids == 0 {
        return Ok(());
    }
    let (chain_cfg, table_cfg, wpe_cfg) = embedding_backward_config(&s)?;
    let dout = dout.slice(..n_out);
    let ids = ids.slice(..n_ids);
    let [batch, n, seq, offset, pos0, c] = shape_args(K, &s)?;
    if let (Some(dt), Some(rows)) = (dtable, rows) {
        let mut scratch = scratch;
        let scratch = scratch.slice_mut(..2 * n_ids);
        let count = to_i32(K, "batch*n", n_ids)?;
        let args = [
            KernelArg::from(&scratch),
            ids.into(),
            count.into(),
            rows.into(),
        ];
        // SAFETY: args match `embedding_backward_chain(int*, const int*, int, int)`; scratch holds
        // 2*count ints, ids count.
        unsafe { dev.launch("embedding_backward_chain", &chain_cfg, &args)? };
        let args = [
            KernelArg::from(&dt),
            scratch.as_view().into(),
            dout.into(),
            ids.into(),
            batch,
            n,
            seq,
            offset,
            c,
        ];
        // SAFETY: args match `embedding_backward_table[_bf16](float*, const int*, const A*, const
        // int*, int x5)`; only head occurrences (ids in 0..rows, checked by the chain pass) write
        // dtable, one row each; dout holds batch*seq*c; scratch was written by the chain pass (same
        // stream).
        unsafe { dev.launch(&A::kernel("embedding_backward_table"), &table_cfg, &args)? };
    }
    if let Some(mut dw) = dwpe {
        let dw = dw.slice_mut(..wpe_rows * s.c);
        let args = [
            KernelArg::from(&dw),
            dout.into(),
            batch,
            n,
            seq,
            offset,
            pos0,
            c,
        ];
        // SAFETY: args match `embedding_backward_wpe[_bf16](float*, const A*, int x6)`; dwpe holds
        // (pos0+offset+n)*c, dout batch*seq*c.
        unsafe { dev.launch(&A::kernel("embedding_backward_wpe"), &wpe_cfg, &args)? };
    }
    Ok(())
}
