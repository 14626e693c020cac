//! CPU reference for `kernels/residual.cu`: the residual-stream add, `out = a + b` (`=`).
//!
//! Shapes: all three slices hold the same `n` elements (any layout; the op is elementwise).

use rayon::prelude::*;

/// Work per rayon task; below this the op runs on the calling thread (spawning costs more).
const PAR_CHUNK: usize = 1 << 16;

/// `out[i] = a[i] + b[i]` for every `i` (`=`, not `+=`).
///
/// # Panics
/// If the three slices differ in length (a programming error, not user input).
pub fn residual_forward(out: &mut [f32], a: &[f32], b: &[f32]) {
    assert_eq!(
        out.len(),
        a.len(),
        "residual_forward: out and a differ in length"
    );
    assert_eq!(
        out.len(),
        b.len(),
        "residual_forward: out and b differ in length"
    );
    out.par_chunks_mut(PAR_CHUNK)
        .zip(a.par_chunks(PAR_CHUNK).zip(b.par_chunks(PAR_CHUNK)))
        .for_each(|(o, (a, b))| {
            for ((o, &x), &y) in o.iter_mut().zip(a).zip(b) {
                *o = x + y;
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_elementwise() {
        let a = [1.0, -2.0, 3.5];
        let b = [0.5, 2.0, -1.0];
        let mut out = [f32::NAN; 3];
        residual_forward(&mut out, &a, &b);
        assert_eq!(out, [1.5, 0.0, 2.5]);
    }
}
