//! CPU reference for `matmul_forward` / `matmul_backward`: a dense layer `y = x W (+ b)` on row-major
//! f32 slices, computed with the `gemm` crate (rayon-parallel, fixed reduction order over k).
//!
//! Shapes: `inp` (rows, cin), `out`/`dout` (rows, cout), `bias` (cout). The weight layout is either
//! - [`WeightLayout::InOut`]: `W` is (cin, cout), HF GPT-2 `Conv1D` (`y = x W + b`), or
//! - [`WeightLayout::OutIn`]: `W` is (cout, cin), `nn.Linear` and the tied LM head (`y = x W^T + b`).
//!
//! Gradient convention (llm.c): `dinp` is written (`=`), `dweight` and `dbias` accumulate (`+=`).
//! Determinism: every output element is a k-ordered sum; the bias and dbias loops run in row order.

use gemm::Parallelism;
use rayon::prelude::*;

/// How a weight matrix is stored (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightLayout {
    /// (cin, cout): HF `Conv1D`.
    InOut,
    /// (cout, cin): `nn.Linear`, tied LM head.
    OutIn,
}

/// Parallelism for all GEMMs: all rayon threads once the problem is big enough (gemm decides).
fn par() -> Parallelism {
    Parallelism::Rayon(0)
}

/// `dst (m x n) (=|+=) lhs (m x k) * rhs (k x n)` with explicit (row, col) strides.
#[allow(clippy::too_many_arguments)]
pub fn gemm_strided(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_rs: usize,
    dst_cs: usize,
    accumulate: bool,
    lhs: &[f32],
    lhs_rs: usize,
    lhs_cs: usize,
    rhs: &[f32],
    rhs_rs: usize,
    rhs_cs: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    // Bounds: the last element each operand touches must be inside its slice.
    assert!(
        (m - 1) * dst_rs + (n - 1) * dst_cs < dst.len(),
        "gemm: dst too small"
    );
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    dst[i * dst_rs + j * dst_cs] = 0.0;
                }
            }
        }
        return;
    }
    assert!(
        (m - 1) * lhs_rs + (k - 1) * lhs_cs < lhs.len(),
        "gemm: lhs too small"
    );
    assert!(
        (k - 1) * rhs_rs + (n - 1) * rhs_cs < rhs.len(),
        "gemm: rhs too small"
    );
    // SAFETY: the asserts above keep every strided access inside the three slices; dst is a unique
    // borrow, so it does not alias lhs or rhs.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            dst_cs as isize,
            dst_rs as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par(),
        );
    }
}

/// Strides (row, col) of the (cin x cout) matrix `W` viewed in the `x W` orientation.
fn w_strides(layout: WeightLayout, cin: usize, cout: usize) -> (usize, usize) {
    match layout {
        WeightLayout::InOut => (cout, 1),
        WeightLayout::OutIn => (1, cin),
    }
}

/// `out = inp W (+ bias)` (=). `out` (rows, cout), `inp` (rows, cin), `weight` per `layout`.
#[allow(clippy::too_many_arguments)]
pub fn matmul_forward(
    out: &mut [f32],
    inp: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    rows: usize,
    cin: usize,
    cout: usize,
    layout: WeightLayout,
) {
    assert_eq!(out.len(), rows * cout, "matmul_forward: out");
    assert_eq!(inp.len(), rows * cin, "matmul_forward: inp");
    assert_eq!(weight.len(), cin * cout, "matmul_forward: weight");
    let (w_rs, w_cs) = w_strides(layout, cin, cout);
    gemm_strided(
        rows, cout, cin, out, cout, 1, false, inp, cin, 1, weight, w_rs, w_cs,
    );
    if let Some(b) = bias {
        assert_eq!(b.len(), cout, "matmul_forward: bias");
        out.par_chunks_mut(cout).for_each(|row| {
            for (o, bb) in row.iter_mut().zip(b) {
                *o += *bb;
            }
        });
    }
}

/// Backward of [`matmul_forward`]: `dinp = dout W^T` (=), `dweight += x^T dout` (InOut) or
/// `dout^T x` (OutIn), `dbias += sum_rows dout`. Any of the three may be skipped with `None`.
#[allow(clippy::too_many_arguments)]
pub fn matmul_backward(
    dinp: Option<&mut [f32]>,
    dweight: Option<&mut [f32]>,
    dbias: Option<&mut [f32]>,
    dout: &[f32],
    inp: &[f32],
    weight: &[f32],
    rows: usize,
    cin: usize,
    cout: usize,
    layout: WeightLayout,
) {
    assert_eq!(dout.len(), rows * cout, "matmul_backward: dout");
    assert_eq!(inp.len(), rows * cin, "matmul_backward: inp");
    assert_eq!(weight.len(), cin * cout, "matmul_backward: weight");
    let (w_rs, w_cs) = w_strides(layout, cin, cout);
    if let Some(dinp) = dinp {
        assert_eq!(dinp.len(), rows * cin, "matmul_backward: dinp");
        // dinp (rows x cin) = dout (rows x cout) * W^T (cout x cin): W^T has strides (w_cs, w_rs).
        gemm_strided(
            rows, cin, cout, dinp, cin, 1, false, dout, cout, 1, weight, w_cs, w_rs,
        );
    }
    if let Some(dw) = dweight {
        assert_eq!(dw.len(), cin * cout, "matmul_backward: dweight");
        // dW viewed as (cin x cout) = x^T (cin x rows) * dout (rows x cout), stored per layout.
        gemm_strided(
            cin, cout, rows, dw, w_rs, w_cs, true, inp, 1, cin, dout, cout, 1,
        );
    }
    if let Some(db) = dbias {
        assert_eq!(db.len(), cout, "matmul_backward: dbias");
        // Column chunks are independent; each column sums its rows in order (deterministic).
        const CHUNK: usize = 256;
        db.par_chunks_mut(CHUNK).enumerate().for_each(|(ci, dbc)| {
            let c0 = ci * CHUNK;
            for r in 0..rows {
                let row = &dout[r * cout + c0..r * cout + c0 + dbc.len()];
                for (d, g) in dbc.iter_mut().zip(row) {
                    *d += *g;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(
        inp: &[f32],
        w: &[f32],
        rows: usize,
        cin: usize,
        cout: usize,
        l: WeightLayout,
    ) -> Vec<f32> {
        let mut out = vec![0.0f32; rows * cout];
        for r in 0..rows {
            for o in 0..cout {
                let mut s = 0.0f64;
                for i in 0..cin {
                    let wv = match l {
                        WeightLayout::InOut => w[i * cout + o],
                        WeightLayout::OutIn => w[o * cin + i],
                    };
                    s += inp[r * cin + i] as f64 * wv as f64;
                }
                out[r * cout + o] = s as f32;
            }
        }
        out
    }

    #[test]
    fn matmul_forward_and_backward_match_naive_loops_in_both_layouts() {
        let (rows, cin, cout) = (5, 7, 3);
        let inp: Vec<f32> = (0..rows * cin)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) / 7.0)
            .collect();
        let w: Vec<f32> = (0..cin * cout)
            .map(|i| ((i * 13 % 17) as f32 - 8.0) / 9.0)
            .collect();
        let dout: Vec<f32> = (0..rows * cout)
            .map(|i| ((i * 7 % 5) as f32 - 2.0) / 3.0)
            .collect();
        for l in [WeightLayout::InOut, WeightLayout::OutIn] {
            let mut out = vec![0.0; rows * cout];
            matmul_forward(&mut out, &inp, &w, None, rows, cin, cout, l);
            let want = naive(&inp, &w, rows, cin, cout, l);
            for (a, b) in out.iter().zip(&want) {
                assert!((a - b).abs() < 1e-5, "{l:?}: {a} vs {b}");
            }
            // Gradient of sum(out * dout) w.r.t. W and x via the naive forward's linearity.
            let mut dinp = vec![0.0; rows * cin];
            let mut dw = vec![0.0; cin * cout];
            let mut db = vec![0.0; cout];
            matmul_backward(
                Some(&mut dinp),
                Some(&mut dw),
                Some(&mut db),
                &dout,
                &inp,
                &w,
                rows,
                cin,
                cout,
                l,
            );
            for r in 0..rows {
                for i in 0..cin {
                    let mut s = 0.0;
                    for o in 0..cout {
                        let wv = match l {
                            WeightLayout::InOut => w[i * cout + o],
                            WeightLayout::OutIn => w[o * cin + i],
                        };
                        s += dout[r * cout + o] * wv;
                    }
                    assert!((dinp[r * cin + i] - s).abs() < 1e-5);
                }
            }
            for i in 0..cin {
                for o in 0..cout {
                    let s: f32 = (0..rows)
                        .map(|r| inp[r * cin + i] * dout[r * cout + o])
                        .sum();
                    let got = match l {
                        WeightLayout::InOut => dw[i * cout + o],
                        WeightLayout::OutIn => dw[o * cin + i],
                    };
                    assert!((got - s).abs() < 1e-5);
                }
            }
            for o in 0..cout {
                let s: f32 = (0..rows).map(|r| dout[r * cout + o]).sum();
                assert!((db[o] - s).abs() < 1e-6);
            }
        }
    }
}
