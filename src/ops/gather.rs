//! CPU reference for `kernels/gather.cu`: rows picked by index (`row_gather`, `=`) and their
//! gradient added back (`row_scatter_add`, `+=`, distinct ids). Row-major, rows of `c` elements.

use anyhow::{bail, Result};

/// Checks `n` ids against `rows` rows and, for a scatter, that they are distinct.
pub fn check_ids(op: &str, ids: &[i32], rows: usize, distinct: bool) -> Result<()> {
    if let Some(bad) = ids.iter().find(|&&i| i < 0 || i as usize >= rows) {
        bail!("{op}: row id {bad} outside 0..{rows}");
    }
    if distinct {
        let mut seen = vec![false; rows];
        for &i in ids {
            if std::mem::replace(&mut seen[i as usize], true) {
                bail!("{op}: row id {i} repeated (a scatter's ids must be distinct)");
            }
        }
    }
    Ok(())
}

/// `out[r, :] = src[ids[r], :]` for every `r < ids.len()` (`=`).
pub fn row_gather(out: &mut [f32], src: &[f32], ids: &[i32], c: usize) {
    for (o, &i) in out.chunks_exact_mut(c).zip(ids) {
        let i = i as usize;
        o.copy_from_slice(&src[i * c..(i + 1) * c]);
    }
}

/// `dst[ids[r], :] += src[r, :]` for every `r < ids.len()` (`+=`; ids distinct).
pub fn row_scatter_add(dst: &mut [f32], src: &[f32], ids: &[i32], c: usize) {
    for (s, &i) in src.chunks_exact(c).zip(ids) {
        let i = i as usize;
        for (d, &x) in dst[i * c..(i + 1) * c].iter_mut().zip(s) {
            *d += x;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gather_then_scatter_round_trips_rows() {
        let src = [0.0, 1.0, 10.0, 11.0, 20.0, 21.0];
        let mut out = [0.0; 4];
        row_gather(&mut out, &src, &[2, 0], 2);
        assert_eq!(out, [20.0, 21.0, 0.0, 1.0]);
        let mut dst = [1.0; 6];
        row_scatter_add(&mut dst, &out, &[2, 0], 2);
        assert_eq!(dst, [1.0, 2.0, 1.0, 1.0, 21.0, 22.0]);
        assert!(check_ids("t", &[2, 0], 3, true).is_ok());
        assert!(check_ids("t", &[2, 2], 3, true).is_err());
        assert!(check_ids("t", &[2, 2], 3, false).is_ok());
        assert!(check_ids("t", &[3], 3, false).is_err());
    }
}
