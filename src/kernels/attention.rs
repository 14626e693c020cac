//! Launch wrappers for `kernels/attention.cu` (CPU reference: `crate::ops::attention`): the fused
//! causal attention forward (saves the per-row log-sum-exp, never an L x L matrix), its backward
//! (recomputes the probabilities; dq and dk/dv from separate kernels, so no atomics and the same
//! bits on every run), and the KV-cache forward used by decoding.
//!
//! Each kernel exists for head sizes up to 32, 64 and 128 (`_hd32`, `_hd64`, `_hd128`: a lane keeps
//! 1, 2 or 4 channels of a row in registers); the wrappers pick the smallest that fits. Every view
//! handed to a kernel is sliced to exactly the elements that launch reads or writes.
//!
//! Precision (`crate::precision`): the wrappers are generic over the activation type `A` (f32 or
//! bf16) of `qkv`, `out`, `dout`, `dqkv` and the KV caches, and launch `A::kernel(name)` (`_bf16`
//! after the `_hdN` suffix). The log-sum-exp, the backward's row term D and all arithmetic stay f32;
//! bf16 outputs are rounded once when stored.
//!
//! Tensor cores ([`AttnForwardKernel`]): for bf16 with head size 64 or 128, the forward and the
//! cached forward default to `attention_{,cached_}forward_tc_hdN_bf16` (QK^T and PV on
//! `mma.m16n8k16`, P rounded to bf16 for PV as FlashAttention does); the `_using` wrappers pick a
//! kernel family explicitly. The backward likewise ([`AttnBackwardKernel`]): for bf16 at hd 64 or
//! 128, dq and dk/dv default to `attention_backward_{dq,dkv}_tc_hdN_bf16` (S, dP, dQ, dK, dV on
//! `mma.m16n8k16`, P r and dS rounded to bf16 as their A operands); the row term D stays the
//! scalar `attention_backward_rowdot`.

use anyhow::{bail, Result};

use super::{check_len, grid_for, to_i32, BLOCK};
use crate::device::{DevPtr, Device, KernelArg, LaunchConfig, View, ViewMut, MAX_DYN_SMEM};
use crate::ops::attention::AttnShape;
use crate::ops::dropout::DropoutSite;
use crate::precision::{Act, Precision};

/// The largest head size the fused kernels take.
pub const ATTN_MAX_HD: usize = 128;
/// Warps per block of the tiled kernels (`ATTN_WARPS` in the .cu file).
const WARPS: usize = 4;
/// Keys (forward, dq) or queries (dkv) per staged tile, one per lane (`ATTN_TILE`).
const TILE: usize = 32;

/// The kernel variant for head size `hd`: (name suffix, rows per warp R). The .cu file
/// instantiates the same pairs.
fn variant(kernel: &str, hd: usize) -> Result<(&'static str, usize)> {
    Ok(match hd {
        1..=32 => ("hd32", 4),
        33..=64 => ("hd64", 4),
        65..=ATTN_MAX_HD => ("hd128", 2),
        _ => bail!(
            "{kernel}: head size {hd} is not supported (the fused kernels take 1..={ATTN_MAX_HD})"
        ),
    })
}

/// Which tiled kernel [`attention_smem_bytes`] describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttnKernel {
    /// `attention_forward_hdN` and `attention_cached_forward_hdN`.
    Forward,
    /// `attention_backward_dq_hdN`.
    BackwardDq,
    /// `attention_backward_dkv_hdN`.
    BackwardDkv,
}

/// Dynamic shared memory in bytes of a tiled kernel for head size `hd` (the layout in the header
/// of `kernels/attention.cu`; `hd | 1` pads rows read one per lane).
pub fn attention_smem_bytes(which: AttnKernel, hd: usize) -> Result<u32> {
    let (_, r) = variant("attention", hd)?;
    let hs = hd | 1;
    let rows = WARPS * r;
    let floats = match which {
        AttnKernel::Forward => TILE * hs + TILE * hd + rows * hd + WARPS * TILE,
        AttnKernel::BackwardDq => 2 * TILE * hs + 2 * rows * hd + WARPS * TILE,
        AttnKernel::BackwardDkv => 2 * TILE * hs + 2 * TILE + 2 * rows * hd + 2 * WARPS * TILE,
    };
    let bytes = (floats * 4) as u32;
    debug_assert!(bytes <= MAX_DYN_SMEM, "attention smem {bytes} for hd {hd}");
    Ok(bytes)
}

/// Kernel name (for element type `A`) and launch shape of a tiled kernel over `rows` query (or
/// key) rows of each of `b * nh` (sequence, head) pairs.
fn tiled_config<A: Act>(
    kernel: &str,
    which: AttnKernel,
    s: &AttnShape,
    rows: usize,
) -> Result<(String, LaunchConfig)> {
    let hd = s.hd();
    let (suffix, r) = variant(kernel, hd)?;
    let tiles = rows.div_ceil(WARPS * r);
    let blocks = tiles
        .checked_mul(s.nh)
        .and_then(|x| x.checked_mul(s.b))
        .ok_or_else(|| anyhow::anyhow!("{kernel}: grid size overflows"))?;
    let cfg = LaunchConfig::linear(
        grid_for(kernel, blocks, 1)?,
        (WARPS * 32) as u32,
        attention_smem_bytes(which, hd)?,
    );
    Ok((A::kernel(&format!("{kernel}_{suffix}")), cfg))
}

/// Which kernels compute the forward and the cached forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttnForwardKernel {
    /// `attention_{,cached_}forward_hdN[_bf16]`: every head size and element type, f32 P.
    Scalar,
    /// `attention_{,cached_}forward_tc_hdN_bf16`: bf16 with head size 64 or 128 only; QK^T and PV
    /// on tensor cores, P rounded to bf16 for PV.
    TensorCore,
}

impl AttnForwardKernel {
    /// What [`attention_forward`] and [`attention_cached_forward`] use for element type `A` and
    /// head size `hd`: tensor cores where a kernel exists, the scalar kernels otherwise.
    pub fn default_for<A: Act>(hd: usize) -> AttnForwardKernel {
        if A::PRECISION == Precision::Bf16 && matches!(hd, 64 | 128) {
            AttnForwardKernel::TensorCore
        } else {
            AttnForwardKernel::Scalar
        }
    }
}

/// Query rows per block of the tensor-core forward (`ATTN_TC_BR`: 4 warps of 16 rows).
const TC_ROWS: usize = 64;
/// Keys per staged tile of the tensor-core forward (`ATTN_TC_BC`).
const TC_KEYS: usize = 32;

/// Dynamic shared memory in bytes of the tensor-core forward for head size `hd` (64 or 128): bf16
/// Q (64 rows), K and V (32 rows each) with rows padded to hd + 8 elements.
pub fn attention_tc_smem_bytes(hd: usize) -> Result<u32> {
    if !matches!(hd, 64 | 128) {
        bail!("attention tensor-core forward: head size {hd} is not supported (64 or 128)");
    }
    let bytes = ((TC_ROWS + 2 * TC_KEYS) * (hd + 8) * 2) as u32;
    debug_assert!(
        bytes <= MAX_DYN_SMEM,
        "attention tc smem {bytes} for hd {hd}"
    );
    Ok(bytes)
}

/// Kernel name and launch shape of a forward (`kernel` = "attention_forward" or
/// "attention_cached_forward") over `rows` query rows of each (sequence, head), for element type
/// `A` and kernel family `which`.
fn forward_config<A: Act>(
    kernel: &str,
    which: AttnForwardKernel,
    s: &AttnShape,
    rows: usize,
) -> Result<(String, LaunchConfig)> {
    match which {
        AttnForwardKernel::Scalar => tiled_config::<A>(kernel, AttnKernel::Forward, s, rows),
        AttnForwardKernel::TensorCore => {
            let hd = s.hd();
            if A::PRECISION != Precision::Bf16 {
                bail!(
                    "{kernel}: the tensor-core kernels take bf16 activations, not {}",
                    A::PRECISION
                );
            }
            let smem = attention_tc_smem_bytes(hd).map_err(|e| anyhow::anyhow!("{kernel}: {e}"))?;
            let blocks = rows
                .div_ceil(TC_ROWS)
                .checked_mul(s.nh)
                .and_then(|x| x.checked_mul(s.b))
                .ok_or_else(|| anyhow::anyhow!("{kernel}: grid size overflows"))?;
            let cfg = LaunchConfig::linear(grid_for(kernel, blocks, 1)?, (WARPS * 32) as u32, smem);
            Ok((A::kernel(&format!("{kernel}_tc_hd{hd}")), cfg))
        }
    }
}

/// Which kernels compute dq and dk/dv in [`attention_backward`] (the row term D is always
/// `attention_backward_rowdot`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttnBackwardKernel {
    /// `attention_backward_{dq,dkv}_hdN[_bf16]`: every head size and element type, f32 P and dS.
    Scalar,
    /// `attention_backward_{dq,dkv}_tc_hdN_bf16`: bf16 with head size 64 or 128 only; every
    /// product on tensor cores, P r and dS rounded to bf16 as mma operands.
    TensorCore,
}

impl AttnBackwardKernel {
    /// What [`attention_backward`] uses for element type `A` and head size `hd`: tensor cores
    /// where a kernel exists (the same rule as [`AttnForwardKernel::default_for`]), the scalar
    /// kernels otherwise.
    pub fn default_for<A: Act>(hd: usize) -> AttnBackwardKernel {
        match AttnForwardKernel::default_for::<A>(hd) {
            AttnForwardKernel::TensorCore => AttnBackwardKernel::TensorCore,
            AttnForwardKernel::Scalar => AttnBackwardKernel::Scalar,
        }
    }
}

/// Rows per block of the tensor-core backward (`ATTN_TCB_BM`: 4 warps of 16 keys for dkv, of 16
/// queries for dq).
const TCB_ROWS: usize = 64;

/// Rows of the other side per staged tile of the tensor-core backward (`AttnTcb<HD>::BN`): queries
/// for dkv, keys for dq; 16 at hd 128 keeps shared memory under 48 KiB.
fn tc_backward_tile(hd: usize) -> usize {
    if hd == 64 {
        32
    } else {
        16
    }
}

/// Dynamic shared memory in bytes of a tensor-core kernel for head size `hd` (64 or 128), rows of
/// bf16 padded to hd + 8 elements: the forward as [`attention_tc_smem_bytes`]; dq: Q and dout (64
/// rows each), K and V (a tile each); dkv: K and V (64 rows each), Q and dout (a tile each) and the
/// tile's lse and D (f32). hd 64: 27 KiB; hd 128: 42.5 KiB.
pub fn attention_tc_backward_smem_bytes(which: AttnKernel, hd: usize) -> Result<u32> {
    if which == AttnKernel::Forward {
        return attention_tc_smem_bytes(hd);
    }
    if !matches!(hd, 64 | 128) {
        bail!("attention tensor-core backward: head size {hd} is not supported (64 or 128)");
    }
    let tile = tc_backward_tile(hd);
    let rows = 2 * TCB_ROWS + 2 * tile;
    let bytes = match which {
        AttnKernel::Forward => unreachable!("returned above"),
        AttnKernel::BackwardDq => rows * (hd + 8) * 2,
        AttnKernel::BackwardDkv => rows * (hd + 8) * 2 + 2 * tile * 4,
    } as u32;
    debug_assert!(
        bytes <= MAX_DYN_SMEM,
        "attention tc backward smem {bytes} for hd {hd}"
    );
    Ok(bytes)
}

/// Kernel name and launch shape of a backward kernel (`kernel` = "attention_backward_dq" or
/// "attention_backward_dkv", `which` the matching [`AttnKernel`]) for element type `A` and kernel
/// family `family`.
fn backward_config<A: Act>(
    kernel: &str,
    which: AttnKernel,
    family: AttnBackwardKernel,
    s: &AttnShape,
) -> Result<(String, LaunchConfig)> {
    match family {
        AttnBackwardKernel::Scalar => tiled_config::<A>(kernel, which, s, s.l),
        AttnBackwardKernel::TensorCore => {
            let hd = s.hd();
            if A::PRECISION != Precision::Bf16 {
                bail!(
                    "{kernel}: the tensor-core kernels take bf16 activations, not {}",
                    A::PRECISION
                );
            }
            let smem = attention_tc_backward_smem_bytes(which, hd)
                .map_err(|e| anyhow::anyhow!("{kernel}: {e}"))?;
            let blocks =
                s.l.div_ceil(TCB_ROWS)
                    .checked_mul(s.nh)
                    .and_then(|x| x.checked_mul(s.b))
                    .ok_or_else(|| anyhow::anyhow!("{kernel}: grid size overflows"))?;
            let cfg = LaunchConfig::linear(grid_for(kernel, blocks, 1)?, (WARPS * 32) as u32, smem);
            Ok((A::kernel(&format!("{kernel}_tc_hd{hd}")), cfg))
        }
    }
}

/// Kernel name and launch shape of the forward for activation type `A` (the default kernel).
pub fn attention_forward_config<A: Act>(s: &AttnShape) -> Result<(String, LaunchConfig)> {
    let which = AttnForwardKernel::default_for::<A>(s.hd());
    forward_config::<A>("attention_forward", which, s, s.l)
}

/// Scratch elements [`attention_backward`] needs: the row term D, (B, NH, L).
pub fn attention_backward_scratch_len(s: AttnShape) -> Result<usize> {
    s.b.checked_mul(s.nh)
        .and_then(|x| x.checked_mul(s.l))
        .ok_or_else(|| anyhow::anyhow!("attention_backward: B*NH*L overflows"))
}

/// Element counts of the full-sequence tensors: (qkv = B*L*3C, out = B*L*C, lse = B*NH*L,
/// mask = B*L), after checking the shape.
fn full_sizes(kernel: &str, s: &AttnShape) -> Result<(usize, usize, usize, usize)> {
    if s.nh == 0 || s.c == 0 || !s.c.is_multiple_of(s.nh) {
        bail!(
            "{kernel}: c={} must be a positive multiple of nh={}",
            s.c,
            s.nh
        );
    }
    variant(kernel, s.hd())?;
    let ovf = || anyhow::anyhow!("{kernel}: sizes of {s:?} overflow");
    let bl = s.b.checked_mul(s.l).ok_or_else(ovf)?;
    let out = bl.checked_mul(s.c).ok_or_else(ovf)?;
    let qkv = out.checked_mul(3).ok_or_else(ovf)?;
    let lse = bl.checked_mul(s.nh).ok_or_else(ovf)?;
    for (what, v) in [
        ("b", s.b),
        ("l", s.l),
        ("c", s.c),
        ("nh", s.nh),
        ("3c", 3 * s.c),
    ] {
        to_i32(kernel, what, v)?;
    }
    Ok((qkv, out, lse, bl))
}

/// The dropout arguments of a kernel: (on, seed, step, step_at, site, p) (see
/// `dropout::site_args`; all zero, NULL and off without dropout).
fn dropout_args(dev: &Device, kernel: &str, d: Option<DropoutSite>) -> Result<[KernelArg; 6]> {
    Ok(match d {
        None => [
            0i32.into(),
            0u64.into(),
            0u64.into(),
            KernelArg::Ptr(crate::device::DevPtr::NULL),
            0u32.into(),
            0.0f32.into(),
        ],
        Some(d) => {
            let [seed, step, step_at, site, p] = super::dropout::site_args(dev, kernel, d)?;
            [1i32.into(), seed, step, step_at, site, p]
        }
    })
}

fn mask_arg(kernel: &str, key_mask: Option<View<'_, i32>>, need: usize) -> Result<KernelArg> {
    Ok(match key_mask {
        None => KernelArg::Ptr(DevPtr::NULL),
        Some(m) => {
            check_len(kernel, "key_mask", m.len(), need)?;
            m.slice(..need).into()
        }
    })
}

/// Fused causal attention forward: `out` (B, L, C) (=) and `lse` (B, NH, L) (=, the per-row
/// log-sum-exp; +inf for a query with no visible key) from `qkv` (B, L, 3C), with the optional
/// key-padding mask (B, L) and attention dropout (the reference's element index (b, h, t, j)).
/// `out` and `qkv` are activations (`A`; a bf16 `out` is the f32 result rounded once), `lse` f32.
/// Runs [`AttnForwardKernel::default_for`] (tensor cores for bf16 with hd 64 or 128).
pub fn attention_forward<A: Act>(
    dev: &Device,
    out: ViewMut<'_, A>,
    lse: ViewMut<'_, f32>,
    qkv: View<'_, A>,
    key_mask: Option<View<'_, i32>>,
    dropout: Option<DropoutSite>,
    s: AttnShape,
) -> Result<()> {
    let which = AttnForwardKernel::default_for::<A>(s.hd());
    attention_forward_using(dev, which, out, lse, qkv, key_mask, dropout, s)
}

/// [`attention_forward`] with the kernel family chosen by the caller (an error where `which` has no
/// kernel for `A` and this head size).
#[allow(clippy::too_many_arguments)]
pub fn attention_forward_using<A: Act>(
    dev: &Device,
    which: AttnForwardKernel,
    mut out: ViewMut<'_, A>,
    mut lse: ViewMut<'_, f32>,
    qkv: View<'_, A>,
    key_mask: Option<View<'_, i32>>,
    dropout: Option<DropoutSite>,
    s: AttnShape,
) -> Result<()> {
    const K: &str = "attention_forward";
    let (n_qkv, n_out, n_lse, n_mask) = full_sizes(K, &s)?;
    check_len(K, "out", out.len(), n_out)?;
    check_len(K, "lse", lse.len(), n_lse)?;
    check_len(K, "qkv", qkv.len(), n_qkv)?;
    let mask = mask_arg(K, key_mask, n_mask)?;
    let [d_on, d_seed, d_step, d_step_at, d_site, d_p] = dropout_args(dev, K, dropout)?;
    let (name, cfg) = forward_config::<A>(K, which, &s, s.l)?;
    if n_out == 0 {
        return Ok(());
    }
    let (out, lse) = (out.slice_mut(..n_out), lse.slice_mut(..n_lse));
    let args = [
        KernelArg::from(&out),
        KernelArg::from(&lse),
        qkv.slice(..n_qkv).into(),
        mask,
        to_i32(K, "l", s.l)?.into(),
        to_i32(K, "c", s.c)?.into(),
        to_i32(K, "nh", s.nh)?.into(),
        d_on,
        d_seed,
        d_step,
        d_step_at,
        d_site,
        d_p,
    ];
    // SAFETY: args match `attention_forward_[tc_]hdN[_bf16](A*, float*, const A*, const int*, int,
    // int, int, int, unsigned long long, unsigned long long, const unsigned long long*, unsigned
    // int, float)` with A the element
    // type of out and qkv (float or __nv_bfloat16, the name's suffix); out holds B*L*C,
    // lse B*NH*L, qkv B*L*3C and the mask B*L elements (or is NULL), as the grid covers B*NH
    // (sequence, head) pairs of L rows; dyn_smem is the kernel's layout for this hd.
    unsafe { dev.launch(&name, &cfg, &args) }
}

/// Fused causal attention backward: `dqkv` (B, L, 3C) (=) from `dout` (B, L, C), the forward's
/// `qkv`, `out` and `lse`, the same key mask and dropout site. `scratch` needs
/// [`attention_backward_scratch_len`] elements (overwritten). Three launches: D = rowsum(dout *
/// out), then dq, then dk/dv; each output element is summed by one thread in a fixed order, so
/// `dqkv` is bit-reproducible. `dqkv`, `dout`, `qkv`, `out` are `A`, `lse` and `scratch` f32; for
/// bf16, D is dout . out of the stored (rounded) `out`, and dqkv is rounded once when stored.
/// Runs [`AttnBackwardKernel::default_for`] (tensor cores for bf16 with hd 64 or 128).
#[allow(clippy::too_many_arguments)]
pub fn attention_backward<A: Act>(
    dev: &Device,
    dqkv: ViewMut<'_, A>,
    dout: View<'_, A>,
    qkv: View<'_, A>,
    out: View<'_, A>,
    lse: View<'_, f32>,
    key_mask: Option<View<'_, i32>>,
    dropout: Option<DropoutSite>,
    s: AttnShape,
    scratch: ViewMut<'_, f32>,
) -> Result<()> {
    let which = AttnBackwardKernel::default_for::<A>(s.hd());
    attention_backward_using(
        dev, which, dqkv, dout, qkv, out, lse, key_mask, dropout, s, scratch,
    )
}

/// [`attention_backward`] with the dq and dk/dv kernel family chosen by the caller (an error where
/// `which` has no kernel for `A` and this head size).
#[allow(clippy::too_many_arguments)]
pub fn attention_backward_using<A: Act>(
    dev: &Device,
    which: AttnBackwardKernel,
    mut dqkv: ViewMut<'_, A>,
    dout: View<'_, A>,
    qkv: View<'_, A>,
    out: View<'_, A>,
    lse: View<'_, f32>,
    key_mask: Option<View<'_, i32>>,
    dropout: Option<DropoutSite>,
    s: AttnShape,
    mut scratch: ViewMut<'_, f32>,
) -> Result<()> {
    const K: &str = "attention_backward";
    let (n_qkv, n_out, n_lse, n_mask) = full_sizes(K, &s)?;
    check_len(K, "dqkv", dqkv.len(), n_qkv)?;
    check_len(K, "dout", dout.len(), n_out)?;
    check_len(K, "qkv", qkv.len(), n_qkv)?;
    check_len(K, "out", out.len(), n_out)?;
    check_len(K, "lse", lse.len(), n_lse)?;
    check_len(
        K,
        "scratch",
        scratch.len(),
        attention_backward_scratch_len(s)?,
    )?;
    let mask = mask_arg(K, key_mask, n_mask)?;
    let [d_on, d_seed, d_step, d_step_at, d_site, d_p] = dropout_args(dev, K, dropout)?;
    let launches = [
        backward_config::<A>("attention_backward_dq", AttnKernel::BackwardDq, which, &s)?,
        backward_config::<A>("attention_backward_dkv", AttnKernel::BackwardDkv, which, &s)?,
    ];
    if n_out == 0 {
        return Ok(());
    }
    let (l, c, nh) = (
        to_i32(K, "l", s.l)?,
        to_i32(K, "c", s.c)?,
        to_i32(K, "nh", s.nh)?,
    );
    let (dqkv, d) = (dqkv.slice_mut(..n_qkv), scratch.slice_mut(..n_lse));
    let (dout, qkv, out, lse) = (
        dout.slice(..n_out),
        qkv.slice(..n_qkv),
        out.slice(..n_out),
        lse.slice(..n_lse),
    );

    let rows_per_block = BLOCK as usize / 32;
    let cfg = LaunchConfig::linear(grid_for(K, n_lse, rows_per_block)?, BLOCK, 0);
    let args = [
        KernelArg::from(&d),
        dout.into(),
        out.into(),
        to_i32(K, "b", s.b)?.into(),
        l.into(),
        c.into(),
        nh.into(),
    ];
    // SAFETY: args match `attention_backward_rowdot[_bf16](float*, const A*, const A*, int, int,
    // int, int)`; D holds B*NH*L (one warp per row, rows past the end return), dout/out B*L*C.
    unsafe { dev.launch(&A::kernel("attention_backward_rowdot"), &cfg, &args)? };

    for (name, cfg) in launches {
        let args = [
            KernelArg::from(&dqkv),
            dout.into(),
            qkv.into(),
            lse.into(),
            d.as_view().into(),
            mask,
            l.into(),
            c.into(),
            nh.into(),
            d_on,
            d_seed,
            d_step,
            d_step_at,
            d_site,
            d_p,
        ];
        // SAFETY: args match `attention_backward_{dq,dkv}_[tc_]hdN[_bf16](A*, const A* x2, const float*
        // x2, const int*, int, int, int, int, unsigned long long, unsigned long long, const unsigned
        // long long* (NULL or the step scalar), unsigned int, float)` with A the element type of dqkv, dout and qkv; dqkv
        // and qkv hold B*L*3C, dout B*L*C, lse and D B*NH*L (D written by the launch above, in
        // stream order), the mask B*L or NULL. The dq kernel writes only the q thirds of dqkv and
        // the dkv kernel only the k and v thirds.
        unsafe { dev.launch(&name, &cfg, &args)? };
    }
    Ok(())
}

/// Decoding: appends the k and v of `n` new positions (`qkv` (B, n, 3C)) at `start..start+n` to
/// `k_cache`, `v_cache` (B, NH, lmax, hd) (=), then writes `out` (B, n, C) (=): query `i` attends
/// to cached keys `0..=start+i`, no mask, no dropout. Same row routine as
/// [`attention_forward`] (the same [`AttnForwardKernel::default_for`]), so the same bits as the
/// full computation. `s.l` is not used.
#[allow(clippy::too_many_arguments)]
pub fn attention_cached_forward<A: Act>(
    dev: &Device,
    out: ViewMut<'_, A>,
    qkv: View<'_, A>,
    k_cache: ViewMut<'_, A>,
    v_cache: ViewMut<'_, A>,
    start: usize,
    n: usize,
    lmax: usize,
    s: AttnShape,
) -> Result<()> {
    let which = AttnForwardKernel::default_for::<A>(s.hd());
    attention_cached_forward_using(dev, which, out, qkv, k_cache, v_cache, start, n, lmax, s)
}

/// [`attention_cached_forward`] with the kernel family chosen by the caller: the same bits as
/// [`attention_forward_using`] with the same `which`.
#[allow(clippy::too_many_arguments)]
pub fn attention_cached_forward_using<A: Act>(
    dev: &Device,
    which: AttnForwardKernel,
    mut out: ViewMut<'_, A>,
    qkv: View<'_, A>,
    mut k_cache: ViewMut<'_, A>,
    mut v_cache: ViewMut<'_, A>,
    start: usize,
    n: usize,
    lmax: usize,
    s: AttnShape,
) -> Result<()> {
    const K: &str = "attention_cached_forward";
    let shape = AttnShape { l: n, ..s };
    let (n_qkv, n_out, _, _) = full_sizes(K, &shape)?;
    let end = start.checked_add(n).filter(|&e| e <= lmax).ok_or_else(|| {
        anyhow::anyhow!("{K}: positions {start}+{n} exceed the cache length {lmax}")
    })?;
    let n_cache =
        s.b.checked_mul(s.nh)
            .and_then(|x| x.checked_mul(lmax))
            .and_then(|x| x.checked_mul(s.hd()))
            .ok_or_else(|| anyhow::anyhow!("{K}: cache size overflows"))?;
    check_len(K, "out", out.len(), n_out)?;
    check_len(K, "qkv", qkv.len(), n_qkv)?;
    check_len(K, "k_cache", k_cache.len(), n_cache)?;
    check_len(K, "v_cache", v_cache.len(), n_cache)?;
    to_i32(K, "start+n", end)?;
    to_i32(K, "lmax", lmax)?;
    let (name, cfg_fwd) = forward_config::<A>(K, which, &shape, n)?;
    if n_out == 0 {
        return Ok(());
    }
    let (b, c, nh) = (
        to_i32(K, "b", s.b)?,
        to_i32(K, "c", s.c)?,
        to_i32(K, "nh", s.nh)?,
    );
    let (n_i, start_i, lmax_i) = (
        to_i32(K, "n", n)?,
        to_i32(K, "start", start)?,
        to_i32(K, "lmax", lmax)?,
    );
    let qkv = qkv.slice(..n_qkv);
    let (kc, vc) = (k_cache.slice_mut(..n_cache), v_cache.slice_mut(..n_cache));
    let out = out.slice_mut(..n_out);

    let appended = s.b * s.nh * n * s.hd();
    let cfg = LaunchConfig::linear(grid_for(K, appended, BLOCK as usize)?, BLOCK, 0);
    let args = [
        KernelArg::from(&kc),
        KernelArg::from(&vc),
        qkv.into(),
        b.into(),
        n_i.into(),
        c.into(),
        nh.into(),
        start_i.into(),
        lmax_i.into(),
    ];
    // SAFETY: args match `attention_cache_append[_bf16](A*, A*, const A*, int x6)`; one
    // thread per appended element (B*NH*n*hd), writing rows start..start+n <= lmax of caches that
    // hold B*NH*lmax*hd, reading qkv (B*n*3C).
    unsafe { dev.launch(&A::kernel("attention_cache_append"), &cfg, &args)? };

    let cfg = cfg_fwd;
    let args = [
        KernelArg::from(&out),
        qkv.into(),
        kc.as_view().into(),
        vc.as_view().into(),
        n_i.into(),
        c.into(),
        nh.into(),
        start_i.into(),
        lmax_i.into(),
    ];
    // SAFETY: args match `attention_cached_forward_[tc_]hdN[_bf16](A*, const A* x3, int x5)`; out
    // holds B*n*C, qkv B*n*3C, the caches B*NH*lmax*hd of which rows < start+n are read (written
    // by the append above, in stream order).
    unsafe { dev.launch(&name, &cfg, &args) }
}
