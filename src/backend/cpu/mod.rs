//! The CPU reference backend: fp32 arithmetic on host memory (bf16 activations are widened on
//! load and rounded on store, `crate::precision`), multithreaded with rayon, GEMMs through the
//! `gemm` crate. Every method checks its buffer sizes (returning an error that names the op), takes
//! the prefix its shape needs, and calls the reference function of the same name in `crate::ops`.
//! Deterministic: the reference functions fix their reduction orders and split work only over
//! independent rows/sequences.

use std::borrow::Cow;

use anyhow::{bail, Result};

use super::{
    Act, AdamWParams, AdamWVariant, AttnShape, Backend, DropoutSite, Element, EmbedShape,
    WeightLayout,
};
use crate::ops;
use crate::ops::shape::{LnShape, MatmulShape};

/// A host buffer.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CpuBuf<T>(pub Vec<T>);

impl<T> CpuBuf<T> {
    /// The whole buffer.
    pub fn as_slice(&self) -> &[T] {
        &self.0
    }
}

/// The CPU backend (stateless; rayon's global pool does the threading).
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuBackend;

impl CpuBackend {
    pub fn new() -> Self {
        CpuBackend
    }
}

/// An error naming the op and the operand unless `b` holds at least `n` elements.
fn check_len<T>(op: &str, what: &str, b: &CpuBuf<T>, n: usize) -> Result<()> {
    if b.0.len() < n {
        bail!(
            "{op}: `{what}` holds {} elements, the op needs {n}",
            b.0.len()
        );
    }
    Ok(())
}

/// The first `n` elements of `b`, or an error naming the op and the operand.
fn pre<'a, T>(op: &str, what: &str, b: &'a CpuBuf<T>, n: usize) -> Result<&'a [T]> {
    check_len(op, what, b, n)?;
    Ok(&b.0[..n])
}

/// `pre`, mutable.
fn pre_mut<'a, T>(op: &str, what: &str, b: &'a mut CpuBuf<T>, n: usize) -> Result<&'a mut [T]> {
    check_len(op, what, b, n)?;
    Ok(&mut b.0[..n])
}

/// `pre_mut` of an optional gradient output, or `n` zeros in `scratch` when it is skipped (for
/// reference functions that always produce it).
fn pre_mut_or_scratch<'a>(
    op: &str,
    what: &str,
    b: Option<&'a mut CpuBuf<f32>>,
    n: usize,
    scratch: &'a mut Vec<f32>,
) -> Result<&'a mut [f32]> {
    match b {
        Some(b) => pre_mut(op, what, b, n),
        None => {
            scratch.resize(n, 0.0);
            Ok(&mut scratch[..])
        }
    }
}

/// The first `n` elements of an activation input, as f32 (borrowed for f32, widened for bf16).
fn wide<'a, A: Act>(op: &str, what: &str, b: &'a CpuBuf<A>, n: usize) -> Result<Cow<'a, [f32]>> {
    Ok(A::widen(pre(op, what, b, n)?))
}

/// Runs the f32 reference `f` on the first `n` elements of an activation output (holding their
/// current values, for `+=` outputs) and stores its result rounded to `A` (in place for f32).
fn narrow<A: Act, R>(
    op: &str,
    what: &str,
    b: &mut CpuBuf<A>,
    n: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> Result<R> {
    Ok(A::with_f32_mut(pre_mut(op, what, b, n)?, f))
}

/// An error naming the op unless the channels split evenly into the heads.
fn check_heads(op: &str, s: &AttnShape) -> Result<()> {
    if s.nh == 0 || !s.c.is_multiple_of(s.nh) {
        bail!("{op}: {} channels do not split into {} heads", s.c, s.nh);
    }
    Ok(())
}

impl Backend for CpuBackend {
    type Buf<T: Element> = CpuBuf<T>;
    type Graph = ();

    fn name(&self) -> String {
        "cpu".to_string()
    }

    fn alloc<T: Element>(&self, len: usize) -> Result<CpuBuf<T>> {
        Ok(CpuBuf(vec![T::zeroed(); len]))
    }

    fn upload<T: Element>(&self, data: &[T]) -> Result<CpuBuf<T>> {
        Ok(CpuBuf(data.to_vec()))
    }

    fn write<T: Element>(&self, dst: &mut CpuBuf<T>, data: &[T]) -> Result<()> {
        pre_mut("write", "dst", dst, data.len())?.copy_from_slice(data);
        Ok(())
    }

    fn download<T: Element>(&self, src: &CpuBuf<T>, len: usize) -> Result<Vec<T>> {
        Ok(pre("download", "src", src, len)?.to_vec())
    }

    fn len<T: Element>(&self, buf: &CpuBuf<T>) -> usize {
        buf.0.len()
    }

    fn zero<T: Element>(&self, buf: &mut CpuBuf<T>) -> Result<()> {
        buf.0.fill(T::zeroed());
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    fn embedding_forward<A: Act>(
        &self,
        out: &mut CpuBuf<A>,
        table: &CpuBuf<f32>,
        ids: &CpuBuf<i32>,
        wpe: Option<&CpuBuf<f32>>,
        s: EmbedShape,
    ) -> Result<()> {
        let op = "embedding_forward";
        let n = s.batch * s.seq * s.c;
        check_len(op, "out", out, n)?;
        let ids = pre(op, "ids", ids, s.batch * s.n)?;
        let wpe = wpe.map(|w| w.as_slice());
        s.check(n, table.0.len(), ids, wpe.map(|w| w.len()))
            .map_err(|e| anyhow::anyhow!("{op}: {e}"))?;
        narrow(op, "out", out, n, |out| {
            ops::embedding::embedding_forward(out, &table.0, ids, wpe, s)
        })
    }

    fn embedding_backward<A: Act>(
        &self,
        dtable: Option<&mut CpuBuf<f32>>,
        dwpe: Option<&mut CpuBuf<f32>>,
        dout: &CpuBuf<A>,
        ids: &CpuBuf<i32>,
        s: EmbedShape,
    ) -> Result<()> {
        let op = "embedding_backward";
        let dout = wide(op, "dout", dout, s.batch * s.seq * s.c)?;
        let ids = pre(op, "ids", ids, s.batch * s.n)?;
        if let Some(dt) = dtable.as_ref() {
            s.check(dout.len(), dt.0.len(), ids, None)
                .map_err(|e| anyhow::anyhow!("{op}: {e}"))?;
        }
        if let Some(dw) = dwpe.as_ref() {
            if dw.0.len() < (s.pos0 + s.offset + s.n) * s.c {
                bail!(
                    "{op}: dwpe too small for position {}",
                    s.pos0 + s.offset + s.n - 1
                );
            }
        }
        ops::embedding::embedding_backward(
            dtable.map(|d| d.0.as_mut_slice()),
            dwpe.map(|d| d.0.as_mut_slice()),
            &dout,
            ids,
            s,
        );
        Ok(())
    }

    fn row_gather<A: Act>(
        &self,
        out: &mut CpuBuf<A>,
        src: &CpuBuf<A>,
        ids: &CpuBuf<i32>,
        n: usize,
        c: usize,
        src_rows: usize,
    ) -> Result<()> {
        let op = "row_gather";
        let ids = pre(op, "ids", ids, n)?;
        ops::gather::check_ids(op, ids, src_rows, false)?;
        let src = wide(op, "src", src, src_rows * c)?;
        narrow(op, "out", out, n * c, |out| {
            ops::gather::row_gather(out, &src, ids, c)
        })
    }

    fn row_scatter_add<A: Act>(
        &self,
        dst: &mut CpuBuf<A>,
        src: &CpuBuf<A>,
        ids: &CpuBuf<i32>,
        n: usize,
        c: usize,
        dst_rows: usize,
    ) -> Result<()> {
        let op = "row_scatter_add";
        let ids = pre(op, "ids", ids, n)?;
        ops::gather::check_ids(op, ids, dst_rows, true)?;
        let src = wide(op, "src", src, n * c)?;
        narrow(op, "dst", dst, dst_rows * c, |dst| {
            ops::gather::row_scatter_add(dst, &src, ids, c)
        })
    }

    fn matmul_forward<A: Act>(
        &self,
        out: &mut CpuBuf<A>,
        inp: &CpuBuf<A>,
        weight: &CpuBuf<A>,
        bias: Option<&CpuBuf<f32>>,
        rows: usize,
        cin: usize,
        cout: usize,
        layout: WeightLayout,
    ) -> Result<()> {
        let op = "matmul_forward";
        let s = MatmulShape {
            rows,
            cin,
            cout,
            layout,
        };
        let bias_len = bias.map(|b| b.0.len());
        s.check_forward(op, out.0.len(), inp.0.len(), weight.0.len(), bias_len)?;
        let (ni, no, nw) = s.sizes(op)?;
        let b = bias.map(|b| &b.0[..cout]);
        let (inp, w) = (wide(op, "inp", inp, ni)?, wide(op, "weight", weight, nw)?);
        // bf16: exact f32 products of the widened inputs, f32 sums, the bias added in f32 and
        // one rounding of the result (a tensor-core GEMM with a bias epilogue)
        narrow(op, "out", out, no, |out| {
            ops::matmul::matmul_forward(out, &inp, &w, b, rows, cin, cout, layout)
        })
    }

    fn matmul_backward<A: Act>(
        &self,
        dinp: Option<&mut CpuBuf<A>>,
        dweight: Option<&mut CpuBuf<f32>>,
        dbias: Option<&mut CpuBuf<f32>>,
        dout: &CpuBuf<A>,
        inp: &CpuBuf<A>,
        weight: &CpuBuf<A>,
        rows: usize,
        cin: usize,
        cout: usize,
        layout: WeightLayout,
    ) -> Result<()> {
        let op = "matmul_backward";
        let s = MatmulShape {
            rows,
            cin,
            cout,
            layout,
        };
        let (ld, lw, lb) = (
            dinp.as_ref().map(|b| b.0.len()),
            dweight.as_ref().map(|b| b.0.len()),
            dbias.as_ref().map(|b| b.0.len()),
        );
        s.check_backward(op, ld, lw, lb, dout.0.len(), inp.0.len(), weight.0.len())?;
        let (ni, no, nw) = s.sizes(op)?;
        let dweight = dweight.map(|d| &mut d.0[..nw]);
        let dbias = dbias.map(|d| &mut d.0[..cout]);
        let dout = wide(op, "dout", dout, no)?;
        let inp = wide(op, "inp", inp, ni)?;
        let w = wide(op, "weight", weight, nw)?;
        let run = |dinp: Option<&mut [f32]>| {
            ops::matmul::matmul_backward(
                dinp, dweight, dbias, &dout, &inp, &w, rows, cin, cout, layout,
            )
        };
        match dinp {
            Some(d) => narrow(op, "dinp", d, ni, |d| run(Some(d))),
            None => {
                run(None);
                Ok(())
            }
        }
    }

    fn layernorm_forward<A: Act>(
        &self,
        out: &mut CpuBuf<A>,
        mean: &mut CpuBuf<f32>,
        rstd: &mut CpuBuf<f32>,
        inp: &CpuBuf<A>,
        weight: &CpuBuf<f32>,
        bias: &CpuBuf<f32>,
        rows: usize,
        c: usize,
        eps: f32,
    ) -> Result<()> {
        let op = "layernorm_forward";
        let s = LnShape { rows, c };
        let (lm, lr) = (Some(mean.0.len()), Some(rstd.0.len()));
        let (lo, li, lw, lb) = (out.0.len(), inp.0.len(), weight.0.len(), bias.0.len());
        s.check_forward(op, lo, lm, lr, li, lw, lb)?;
        let n = s.n(op)?;
        let inp = wide(op, "inp", inp, n)?;
        narrow(op, "out", out, n, |out| {
            ops::layernorm::layernorm_forward(
                out,
                &mut mean.0[..rows],
                &mut rstd.0[..rows],
                &inp,
                &weight.0[..c],
                &bias.0[..c],
                rows,
                c,
                eps,
            )
        })
    }

    fn layernorm_backward<A: Act>(
        &self,
        dinp: &mut CpuBuf<A>,
        dweight: Option<&mut CpuBuf<f32>>,
        dbias: Option<&mut CpuBuf<f32>>,
        dout: &CpuBuf<A>,
        inp: &CpuBuf<A>,
        weight: &CpuBuf<f32>,
        mean: &CpuBuf<f32>,
        rstd: &CpuBuf<f32>,
        rows: usize,
        c: usize,
    ) -> Result<()> {
        let op = "layernorm_backward";
        let s = LnShape { rows, c };
        let len = |b: &Option<&mut CpuBuf<f32>>| b.as_ref().map(|b| b.0.len());
        let (lw, lb) = (len(&dweight), len(&dbias));
        let (ldi, ldo, li) = (dinp.0.len(), dout.0.len(), inp.0.len());
        let (lwt, lm, lr) = (weight.0.len(), mean.0.len(), rstd.0.len());
        s.check_backward(op, ldi, lw, lb, ldo, li, lwt, lm, lr)?;
        let n = s.n(op)?;
        // The reference always produces weight gradients; frozen ones land in scratch (c floats).
        let (mut scratch_w, mut scratch_b) = (Vec::new(), Vec::new());
        let dw = pre_mut_or_scratch(op, "dweight", dweight, c, &mut scratch_w)?;
        let db = pre_mut_or_scratch(op, "dbias", dbias, c, &mut scratch_b)?;
        let (dout, inp) = (wide(op, "dout", dout, n)?, wide(op, "inp", inp, n)?);
        // dinp accumulates (+=): the sum is formed in f32 and rounded once
        narrow(op, "dinp", dinp, n, |dinp| {
            ops::layernorm::layernorm_backward(
                dinp,
                dw,
                db,
                &dout,
                &inp,
                &weight.0[..c],
                &mean.0[..rows],
                &rstd.0[..rows],
                rows,
                c,
            )
        })
    }

    /// The CPU keeps the softmax probabilities (B, NH, L, L).
    fn attention_state_len(&self, s: AttnShape) -> usize {
        s.b * s.nh * s.l * s.l
    }

    fn attention_forward<A: Act>(
        &self,
        out: &mut CpuBuf<A>,
        att: &mut CpuBuf<f32>,
        qkv: &CpuBuf<A>,
        key_mask: Option<&CpuBuf<i32>>,
        dropout: Option<DropoutSite>,
        s: AttnShape,
    ) -> Result<()> {
        let op = "attention_forward";
        check_heads(op, &s)?;
        let mask = key_mask
            .map(|m| pre(op, "key_mask", m, s.b * s.l))
            .transpose()?;
        let att = pre_mut(op, "att", att, s.b * s.nh * s.l * s.l)?;
        let qkv = wide(op, "qkv", qkv, s.b * s.l * 3 * s.c)?;
        narrow(op, "out", out, s.b * s.l * s.c, |out| {
            ops::attention::attention_forward(out, att, &qkv, mask, dropout.as_ref(), s)
        })
    }

    fn attention_backward<A: Act>(
        &self,
        dqkv: &mut CpuBuf<A>,
        dout: &CpuBuf<A>,
        qkv: &CpuBuf<A>,
        out: &CpuBuf<A>,
        att: &CpuBuf<f32>,
        key_mask: Option<&CpuBuf<i32>>,
        dropout: Option<DropoutSite>,
        s: AttnShape,
    ) -> Result<()> {
        let op = "attention_backward";
        check_heads(op, &s)?;
        // The saved probabilities already carry the masks, and the backward needs no `out`; both
        // are checked so a caller that passes them wrong fails here as it would on the GPU.
        pre(op, "out", out, s.b * s.l * s.c)?;
        if let Some(m) = key_mask {
            pre(op, "key_mask", m, s.b * s.l)?;
        }
        let dout = wide(op, "dout", dout, s.b * s.l * s.c)?;
        let qkv = wide(op, "qkv", qkv, s.b * s.l * 3 * s.c)?;
        let att = pre(op, "att", att, s.b * s.nh * s.l * s.l)?;
        narrow(op, "dqkv", dqkv, s.b * s.l * 3 * s.c, |dqkv| {
            ops::attention::attention_backward(dqkv, &dout, &qkv, att, dropout.as_ref(), s)
        })
    }

    fn attention_cached_forward<A: Act>(
        &self,
        out: &mut CpuBuf<A>,
        qkv: &CpuBuf<A>,
        k_cache: &mut CpuBuf<A>,
        v_cache: &mut CpuBuf<A>,
        start: usize,
        n: usize,
        lmax: usize,
        s: AttnShape,
    ) -> Result<()> {
        let op = "attention_cached_forward";
        check_heads(op, &s)?;
        if start + n > lmax {
            bail!(
                "{op}: positions {start}..{} exceed the cache length {lmax}",
                start + n
            );
        }
        let cache = s.b * lmax * s.c;
        let qkv = wide(op, "qkv", qkv, s.b * n * 3 * s.c)?;
        // the cache holds A values: appending rounds k and v as a bf16 kernel's store does
        let out = pre_mut(op, "out", out, s.b * n * s.c)?;
        let (kc, vc) = (
            pre_mut(op, "k_cache", k_cache, cache)?,
            pre_mut(op, "v_cache", v_cache, cache)?,
        );
        A::with_f32_mut(kc, |kc| {
            A::with_f32_mut(vc, |vc| {
                A::with_f32_mut(out, |out| {
                    ops::attention::attention_cached_forward(out, &qkv, kc, vc, start, n, lmax, s)
                })
            })
        });
        Ok(())
    }

    fn gelu_forward<A: Act>(&self, out: &mut CpuBuf<A>, inp: &CpuBuf<A>, n: usize) -> Result<()> {
        let op = "gelu_forward";
        let inp = wide(op, "inp", inp, n)?;
        narrow(op, "out", out, n, |out| ops::gelu::gelu_forward(out, &inp))
    }

    fn gelu_backward<A: Act>(
        &self,
        dinp: &mut CpuBuf<A>,
        inp: &CpuBuf<A>,
        dout: &CpuBuf<A>,
        n: usize,
    ) -> Result<()> {
        let op = "gelu_backward";
        let (inp, dout) = (wide(op, "inp", inp, n)?, wide(op, "dout", dout, n)?);
        narrow(op, "dinp", dinp, n, |d| {
            ops::gelu::gelu_backward(d, &inp, &dout)
        })
    }

    fn residual_forward<A: Act>(
        &self,
        out: &mut CpuBuf<A>,
        a: &CpuBuf<A>,
        b: &CpuBuf<A>,
        n: usize,
    ) -> Result<()> {
        let op = "residual_forward";
        let (a, b) = (wide(op, "a", a, n)?, wide(op, "b", b, n)?);
        narrow(op, "out", out, n, |out| {
            ops::residual::residual_forward(out, &a, &b)
        })
    }

    fn dropout_forward<A: Act>(
        &self,
        out: &mut CpuBuf<A>,
        inp: &CpuBuf<A>,
        site: DropoutSite,
        n: usize,
    ) -> Result<()> {
        let op = "dropout_forward";
        if !(0.0..1.0).contains(&site.p) {
            bail!("{op}: probability {} outside [0, 1)", site.p);
        }
        let inp = wide(op, "inp", inp, n)?;
        narrow(op, "out", out, n, |out| {
            ops::dropout::dropout_forward(out, &inp, &site)
        })
    }

    fn sigmoid_forward<A: Act>(
        &self,
        out: &mut CpuBuf<A>,
        inp: &CpuBuf<A>,
        n: usize,
    ) -> Result<()> {
        let op = "sigmoid_forward";
        let inp = wide(op, "inp", inp, n)?;
        narrow(op, "out", out, n, |out| {
            ops::rating::sigmoid_forward(out, &inp)
        })
    }

    fn sigmoid_backward<A: Act>(
        &self,
        dinp: &mut CpuBuf<A>,
        out: &CpuBuf<A>,
        dout: &CpuBuf<A>,
        n: usize,
    ) -> Result<()> {
        let op = "sigmoid_backward";
        let (out, dout) = (wide(op, "out", out, n)?, wide(op, "dout", dout, n)?);
        narrow(op, "dinp", dinp, n, |d| {
            ops::rating::sigmoid_backward(d, &out, &dout)
        })
    }

    fn crossentropy_forward<A: Act>(
        &self,
        losses: &mut CpuBuf<f32>,
        logits: &mut CpuBuf<A>,
        targets: &CpuBuf<i32>,
        rows: usize,
        v: usize,
        dscale: Option<f32>,
    ) -> Result<()> {
        let op = "crossentropy_forward";
        let targets = pre(op, "targets", targets, rows)?;
        if let Some(bad) = targets.iter().find(|&&t| t >= v as i32) {
            bail!("{op}: target {bad} outside the vocabulary of {v}");
        }
        let losses = pre_mut(op, "losses", losses, rows)?;
        // dlogits replace the logits in place, rounded to A
        narrow(op, "logits", logits, rows * v, |logits| {
            ops::crossentropy::crossentropy_forward(losses, logits, targets, rows, v, dscale)
        })
    }

    fn argmax<A: Act>(
        &self,
        out: &mut CpuBuf<i32>,
        logits: &CpuBuf<A>,
        rows: usize,
        v: usize,
    ) -> Result<()> {
        let op = "argmax";
        let logits = wide(op, "logits", logits, rows * v)?;
        ops::crossentropy::argmax_forward(pre_mut(op, "out", out, rows)?, &logits, rows, v);
        Ok(())
    }

    fn rating_mf_forward<A: Act>(
        &self,
        out: &mut CpuBuf<A>,
        ui: &CpuBuf<A>,
        b: usize,
        c: usize,
    ) -> Result<()> {
        let op = "rating_mf_forward";
        let ui = wide(op, "ui", ui, b * 2 * c)?;
        narrow(op, "out", out, b, |out| {
            ops::rating::rating_mf_forward(out, &ui, b, c)
        })
    }

    fn rating_mf_backward<A: Act>(
        &self,
        dui: &mut CpuBuf<A>,
        dpred: &CpuBuf<A>,
        ui: &CpuBuf<A>,
        b: usize,
        c: usize,
    ) -> Result<()> {
        let op = "rating_mf_backward";
        let (dpred, ui) = (wide(op, "dpred", dpred, b)?, wide(op, "ui", ui, b * 2 * c)?);
        narrow(op, "dui", dui, b * 2 * c, |dui| {
            ops::rating::rating_mf_backward(dui, &dpred, &ui, b, c)
        })
    }

    fn crossentropy_mean(
        &self,
        out: &mut CpuBuf<f32>,
        slot: usize,
        losses: &CpuBuf<f32>,
        targets: &CpuBuf<i32>,
        rows: usize,
    ) -> Result<()> {
        let op = "crossentropy_mean";
        let mean = ops::crossentropy::crossentropy_mean(
            pre(op, "losses", losses, rows)?,
            pre(op, "targets", targets, rows)?,
        );
        pre_mut(op, "out", out, slot + 1)?[slot] = mean;
        Ok(())
    }

    fn mse_forward<A: Act>(
        &self,
        loss: &mut CpuBuf<f32>,
        slot: usize,
        dpred: &mut CpuBuf<A>,
        pred: &CpuBuf<A>,
        target: &CpuBuf<f32>,
        n: usize,
        grad_scale: f32,
    ) -> Result<()> {
        let op = "mse_forward";
        if n == 0 {
            bail!("{op}: empty batch");
        }
        let pred = wide(op, "pred", pred, n)?;
        let target = pre(op, "target", target, n)?;
        let mse = narrow(op, "dpred", dpred, n, |dpred| {
            ops::rating::mse_forward(dpred, &pred, target, grad_scale)
        })?;
        pre_mut(op, "loss", loss, slot + 1)?[slot] = mse;
        Ok(())
    }

    fn global_norm(&self, out: &mut CpuBuf<f32>, slot: usize, group: &[CpuBuf<f32>]) -> Result<()> {
        let all: Vec<f32> = group.iter().flat_map(|b| b.0.iter().copied()).collect();
        pre_mut("global_norm", "out", out, slot + 1)?[slot] = ops::global_norm::global_norm(&all);
        Ok(())
    }

    fn clip_group(
        &self,
        group: &mut [CpuBuf<f32>],
        norm: &CpuBuf<f32>,
        slot: usize,
        max_norm: f32,
    ) -> Result<()> {
        let norm = pre("clip_group", "norm", norm, slot + 1)?[slot];
        for b in group {
            ops::global_norm::scale_by_clip(&mut b.0, norm, max_norm);
        }
        Ok(())
    }

    fn cast<A: Act>(&self, dst: &mut CpuBuf<A>, src: &CpuBuf<f32>, n: usize) -> Result<()> {
        A::narrow_into(pre_mut("cast", "dst", dst, n)?, pre("cast", "src", src, n)?);
        Ok(())
    }

    fn adamw_update(
        &self,
        param: &mut CpuBuf<f32>,
        grad: &CpuBuf<f32>,
        m: &mut CpuBuf<f32>,
        v: &mut CpuBuf<f32>,
        hp: AdamWParams,
        step: u64,
    ) -> Result<()> {
        let op = "adamw_update";
        if step == 0 {
            bail!("{op}: steps count from 1");
        }
        let n = param.0.len();
        // The references take the scalars as f64 (torch computes them as Python floats).
        let update = match hp.variant {
            AdamWVariant::Torch => ops::adamw::adamw_update,
            AdamWVariant::Hf => ops::adamw::adamw_update_hf,
        };
        update(
            &mut param.0,
            pre(op, "grad", grad, n)?,
            pre_mut(op, "m", m, n)?,
            pre_mut(op, "v", v, n)?,
            hp.lr,
            hp.beta1,
            hp.beta2,
            hp.eps,
            hp.weight_decay,
            step,
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_buffers_are_errors_that_name_the_op() {
        let be = CpuBackend::new();
        let mut out = be.alloc::<f32>(3).unwrap();
        let inp = be.upload(&[1.0f32; 4]).unwrap();
        let err = be.gelu_forward(&mut out, &inp, 4).unwrap_err().to_string();
        assert!(err.contains("gelu_forward") && err.contains("out"), "{err}");
    }
}
