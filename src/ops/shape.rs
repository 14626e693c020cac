//! Operand checks shared by every backend. A shape struct (`MatmulShape`, `LnShape` here;
//! `AttnShape`, `EmbedShape` beside their ops) says how many elements each operand of an op needs;
//! the CPU backend and the GPU launchers (`crate::kernels`) both check what they were given with
//! the same shape method, so the rules live in one place and the errors read the same on every
//! backend. A buffer may be longer than its operand (prefix semantics), never shorter.

use anyhow::{bail, Result};

use super::matmul::WeightLayout;

/// Errors, naming `op` and the operand, unless each `(name, have, need)` has `have >= need`.
pub fn check_operands(op: &str, operands: &[(&str, usize, usize)]) -> Result<()> {
    for &(name, have, need) in operands {
        if have < need {
            bail!("{op}: {name} has {have} elements, needs at least {need}");
        }
    }
    Ok(())
}

/// `a * b`, or an error naming `op` when it overflows.
fn mul(op: &str, a: usize, b: usize) -> Result<usize> {
    a.checked_mul(b)
        .ok_or_else(|| anyhow::anyhow!("{op}: {a} x {b} elements overflow"))
}

/// A dense layer `out = inp W (+ bias)`: `inp` (rows, cin), `out` (rows, cout), `W` (cin x cout
/// stored per `layout`), `bias` (cout). See `ops::matmul`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatmulShape {
    pub rows: usize,
    pub cin: usize,
    pub cout: usize,
    pub layout: WeightLayout,
}

impl MatmulShape {
    /// (inp, out, weight) element counts.
    pub fn sizes(&self, op: &str) -> Result<(usize, usize, usize)> {
        Ok((
            mul(op, self.rows, self.cin)?,
            mul(op, self.rows, self.cout)?,
            mul(op, self.cin, self.cout)?,
        ))
    }

    /// The forward's operands: `out`, `inp`, `weight` and the optional `bias`.
    pub fn check_forward(
        &self,
        op: &str,
        out: usize,
        inp: usize,
        weight: usize,
        bias: Option<usize>,
    ) -> Result<()> {
        let (ni, no, nw) = self.sizes(op)?;
        check_operands(
            op,
            &[("out", out, no), ("inp", inp, ni), ("weight", weight, nw)],
        )?;
        check_operands(op, &[("bias", bias.unwrap_or(self.cout), self.cout)])
    }

    /// The backward's operands (`None`: a gradient that is skipped).
    #[allow(clippy::too_many_arguments)]
    pub fn check_backward(
        &self,
        op: &str,
        dinp: Option<usize>,
        dweight: Option<usize>,
        dbias: Option<usize>,
        dout: usize,
        inp: usize,
        weight: usize,
    ) -> Result<()> {
        let (ni, no, nw) = self.sizes(op)?;
        check_operands(
            op,
            &[
                ("dout", dout, no),
                ("inp", inp, ni),
                ("weight", weight, nw),
                ("dinp", dinp.unwrap_or(ni), ni),
                ("dweight", dweight.unwrap_or(nw), nw),
                ("dbias", dbias.unwrap_or(self.cout), self.cout),
            ],
        )
    }
}

/// LayerNorm over `rows` rows of `c` channels: activations (rows, c), `weight`/`bias` (c),
/// `mean`/`rstd` (rows). See `ops::layernorm`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LnShape {
    pub rows: usize,
    pub c: usize,
}

impl LnShape {
    /// Elements of one activation (rows * c); an error when `c` is 0 or the product overflows.
    pub fn n(&self, op: &str) -> Result<usize> {
        if self.c == 0 {
            bail!("{op}: c must be > 0");
        }
        mul(op, self.rows, self.c)
    }

    /// The forward's operands (`mean`/`rstd`: `None` when not saved).
    #[allow(clippy::too_many_arguments)]
    pub fn check_forward(
        &self,
        op: &str,
        out: usize,
        mean: Option<usize>,
        rstd: Option<usize>,
        inp: usize,
        weight: usize,
        bias: usize,
    ) -> Result<()> {
        let (n, c, r) = (self.n(op)?, self.c, self.rows);
        check_operands(
            op,
            &[
                ("out", out, n),
                ("inp", inp, n),
                ("weight", weight, c),
                ("bias", bias, c),
                ("mean", mean.unwrap_or(r), r),
                ("rstd", rstd.unwrap_or(r), r),
            ],
        )
    }

    /// The backward's operands (`dweight`/`dbias`: `None` when frozen).
    #[allow(clippy::too_many_arguments)]
    pub fn check_backward(
        &self,
        op: &str,
        dinp: usize,
        dweight: Option<usize>,
        dbias: Option<usize>,
        dout: usize,
        inp: usize,
        weight: usize,
        mean: usize,
        rstd: usize,
    ) -> Result<()> {
        let (n, c, r) = (self.n(op)?, self.c, self.rows);
        check_operands(
            op,
            &[
                ("dinp", dinp, n),
                ("dout", dout, n),
                ("inp", inp, n),
                ("dweight", dweight.unwrap_or(c), c),
                ("dbias", dbias.unwrap_or(c), c),
                ("weight", weight, c),
                ("mean", mean, r),
                ("rstd", rstd, r),
            ],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_operands_are_named_and_long_ones_pass() {
        let s = MatmulShape {
            rows: 3,
            cin: 4,
            cout: 5,
            layout: WeightLayout::InOut,
        };
        assert!(s.check_forward("mm", 15, 12, 20, Some(5)).is_ok());
        assert!(s.check_forward("mm", 99, 99, 99, None).is_ok());
        let e = s.check_forward("mm", 15, 12, 20, Some(4)).unwrap_err();
        assert_eq!(e.to_string(), "mm: bias has 4 elements, needs at least 5");
        let e = s.check_backward("mm", Some(11), None, None, 15, 12, 20);
        assert!(e.unwrap_err().to_string().contains("dinp has 11"));
        let ln = LnShape { rows: 2, c: 3 };
        assert!(ln.check_forward("ln", 6, None, None, 6, 3, 3).is_ok());
        let e = ln
            .check_backward("ln", 6, None, None, 6, 6, 3, 1, 2)
            .unwrap_err();
        assert!(e.to_string().contains("mean has 1"), "{e}");
        assert!(LnShape { rows: 2, c: 0 }.n("ln").is_err());
    }
}
