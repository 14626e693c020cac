//! CPU reference for PEPLER's rating heads and their loss: `rating_mf_forward/backward` (MF: the dot
//! product of the user and item vectors), `sigmoid_forward/backward` (the MLP head's activation; its
//! linear layers are `matmul` in the `OutIn` layout) and `mse_forward` (mean squared error, fused
//! with its gradient).
//!
//! `ui` (B, 2C) holds `[u | i]` per row (the MLP head's input, gathered by `embedding_forward`).
//! Gradients of activations are written (`=`). Reductions run in a fixed order.

/// `out[b] = sum_k u[b,k] * i[b,k]` (=).
pub fn rating_mf_forward(out: &mut [f32], ui: &[f32], b: usize, c: usize) {
    assert_eq!(out.len(), b, "rating_mf_forward: out");
    assert_eq!(ui.len(), b * 2 * c, "rating_mf_forward: ui");
    for (r, o) in out.iter_mut().enumerate() {
        let (u, i) = ui[r * 2 * c..(r + 1) * 2 * c].split_at(c);
        let mut s = 0.0f32;
        for (x, y) in u.iter().zip(i) {
            s += x * y;
        }
        *o = s;
    }
}

/// `dui = [dpred * i | dpred * u]` (=).
pub fn rating_mf_backward(dui: &mut [f32], dpred: &[f32], ui: &[f32], b: usize, c: usize) {
    assert_eq!(dui.len(), b * 2 * c, "rating_mf_backward: dui");
    assert_eq!(dpred.len(), b, "rating_mf_backward: dpred");
    assert_eq!(ui.len(), b * 2 * c, "rating_mf_backward: ui");
    for r in 0..b {
        let (u, i) = ui[r * 2 * c..(r + 1) * 2 * c].split_at(c);
        let (du, di) = dui[r * 2 * c..(r + 1) * 2 * c].split_at_mut(c);
        for k in 0..c {
            du[k] = dpred[r] * i[k];
            di[k] = dpred[r] * u[k];
        }
    }
}

/// `out = 1 / (1 + exp(-inp))` (=).
pub fn sigmoid_forward(out: &mut [f32], inp: &[f32]) {
    assert_eq!(out.len(), inp.len(), "sigmoid_forward: lengths");
    for (o, x) in out.iter_mut().zip(inp) {
        *o = 1.0 / (1.0 + (-*x).exp());
    }
}

/// `dinp = dout * out * (1 - out)` (=), from the forward's output.
pub fn sigmoid_backward(dinp: &mut [f32], out: &[f32], dout: &[f32]) {
    assert_eq!(dinp.len(), out.len(), "sigmoid_backward: lengths");
    assert_eq!(dout.len(), out.len(), "sigmoid_backward: lengths");
    for ((d, y), g) in dinp.iter_mut().zip(out).zip(dout) {
        *d = g * y * (1.0 - y);
    }
}

/// Returns `mean((pred - target)^2)`; writes `dpred = grad_scale * 2 (pred - target) / n` (=).
pub fn mse_forward(dpred: &mut [f32], pred: &[f32], target: &[f32], grad_scale: f32) -> f32 {
    let n = pred.len();
    assert_eq!(target.len(), n, "mse_forward: target");
    assert_eq!(dpred.len(), n, "mse_forward: dpred");
    let mut s = 0.0f32;
    for ((d, p), y) in dpred.iter_mut().zip(pred).zip(target) {
        let e = p - y;
        s += e * e;
        *d = grad_scale * 2.0 * e / n as f32;
    }
    s / n as f32
}
