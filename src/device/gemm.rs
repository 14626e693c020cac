//! fp32 GEMM with cuBLAS semantics, for both devices.
//!
//! [`SgemmConfig`] describes one `cublasSgemm` / `cublasSgemmStridedBatched` call exactly as cuBLAS
//! reads it: column-major storage, `C = alpha * op(A) * op(B) + beta * C` with `op(A)` `m x k`,
//! `op(B)` `k x n`, `C` `m x n`, leading dimensions `lda/ldb/ldc`, and for batches `batch` problems
//! whose matrices start `stride_a/stride_b/stride_c` elements apart. The CUDA device hands the same
//! config to cuBLAS; the emulated device (and anyone else who wants it) runs [`sgemm_host`], a CPU
//! GEMM (the `gemm` crate) that follows the same conventions, including cuBLAS's special cases:
//! `beta == 0` never reads C (NaN/garbage in C is overwritten), and `k == 0` or `alpha == 0`
//! scales C by beta without touching A or B.
//!
//! The bf16 GEMM of mixed precision ([`gemm_bf16_host`], `Device::gemm_bf16`) takes the same
//! config with bf16 A and B, a C of bf16 or f32 (an [`Act`] type) and an optional f32 bias:
//! `D = alpha * op(A) op(B) + beta * C + bias[i]` (bias indexed by the row `i < m` of C, i.e. by
//! the output feature of a row-major linear layer), products and sums in f32, D rounded once when
//! C is bf16. Every product of two bf16 values is exact in f32 (8 + 8 significant bits), so
//! widening A and B and running the f32 GEMM computes the same sums a bf16 tensor-core GEMM with
//! f32 accumulation does, up to summation order.
//!
//! A row-major `rows x cols` matrix is a column-major `cols x rows` matrix, so llm.c's
//! `out(B*T, OC) = inp(B*T, C) @ W(OC, C)^T` is `sgemm(T, N, m=OC, n=B*T, k=C, A=W, lda=C,
//! B=inp, ldb=C, C=out, ldc=OC)`.

use anyhow::{bail, Result};
use half::bf16;

use crate::precision::Act;

/// `op(X)` of a cuBLAS GEMM: `N` uses X as stored, `T` its transpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GemmOp {
    /// `CUBLAS_OP_N`
    N,
    /// `CUBLAS_OP_T`
    T,
}

/// One cuBLAS `Sgemm` (batch 1) or `SgemmStridedBatched` call. Sizes are element counts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgemmConfig {
    pub transa: GemmOp,
    pub transb: GemmOp,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub alpha: f32,
    pub lda: usize,
    pub ldb: usize,
    pub beta: f32,
    pub ldc: usize,
    /// Number of problems (1 for a plain GEMM; 0 is a valid no-op as in cuBLAS).
    pub batch: usize,
    pub stride_a: usize,
    pub stride_b: usize,
    pub stride_c: usize,
}

impl SgemmConfig {
    /// A single GEMM, arguments in cuBLAS order.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        transa: GemmOp,
        transb: GemmOp,
        m: usize,
        n: usize,
        k: usize,
        alpha: f32,
        lda: usize,
        ldb: usize,
        beta: f32,
        ldc: usize,
    ) -> Self {
        SgemmConfig {
            transa,
            transb,
            m,
            n,
            k,
            alpha,
            lda,
            ldb,
            beta,
            ldc,
            batch: 1,
            stride_a: 0,
            stride_b: 0,
            stride_c: 0,
        }
    }

    /// The same GEMM repeated over `batch` problems (`cublasSgemmStridedBatched`).
    pub fn batched(
        mut self,
        batch: usize,
        stride_a: usize,
        stride_b: usize,
        stride_c: usize,
    ) -> Self {
        self.batch = batch;
        self.stride_a = stride_a;
        self.stride_b = stride_b;
        self.stride_c = stride_c;
        self
    }

    /// Stored shape (rows, cols) of A, B, C in column-major order.
    fn stored_shapes(&self) -> [(usize, usize); 3] {
        let a = match self.transa {
            GemmOp::N => (self.m, self.k),
            GemmOp::T => (self.k, self.m),
        };
        let b = match self.transb {
            GemmOp::N => (self.k, self.n),
            GemmOp::T => (self.n, self.k),
        };
        [a, b, (self.m, self.n)]
    }

    /// Argument checks cuBLAS performs (it returns `CUBLAS_STATUS_INVALID_VALUE` for these), plus
    /// `i32` range (cuBLAS takes `int`) and overlapping C matrices across a batch (undefined in
    /// cuBLAS, rejected here).
    pub fn validate(&self) -> Result<()> {
        let [a, b, c] = self.stored_shapes();
        let lds = [
            ("lda", self.lda, a.0, "op(A)"),
            ("ldb", self.ldb, b.0, "op(B)"),
            ("ldc", self.ldc, c.0, "C"),
        ];
        for (name, ld, rows, what) in lds {
            if ld < rows.max(1) {
                bail!(
                    "sgemm: {name}={ld} < max(1, {rows}) = rows of {what} as stored \
                     (transa={:?}, transb={:?}, m={}, n={}, k={}); cuBLAS rejects this \
                     (CUBLAS_STATUS_INVALID_VALUE)",
                    self.transa,
                    self.transb,
                    self.m,
                    self.n,
                    self.k
                );
            }
        }
        let ints = [
            ("m", self.m),
            ("n", self.n),
            ("k", self.k),
            ("lda", self.lda),
            ("ldb", self.ldb),
            ("ldc", self.ldc),
            ("batch", self.batch),
        ];
        for (name, v) in ints {
            if v > i32::MAX as usize {
                bail!("sgemm: {name}={v} does not fit cuBLAS's int argument");
            }
        }
        for (name, v) in [
            ("stride_a", self.stride_a),
            ("stride_b", self.stride_b),
            ("stride_c", self.stride_c),
        ] {
            if v > i64::MAX as usize {
                bail!("sgemm: {name}={v} does not fit cuBLAS's long long argument");
            }
        }
        let c_extent = extent(c, self.ldc)?;
        if self.batch > 1 && c_extent > 0 && self.stride_c < c_extent {
            bail!(
                "sgemm: stride_c={} < {} (the extent of one C matrix): batched outputs would overlap",
                self.stride_c,
                c_extent
            );
        }
        Ok(())
    }

    /// Elements of A, B, C the call may touch: `(batch-1)*stride + ld*(cols-1) + rows` (0 for an
    /// empty matrix or batch 0).
    pub fn required_lens(&self) -> Result<[usize; 3]> {
        let shapes = self.stored_shapes();
        let lds = [self.lda, self.ldb, self.ldc];
        let strides = [self.stride_a, self.stride_b, self.stride_c];
        let mut out = [0usize; 3];
        for i in 0..3 {
            let e = extent(shapes[i], lds[i])?;
            out[i] = if self.batch == 0 || e == 0 {
                0
            } else {
                (self.batch - 1)
                    .checked_mul(strides[i])
                    .and_then(|s| s.checked_add(e))
                    .ok_or_else(|| anyhow::anyhow!("sgemm: matrix extent overflows usize"))?
            };
        }
        Ok(out)
    }

    /// [`validate`](Self::validate) and check that buffers of these lengths hold every element
    /// the call touches (cuBLAS itself would read/write out of bounds).
    pub fn check(&self, a_len: usize, b_len: usize, c_len: usize) -> Result<()> {
        self.validate()?;
        let need = self.required_lens()?;
        for (name, have, need) in [
            ("A", a_len, need[0]),
            ("B", b_len, need[1]),
            ("C", c_len, need[2]),
        ] {
            if have < need {
                bail!(
                    "sgemm: buffer {name} has {have} elements but the call touches {need} \
                     ({self:?})"
                );
            }
        }
        Ok(())
    }

    /// True when nothing is computed or written.
    pub fn is_noop(&self) -> bool {
        self.batch == 0 || self.m == 0 || self.n == 0
    }
}

fn extent((rows, cols): (usize, usize), ld: usize) -> Result<usize> {
    if rows == 0 || cols == 0 {
        return Ok(0);
    }
    ld.checked_mul(cols - 1)
        .and_then(|v| v.checked_add(rows))
        .ok_or_else(|| anyhow::anyhow!("sgemm: matrix extent overflows usize"))
}

/// Below this many multiply-adds per problem the CPU GEMM runs single-threaded.
const PAR_MIN_FLOPS: usize = 1 << 18;

/// CPU GEMM with cuBLAS semantics over raw host pointers (the emulated device's memory).
///
/// # Safety
/// `cfg` must have passed [`SgemmConfig::check`] for buffers at `a`, `b`, `c` (valid, aligned
/// host memory of at least those lengths), C must not overlap A or B, and no one else may access
/// C during the call.
pub unsafe fn sgemm_host(cfg: &SgemmConfig, a: *const f32, b: *const f32, c: *mut f32) {
    if cfg.is_noop() {
        return;
    }
    for batch in 0..cfg.batch {
        let a = a.wrapping_add(batch * cfg.stride_a);
        let b = b.wrapping_add(batch * cfg.stride_b);
        let c = c.add(batch * cfg.stride_c);
        if cfg.k == 0 || cfg.alpha == 0.0 {
            // cuBLAS: C = beta * C without reading A/B; beta == 0 writes exact zeros.
            for j in 0..cfg.n {
                for i in 0..cfg.m {
                    let p = c.add(i + j * cfg.ldc);
                    *p = if cfg.beta == 0.0 { 0.0 } else { cfg.beta * *p };
                }
            }
            continue;
        }
        let (a_cs, a_rs) = match cfg.transa {
            GemmOp::N => (cfg.lda as isize, 1),
            GemmOp::T => (1, cfg.lda as isize),
        };
        let (b_cs, b_rs) = match cfg.transb {
            GemmOp::N => (cfg.ldb as isize, 1),
            GemmOp::T => (1, cfg.ldb as isize),
        };
        let par = if cfg.m * cfg.n * cfg.k >= PAR_MIN_FLOPS {
            gemm::Parallelism::Rayon(rayon::current_num_threads())
        } else {
            gemm::Parallelism::None
        };
        // The gemm crate computes dst = alpha*dst + beta*lhs*rhs: its alpha/beta are swapped
        // relative to BLAS. read_dst=false when beta == 0 so C is never read (cuBLAS semantics).
        gemm::gemm(
            cfg.m,
            cfg.n,
            cfg.k,
            c,
            cfg.ldc as isize,
            1,
            cfg.beta != 0.0,
            a,
            a_cs,
            a_rs,
            b,
            b_cs,
            b_rs,
            cfg.beta,
            cfg.alpha,
            false,
            false,
            false,
            par,
        );
    }
}

/// Safe [`sgemm_host`] on slices (for the CPU backend and tests).
pub fn sgemm_slices(cfg: &SgemmConfig, a: &[f32], b: &[f32], c: &mut [f32]) -> Result<()> {
    cfg.check(a.len(), b.len(), c.len())?;
    // SAFETY: check() proved every touched index is in bounds; the borrow checker proves C is
    // exclusive and does not overlap A or B.
    unsafe { sgemm_host(cfg, a.as_ptr(), b.as_ptr(), c.as_mut_ptr()) };
    Ok(())
}

/// Textbook triple loop with f64 accumulation: the independent reference the fast paths are
/// tested against (slow; small shapes only).
pub fn sgemm_reference(cfg: &SgemmConfig, a: &[f32], b: &[f32], c: &mut [f32]) -> Result<()> {
    cfg.check(a.len(), b.len(), c.len())?;
    reference_loop(cfg, a, b, c, None, |x| x as f64, |x| x as f64, |v| v as f32);
    Ok(())
}

/// The triple loop of both references: `C = alpha op(A) op(B) + beta C (+ bias[i])`, every
/// product and sum in f64 (`widen`/`load` read A, B and C as f64), `store` rounding the result
/// into C's element type. Callers check the extents first.
#[allow(clippy::too_many_arguments)]
fn reference_loop<T: Copy, C: Copy>(
    cfg: &SgemmConfig,
    a: &[T],
    b: &[T],
    c: &mut [C],
    bias: Option<&[f32]>,
    widen: impl Fn(T) -> f64,
    load: impl Fn(C) -> f64,
    store: impl Fn(f64) -> C,
) {
    if cfg.is_noop() {
        return;
    }
    for batch in 0..cfg.batch {
        let (oa, ob, oc) = (
            batch * cfg.stride_a,
            batch * cfg.stride_b,
            batch * cfg.stride_c,
        );
        for j in 0..cfg.n {
            for i in 0..cfg.m {
                let mut acc = 0.0f64;
                if cfg.alpha != 0.0 {
                    for p in 0..cfg.k {
                        let av = match cfg.transa {
                            GemmOp::N => a[oa + i + p * cfg.lda],
                            GemmOp::T => a[oa + p + i * cfg.lda],
                        };
                        let bv = match cfg.transb {
                            GemmOp::N => b[ob + p + j * cfg.ldb],
                            GemmOp::T => b[ob + j + p * cfg.ldb],
                        };
                        acc += widen(av) * widen(bv);
                    }
                }
                let ci = oc + i + j * cfg.ldc;
                let prev = if cfg.beta == 0.0 {
                    0.0
                } else {
                    cfg.beta as f64 * load(c[ci])
                };
                let mut v = cfg.alpha as f64 * acc + prev;
                if let Some(b) = bias {
                    v += b[i] as f64;
                }
                c[ci] = store(v);
            }
        }
    }
}

/// The f32 config of `alpha * op(A) op(B)` alone (beta 0) into a compact temporary: C with
/// `ldc = m` and `stride_c = m * n`.
fn product_config(cfg: &SgemmConfig) -> SgemmConfig {
    let mut p = *cfg;
    p.beta = 0.0;
    p.ldc = cfg.m.max(1);
    p.stride_c = cfg.m * cfg.n;
    p
}

/// The epilogue shared by the emulated bf16 GEMM and the CUDA device's fallback kernel
/// (`gemm_epilogue_bf16` / `gemm_epilogue_f32` in kernels/matmul.cu, the same f32 operations in
/// the same order): `acc + beta * c (skipped when beta == 0) + bias`, rounded once to `C`.
#[inline]
pub fn gemm_epilogue_value<C: Act>(acc: f32, beta: f32, c_old: C, bias: f32) -> C {
    let mut v = acc;
    if beta != 0.0 {
        v += beta * c_old.to_f32();
    }
    C::from_f32(v + bias)
}

/// CPU bf16 GEMM with cuBLASLt semantics (the emulated device's `gemm_bf16`): A and B widened to
/// f32 (exact), `alpha * op(A) op(B)` by [`sgemm_host`] into an f32 temporary, then per element
/// of C `acc + beta * C + bias[i]` in f32, rounded once to `C` ([`gemm_epilogue_value`]).
/// `beta == 0` never reads C; elements outside the `m x n` matrices (ld padding, batch gaps) are
/// not touched.
///
/// # Safety
/// As [`sgemm_host`], and `bias` (if any) must point at `m` readable f32 values.
pub unsafe fn gemm_bf16_host<C: Act>(
    cfg: &SgemmConfig,
    a: *const bf16,
    b: *const bf16,
    c: *mut C,
    bias: Option<*const f32>,
) {
    if cfg.is_noop() {
        return;
    }
    let [la, lb, _] = cfg
        .required_lens()
        .expect("gemm_bf16_host: the caller checked the config");
    let computes = cfg.k > 0 && cfg.alpha != 0.0;
    let widen = |p: *const bf16, len: usize| -> Vec<f32> {
        if !computes || len == 0 {
            return Vec::new();
        }
        // SAFETY: the caller guarantees `len` (the extent the call touches) readable elements.
        let xs = unsafe { std::slice::from_raw_parts(p, len) };
        xs.iter().map(|x| x.to_f32()).collect()
    };
    let (wa, wb) = (widen(a, la), widen(b, lb));
    let pcfg = product_config(cfg);
    let mut acc = vec![0.0f32; cfg.m * cfg.n * cfg.batch];
    if computes {
        // SAFETY: wa/wb hold the extents of A and B under the same (lda, ldb, strides); acc holds
        // the compact m x n x batch product.
        unsafe { sgemm_host(&pcfg, wa.as_ptr(), wb.as_ptr(), acc.as_mut_ptr()) };
    }
    for batch in 0..cfg.batch {
        for j in 0..cfg.n {
            for i in 0..cfg.m {
                let bias_i = match bias {
                    // SAFETY: bias holds m elements.
                    Some(p) => unsafe { *p.add(i) },
                    None => 0.0,
                };
                let p = c.add(batch * cfg.stride_c + j * cfg.ldc + i);
                let old = if cfg.beta != 0.0 { *p } else { C::default() };
                *p = gemm_epilogue_value(
                    acc[batch * cfg.m * cfg.n + j * cfg.m + i],
                    cfg.beta,
                    old,
                    bias_i,
                );
            }
        }
    }
}

/// Safe [`gemm_bf16_host`] on slices.
pub fn gemm_bf16_slices<C: Act>(
    cfg: &SgemmConfig,
    a: &[bf16],
    b: &[bf16],
    c: &mut [C],
    bias: Option<&[f32]>,
) -> Result<()> {
    cfg.check(a.len(), b.len(), c.len())?;
    check_bias(cfg, bias.map(|b| b.len()))?;
    // SAFETY: check() proved every touched index is in bounds, the bias holds m values; the
    // borrow checker proves C is exclusive.
    unsafe {
        gemm_bf16_host(
            cfg,
            a.as_ptr(),
            b.as_ptr(),
            c.as_mut_ptr(),
            bias.map(|b| b.as_ptr()),
        )
    };
    Ok(())
}

/// Error unless a bias of `len` elements covers the `m` rows of C.
pub fn check_bias(cfg: &SgemmConfig, len: Option<usize>) -> Result<()> {
    if let Some(len) = len {
        if len < cfg.m {
            bail!(
                "gemm_bf16: bias has {len} elements but C has m = {} rows",
                cfg.m
            );
        }
    }
    Ok(())
}

/// The independent reference of the bf16 GEMM: the textbook triple loop on the widened inputs
/// with f64 accumulation, `alpha * sum + beta * C + bias` in f64, rounded once to f32 and then to
/// `C` (f64 -> f32 -> bf16 can differ from a direct f64 -> bf16 rounding only at exact bf16 ties
/// of the f32 value, one bf16 ulp, within every bf16 tolerance).
pub fn gemm_bf16_reference<C: Act>(
    cfg: &SgemmConfig,
    a: &[bf16],
    b: &[bf16],
    c: &mut [C],
    bias: Option<&[f32]>,
) -> Result<()> {
    cfg.check(a.len(), b.len(), c.len())?;
    check_bias(cfg, bias.map(|b| b.len()))?;
    let load = |x: C| x.to_f32() as f64;
    let store = |v: f64| C::from_f32(v as f32);
    reference_loop(cfg, a, b, c, bias, |x: bf16| x.to_f64(), load, store);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_major_linear_layer_mapping() {
        // out(2x3) = inp(2x4) @ W(3x4)^T, row-major, via the column-major call in the module doc.
        let inp: Vec<f32> = (0..8).map(|v| v as f32).collect();
        let w: Vec<f32> = (0..12).map(|v| (v as f32) * 0.5 - 2.0).collect();
        let mut out = vec![0.0; 6];
        let cfg = SgemmConfig::new(GemmOp::T, GemmOp::N, 3, 2, 4, 1.0, 4, 4, 0.0, 3);
        sgemm_slices(&cfg, &w, &inp, &mut out).unwrap();
        for r in 0..2 {
            for o in 0..3 {
                let want: f32 = (0..4).map(|i| inp[r * 4 + i] * w[o * 4 + i]).sum();
                assert_eq!(out[r * 3 + o], want);
            }
        }
    }

    #[test]
    fn beta_zero_overwrites_nan() {
        let cfg = SgemmConfig::new(GemmOp::N, GemmOp::N, 2, 2, 1, 1.0, 2, 1, 0.0, 2);
        let mut c = vec![f32::NAN; 4];
        sgemm_slices(&cfg, &[1.0, 2.0], &[3.0, 4.0], &mut c).unwrap();
        assert_eq!(c, [3.0, 6.0, 4.0, 8.0]);
    }
}
