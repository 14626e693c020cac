//! The dense layer `y = x W (+ b)` and its backward on a [`Device`] (CPU reference:
//! `crate::ops::matmul`, same [`WeightLayout`]s, same `=`/`+=` conventions), generic over the
//! activation type `A: Act` (f32 or bf16; `src/precision.rs`):
//! - f32: the GEMMs through [`Device::sgemm`] (cuBLAS sgemm without TF32 on cuda, the CPU GEMM
//!   with cuBLAS semantics on emu), the bias through `kernels/matmul.cu` (an add after the GEMM);
//! - bf16: `out`, `inp`, `weight` (the bf16 copy of the f32 master), `dout` and `dinp` are bf16,
//!   the GEMMs go through [`Device::gemm_bf16`] (f32 compute; the forward's f32 bias added in the
//!   GEMM's epilogue before `out` is rounded once; `dinp` rounded once; `dweight` accumulated in
//!   f32 with beta = 1);
//! - both: `bias`, `dweight`, `dbias` and the scratch are f32, and `dbias` is a deterministic
//!   two-pass column reduction (f32 sums; the bf16 pass 1 widens `dout`).
//!
//! Row-major `(r, c)` is column-major `(c, r)`, so every product is written for cuBLAS transposed:
//! `out^T (cout x rows) = W' (cout x cin) * inp^T (cin x rows)` where `W'` is `W` as stored
//! (InOut: (cin, cout) row-major = (cout x cin) column-major, op N) or transposed (OutIn).

use anyhow::{bail, Result};

use super::{check_len, grid_for, mul, to_i32, BLOCK};
use crate::device::{Device, GemmOp, KernelArg, LaunchConfig, SgemmConfig, View, ViewMut};
use crate::ops::matmul::WeightLayout;
use crate::ops::shape::MatmulShape;
use crate::precision::{Act, Precision};

/// Rows per partial sum of the bias gradient (`MM_BIAS_ROWS`): a constant, so the summation order
/// depends on (rows, cout) only.
pub const MM_BIAS_ROWS: usize = 64;

/// Element counts (inp, out, weight), checked against the kernels' int range.
fn sizes(kernel: &str, rows: usize, cin: usize, cout: usize) -> Result<(usize, usize, usize)> {
    let ni = mul(kernel, "rows*cin", rows, cin)?;
    let no = mul(kernel, "rows*cout", rows, cout)?;
    let nw = mul(kernel, "cin*cout", cin, cout)?;
    for (what, v) in [("rows*cin", ni), ("rows*cout", no), ("cin*cout", nw)] {
        to_i32(kernel, what, v)?;
    }
    Ok((ni, no, nw))
}

/// The forward GEMM `out = inp W` (beta 0) as a cuBLAS call.
pub fn matmul_forward_gemm(
    rows: usize,
    cin: usize,
    cout: usize,
    layout: WeightLayout,
) -> SgemmConfig {
    let (op_w, ldw) = match layout {
        WeightLayout::InOut => (GemmOp::N, cout),
        WeightLayout::OutIn => (GemmOp::T, cin),
    };
    SgemmConfig::new(op_w, GemmOp::N, cout, rows, cin, 1.0, ldw, cin, 0.0, cout)
}

/// The input-gradient GEMM `dinp = dout W^T` (beta 0).
pub fn matmul_backward_dinp_gemm(
    rows: usize,
    cin: usize,
    cout: usize,
    layout: WeightLayout,
) -> SgemmConfig {
    let (op_w, ldw) = match layout {
        WeightLayout::InOut => (GemmOp::T, cout),
        WeightLayout::OutIn => (GemmOp::N, cin),
    };
    SgemmConfig::new(op_w, GemmOp::N, cin, rows, cout, 1.0, ldw, cout, 0.0, cin)
}

/// The weight-gradient GEMM `dW += x^T dout` (InOut) or `dout^T x` (OutIn) (beta 1). Returns the
/// config and whether A is `dout` (InOut) or `inp` (OutIn).
pub fn matmul_backward_dweight_gemm(
    rows: usize,
    cin: usize,
    cout: usize,
    layout: WeightLayout,
) -> (SgemmConfig, bool) {
    match layout {
        // dW (cin, cout) row-major = (cout x cin) col-major = dout^T (cout x rows) * inp (rows x cin)
        WeightLayout::InOut => (
            SgemmConfig::new(
                GemmOp::N,
                GemmOp::T,
                cout,
                cin,
                rows,
                1.0,
                cout,
                cin,
                1.0,
                cout,
            ),
            true,
        ),
        // dW (cout, cin) row-major = (cin x cout) col-major = inp^T (cin x rows) * dout (rows x cout)
        WeightLayout::OutIn => (
            SgemmConfig::new(
                GemmOp::N,
                GemmOp::T,
                cin,
                cout,
                rows,
                1.0,
                cin,
                cout,
                1.0,
                cin,
            ),
            false,
        ),
    }
}

/// One GEMM of the layer for activations `A`: f32 through [`Device::sgemm`] (no bias: the f32
/// path adds it with `matmul_forward_bias`), bf16 through [`Device::gemm_bf16`] (bias in the
/// epilogue). `C` is `A` (out, dinp) or f32 (dweight).
fn gemm_act<A: Act, C: Act>(
    dev: &Device,
    cfg: &SgemmConfig,
    a: View<'_, A>,
    b: View<'_, A>,
    c: ViewMut<'_, C>,
    bias: Option<View<'_, f32>>,
) -> Result<()> {
    const WHY: &str = "matmul: element type dispatch (A = f32 implies f32 views)";
    match A::PRECISION {
        Precision::Fp32 => {
            if bias.is_some() {
                bail!("matmul: the f32 GEMM takes no bias (matmul_forward_bias adds it)");
            }
            let a = a.downcast::<f32>().ok_or_else(|| anyhow::anyhow!(WHY))?;
            let b = b.downcast::<f32>().ok_or_else(|| anyhow::anyhow!(WHY))?;
            let c = c.downcast::<f32>().ok_or_else(|| anyhow::anyhow!(WHY))?;
            dev.sgemm(cfg, a, b, c)
        }
        Precision::Bf16 => {
            let a = a
                .downcast::<half::bf16>()
                .ok_or_else(|| anyhow::anyhow!(WHY))?;
            let b = b
                .downcast::<half::bf16>()
                .ok_or_else(|| anyhow::anyhow!(WHY))?;
            dev.gemm_bf16(cfg, a, b, c, bias)
        }
    }
}

/// `out = inp W (+ bias)` (=): `out` (rows, cout), `inp` (rows, cin), `weight` per `layout`, all
/// of activation type `A`; `bias` f32. bf16: the bias is added in f32 before `out` is rounded.
#[allow(clippy::too_many_arguments)]
pub fn matmul_forward<A: Act>(
    dev: &Device,
    out: ViewMut<'_, A>,
    inp: View<'_, A>,
    weight: View<'_, A>,
    bias: Option<View<'_, f32>>,
    rows: usize,
    cin: usize,
    cout: usize,
    layout: WeightLayout,
) -> Result<()> {
    const K: &str = "matmul_forward";
    let (ni, no, nw) = sizes(K, rows, cin, cout)?;
    let shape = MatmulShape {
        rows,
        cin,
        cout,
        layout,
    };
    let bias_len = bias.as_ref().map(|b| b.len());
    shape.check_forward(K, out.len(), inp.len(), weight.len(), bias_len)?;
    if no == 0 {
        return Ok(());
    }
    let mut out = out;
    let cfg = matmul_forward_gemm(rows, cin, cout, layout);
    if A::PRECISION == Precision::Bf16 {
        let bias = bias.map(|b| b.slice(..cout));
        return gemm_act(
            dev,
            &cfg,
            weight.slice(..nw),
            inp.slice(..ni),
            out.slice_mut(..no),
            bias,
        );
    }
    gemm_act(
        dev,
        &cfg,
        weight.slice(..nw),
        inp.slice(..ni),
        out.slice_mut(..no),
        None,
    )?;
    if let Some(b) = bias {
        let out = out
            .downcast::<f32>()
            .ok_or_else(|| anyhow::anyhow!("{K}: f32 path with non-f32 out"))?;
        let mut out = out;
        let args = [
            KernelArg::from(&out.slice_mut(..no)),
            b.slice(..cout).into(),
            to_i32(K, "rows", rows)?.into(),
            to_i32(K, "cout", cout)?.into(),
        ];
        let lc = LaunchConfig::linear(grid_for(K, no, BLOCK as usize)?, BLOCK, 0);
        // SAFETY: args match `matmul_forward_bias(float*, const float*, int, int)`; out holds
        // rows*cout (written by the GEMM before, same stream), bias cout.
        unsafe { dev.launch("matmul_forward_bias", &lc, &args)? };
    }
    Ok(())
}

/// Launch shapes of the bias gradient: (pass 1, pass 2, number of row chunks).
pub fn matmul_backward_bias_config(
    rows: usize,
    cout: usize,
) -> Result<(LaunchConfig, LaunchConfig, usize)> {
    const K: &str = "matmul_backward_bias";
    let chunks = rows.div_ceil(MM_BIAS_ROWS).max(1);
    if chunks > 65535 {
        bail!("{K}: {rows} rows need {chunks} row chunks (grid y max 65535)");
    }
    let gx = grid_for(K, cout, BLOCK as usize)?;
    let pass1 = LaunchConfig {
        grid: (gx, chunks as u32, 1),
        block: (BLOCK, 1, 1),
        dyn_smem: 0,
    };
    Ok((pass1, LaunchConfig::linear(gx, BLOCK, 0), chunks))
}

/// Scratch elements (f32) the bias gradient needs for (rows, cout) (contents overwritten).
pub fn matmul_backward_scratch_len(rows: usize, cout: usize) -> usize {
    rows.div_ceil(MM_BIAS_ROWS).max(1) * cout
}

/// `dbias[o] += sum_r dout[r, o]` (two passes, fixed order, f32 sums of the widened `dout`; see
/// `kernels/matmul.cu`).
pub fn matmul_backward_bias<A: Act>(
    dev: &Device,
    dbias: ViewMut<'_, f32>,
    scratch: ViewMut<'_, f32>,
    dout: View<'_, A>,
    rows: usize,
    cout: usize,
) -> Result<()> {
    const K: &str = "matmul_backward_bias";
    let no = mul(K, "rows*cout", rows, cout)?;
    to_i32(K, "rows*cout", no)?;
    check_len(K, "dbias", dbias.len(), cout)?;
    check_len(K, "dout", dout.len(), no)?;
    let (pass1, pass2, chunks) = matmul_backward_bias_config(rows, cout)?;
    check_len(K, "scratch", scratch.len(), chunks * cout)?;
    if cout == 0 || rows == 0 {
        return Ok(());
    }
    let (mut dbias, mut scratch) = (dbias, scratch);
    let scratch = scratch.slice_mut(..chunks * cout);
    let (rows_i, cout_i) = (to_i32(K, "rows", rows)?, to_i32(K, "cout", cout)?);
    let args = [
        KernelArg::from(&scratch),
        dout.slice(..no).into(),
        rows_i.into(),
        cout_i.into(),
        (MM_BIAS_ROWS as i32).into(),
    ];
    // SAFETY: args match `matmul_backward_bias[_bf16](float*, const A*, int, int, int)`; dout
    // holds rows*cout, scratch chunks*cout (one row per grid-y block).
    unsafe { dev.launch(&A::kernel(K), &pass1, &args)? };
    let args = [
        KernelArg::from(&dbias.slice_mut(..cout)),
        scratch.as_view().into(),
        (chunks as i32).into(),
        cout_i.into(),
    ];
    // SAFETY: args match `matmul_backward_bias_reduce(float*, const float*, int, int)`; dbias holds
    // cout, scratch chunks*cout written by pass 1 (same stream).
    unsafe { dev.launch("matmul_backward_bias_reduce", &pass2, &args) }
}

/// Backward of [`matmul_forward`]: `dinp = dout W^T` (=), `dweight +=` (`x^T dout` stored per
/// `layout`), `dbias += sum_rows dout`; `None` skips that gradient. `dinp`, `dout`, `inp`,
/// `weight` are activations (`A`; bf16: `dinp` rounded once), `dweight`, `dbias`, `scratch` f32
/// (bf16: `dweight` accumulates the f32 product of the bf16 inputs, beta = 1). `scratch` needs
/// [`matmul_backward_scratch_len`] elements when `dbias` is given (it may be empty otherwise).
#[allow(clippy::too_many_arguments)]
pub fn matmul_backward<A: Act>(
    dev: &Device,
    dinp: Option<ViewMut<'_, A>>,
    dweight: Option<ViewMut<'_, f32>>,
    dbias: Option<ViewMut<'_, f32>>,
    scratch: ViewMut<'_, f32>,
    dout: View<'_, A>,
    inp: View<'_, A>,
    weight: View<'_, A>,
    rows: usize,
    cin: usize,
    cout: usize,
    layout: WeightLayout,
) -> Result<()> {
    const K: &str = "matmul_backward";
    let (ni, no, nw) = sizes(K, rows, cin, cout)?;
    let shape = MatmulShape {
        rows,
        cin,
        cout,
        layout,
    };
    let (ld, lw, lb) = (
        dinp.as_ref().map(|v| v.len()),
        dweight.as_ref().map(|v| v.len()),
        dbias.as_ref().map(|v| v.len()),
    );
    shape.check_backward(K, ld, lw, lb, dout.len(), inp.len(), weight.len())?;
    if dbias.is_some() {
        check_len(
            K,
            "scratch",
            scratch.len(),
            matmul_backward_scratch_len(rows, cout),
        )?;
    }
    let (dout, inp, weight) = (dout.slice(..no), inp.slice(..ni), weight.slice(..nw));
    if let Some(mut d) = dinp {
        if ni > 0 {
            let cfg = matmul_backward_dinp_gemm(rows, cin, cout, layout);
            gemm_act(dev, &cfg, weight, dout, d.slice_mut(..ni), None)?;
        }
    }
    if let Some(mut d) = dweight {
        if nw > 0 {
            let (cfg, a_is_dout) = matmul_backward_dweight_gemm(rows, cin, cout, layout);
            let (a, b) = if a_is_dout { (dout, inp) } else { (inp, dout) };
            gemm_act(dev, &cfg, a, b, d.slice_mut(..nw), None)?;
        }
    }
    if let Some(d) = dbias {
        matmul_backward_bias(dev, d, scratch, dout, rows, cout)?;
    }
    Ok(())
}
