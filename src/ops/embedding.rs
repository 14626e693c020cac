//! CPU reference for `embedding_forward` / `embedding_backward`: row gathers from an embedding table
//! into a (batch, seq, c) activation, optionally adding the position embedding (GPT-2 encoder).
//!
//! One call fills `n` consecutive positions `offset..offset+n` of every sequence from one table:
//! `out[b, offset+j, :] = table[ids[b*n+j], :] (+ wpe[pos0+offset+j, :])` (=). PEPLER calls it once per
//! input segment (user vector, item vector, feature tokens, text). With `wpe = None` it is a plain
//! row gather (the rating head's `[u, i]` concatenation, or picking the rows that carry a target).
//!
//! Backward: `dtable[ids[b*n+j]] += dout[b, offset+j]`, `dwpe[pos0+offset+j] += dout[b, offset+j]`,
//! visited in (b, j) order on one thread: a fixed summation order for repeated ids (deterministic).

/// Geometry of one embedding call (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EmbedShape {
    /// Number of sequences.
    pub batch: usize,
    /// Ids per sequence in this call.
    pub n: usize,
    /// Positions per sequence in `out` (row stride is `seq * c` per sequence).
    pub seq: usize,
    /// First position written in each sequence.
    pub offset: usize,
    /// Position index of `out` position 0 (non-zero when decoding with a KV cache).
    pub pos0: usize,
    /// Channels.
    pub c: usize,
}

impl EmbedShape {
    /// Checks the slice lengths against the shape; returns a message naming the problem.
    pub fn check(
        &self,
        out_len: usize,
        table_len: usize,
        ids: &[i32],
        wpe_len: Option<usize>,
    ) -> Result<(), String> {
        let s = self;
        if s.offset + s.n > s.seq {
            return Err(format!(
                "embedding: offset {} + n {} > seq {}",
                s.offset, s.n, s.seq
            ));
        }
        if out_len != s.batch * s.seq * s.c {
            return Err(format!(
                "embedding: out has {out_len} elements, want {}",
                s.batch * s.seq * s.c
            ));
        }
        if ids.len() != s.batch * s.n {
            return Err(format!(
                "embedding: {} ids, want {}",
                ids.len(),
                s.batch * s.n
            ));
        }
        if s.c == 0 || !table_len.is_multiple_of(s.c) {
            return Err(format!(
                "embedding: table of {table_len} elements is not (rows, {})",
                s.c
            ));
        }
        let rows = table_len / s.c;
        if let Some(bad) = ids.iter().find(|&&id| id < 0 || id as usize >= rows) {
            return Err(format!(
                "embedding: id {bad} outside a table of {rows} rows"
            ));
        }
        if let Some(w) = wpe_len {
            if w < (s.pos0 + s.offset + s.n) * s.c {
                return Err(format!(
                    "embedding: position {} beyond the {} position embeddings",
                    s.pos0 + s.offset + s.n - 1,
                    w / s.c
                ));
            }
        }
        Ok(())
    }
}

/// Gather (see module docs). Panics on a shape mismatch (callers check with [`EmbedShape::check`]).
pub fn embedding_forward(
    out: &mut [f32],
    table: &[f32],
    ids: &[i32],
    wpe: Option<&[f32]>,
    s: EmbedShape,
) {
    if let Err(e) = s.check(out.len(), table.len(), ids, wpe.map(|w| w.len())) {
        panic!("{e}");
    }
    let c = s.c;
    for b in 0..s.batch {
        for j in 0..s.n {
            let id = ids[b * s.n + j] as usize;
            let o = &mut out[(b * s.seq + s.offset + j) * c..][..c];
            o.copy_from_slice(&table[id * c..(id + 1) * c]);
            if let Some(w) = wpe {
                let p = s.pos0 + s.offset + j;
                for (x, y) in o.iter_mut().zip(&w[p * c..(p + 1) * c]) {
                    *x += *y;
                }
            }
        }
    }
}

/// Scatter-add backward of [`embedding_forward`] (+= into `dtable` and `dwpe`).
pub fn embedding_backward(
    dtable: Option<&mut [f32]>,
    dwpe: Option<&mut [f32]>,
    dout: &[f32],
    ids: &[i32],
    s: EmbedShape,
) {
    let c = s.c;
    if let Some(dt) = dtable {
        if let Err(e) = s.check(dout.len(), dt.len(), ids, None) {
            panic!("{e}");
        }
        for b in 0..s.batch {
            for j in 0..s.n {
                let id = ids[b * s.n + j] as usize;
                let g = &dout[(b * s.seq + s.offset + j) * c..][..c];
                for (x, y) in dt[id * c..(id + 1) * c].iter_mut().zip(g) {
                    *x += *y;
                }
            }
        }
    }
    if let Some(dw) = dwpe {
        assert!(
            dw.len() >= (s.pos0 + s.offset + s.n) * c,
            "embedding_backward: dwpe too small"
        );
        for b in 0..s.batch {
            for j in 0..s.n {
                let p = s.pos0 + s.offset + j;
                let g = &dout[(b * s.seq + s.offset + j) * c..][..c];
                for (x, y) in dw[p * c..(p + 1) * c].iter_mut().zip(g) {
                    *x += *y;
                }
            }
        }
    }
}
