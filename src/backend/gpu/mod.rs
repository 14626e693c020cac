//! The GPU backend: the `Backend` trait on a [`Device`] — a real GPU (cudarc) or the emulated
//! device (the same `kernels/*.cu` compiled for the host) — so the model written once in
//! `crate::model` runs every operation of a PEPLER training step and of decoding in our kernels.
//!
//! Each method checks nothing itself: it hands views of its buffers to the typed launcher of the
//! same name in `crate::kernels::<op>`, which checks the sizes against the shape (one check per
//! op, shared by the CUDA and emulated devices), slices every view to what the launch may touch and
//! launches. What is GPU-specific lives here:
//! - **Buffers** ([`GpuBuf`]): parameters, gradients and AdamW moments are groups in one
//!   allocation each (`alloc_group`), so zeroing all gradients is one memset and the optimizer
//!   step is one multi-tensor launch (`kernels::adamw::adamw_update_multi`).
//! - **Workspace**: the scratch that reductions need (layernorm, bias gradient, embedding
//!   backward, attention backward) comes from one backend-owned buffer per element type that grows
//!   to the largest request and is then reused: after the first step of a shape, a step allocates
//!   nothing ([`GpuBackend::allocations`] counts, a test checks).
//! - **Attention state**: the per-row log-sum-exp (B, NH, L); the backward recomputes the
//!   probabilities from it (never an L×L matrix in device memory).
//! - **Host reads**: none per op; the model reads its loss scalars once per step.
//! - **Ids** are validated on the host (`Batch::validate`) before upload; kernels skip an
//!   out-of-range id instead of writing out of bounds (see each kernel's header).

pub mod buf;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use anyhow::{bail, Result};

pub use buf::GpuBuf;

use super::{
    Act, AdamWParams, AttnShape, Backend, DropoutSite, Element, EmbedShape, GroupTensor,
    StepValues, WeightLayout,
};
use crate::device::{Device, DeviceBuffer, StepScalars, ViewMut};
use crate::kernels::{
    adamw, attention, classifier, dropout, embedding, gather, gelu, global_norm, layernorm, matmul,
    rating, residual,
};

/// Scratch buffers grown on demand and reused (see the module docs).
#[derive(Default)]
struct Workspace {
    f32s: Option<DeviceBuffer<f32>>,
    i32s: Option<DeviceBuffer<i32>>,
}

/// The multi-tensor AdamW work table for one set of flags, kept until the flags change.
struct AdamWCache {
    key: Vec<(usize, usize, GroupTensor)>,
    plan: adamw::AdamWPlan,
}

/// The GPU backend over one device (see the module docs).
pub struct GpuBackend {
    dev: Device,
    ws: Mutex<Workspace>,
    adamw: Mutex<Option<AdamWCache>>,
    allocations: AtomicUsize,
    /// Bumped whenever backend-owned memory a graph may hold (workspace, AdamW table) is
    /// reallocated: graphs captured before are stale.
    generation: AtomicU64,
}

/// A captured step on this backend, valid while the backend's own buffers are the ones it used.
pub struct GpuGraph {
    graph: crate::device::Graph,
    generation: u64,
}

impl GpuBackend {
    pub fn new(dev: Device) -> Self {
        GpuBackend {
            dev,
            ws: Mutex::new(Workspace::default()),
            adamw: Mutex::new(None),
            allocations: AtomicUsize::new(0),
            generation: AtomicU64::new(0),
        }
    }

    /// The device the backend launches on.
    pub fn device(&self) -> &Device {
        &self.dev
    }

    /// Device allocations made so far (buffers, groups, workspace growth, AdamW tables).
    pub fn allocations(&self) -> usize {
        self.allocations.load(Ordering::Relaxed)
    }

    fn count_alloc(&self) {
        self.allocations.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a reallocation of backend-owned memory (see `generation`).
    fn count_realloc(&self) {
        self.count_alloc();
        self.generation.fetch_add(1, Ordering::Relaxed);
    }

    /// Runs `f` with at least `nf` f32 and `ni` i32 elements of workspace (exactly that many are
    /// passed: launchers slice to what they use).
    fn with_scratch<R>(
        &self,
        nf: usize,
        ni: usize,
        f: impl FnOnce(ViewMut<'_, f32>, ViewMut<'_, i32>) -> Result<R>,
    ) -> Result<R> {
        let mut ws = self
            .ws
            .lock()
            .map_err(|_| anyhow::anyhow!("GPU backend workspace poisoned by an earlier panic"))?;
        if ws.f32s.as_ref().is_none_or(|b| b.len() < nf) {
            ws.f32s = None; // free before allocating the larger one
            ws.f32s = Some(self.dev.alloc(nf.max(1))?);
            self.count_realloc();
        }
        if ws.i32s.as_ref().is_none_or(|b| b.len() < ni) {
            ws.i32s = None;
            ws.i32s = Some(self.dev.alloc(ni.max(1))?);
            self.count_realloc();
        }
        let Workspace { f32s, i32s } = &mut *ws;
        let fs = f32s.as_mut().expect("allocated above").slice_mut(..nf);
        let is = i32s.as_mut().expect("allocated above").slice_mut(..ni);
        f(fs, is)
    }
}

/// The writable view of an optional output.
fn opt_mut<T: Element>(b: Option<&mut GpuBuf<T>>) -> Option<ViewMut<'_, T>> {
    b.map(|b| b.view_mut())
}

/// A group of `A` buffers as the bf16 group it is (the weight copies of bf16 training).
fn bf16_group_mut<A: Act>(bufs: &mut [GpuBuf<A>]) -> Result<&mut [GpuBuf<half::bf16>]> {
    if std::any::TypeId::of::<A>() != std::any::TypeId::of::<half::bf16>() {
        bail!("weight copies must be bf16, not {:?}", A::DTYPE);
    }
    // SAFETY: A is half::bf16 (same TypeId, checked above), so the slice's element type is
    // exactly GpuBuf<half::bf16>.
    Ok(unsafe { &mut *(bufs as *mut [GpuBuf<A>] as *mut [GpuBuf<half::bf16>]) })
}

/// The single element `slot` of a device scalar buffer, writable.
fn slot_mut<'a>(op: &str, b: &'a mut GpuBuf<f32>, slot: usize) -> Result<ViewMut<'a, f32>> {
    if slot >= b.len() {
        bail!("{op}: slot {slot} outside a buffer of {} elements", b.len());
    }
    Ok(b.slice_mut(slot..slot + 1))
}

impl Backend for GpuBackend {
    type Buf<T: Element> = GpuBuf<T>;
    type Graph = GpuGraph;

    fn has_graphs(&self) -> bool {
        true
    }

    fn set_step_values(&self, s: &StepValues) -> Result<()> {
        let adamw = match &s.adamw {
            Some((hp, step)) => adamw::step_factors(hp, *step)?,
            None => [0.0; 8],
        };
        self.dev.set_step_scalars(&StepScalars {
            dropout_step: s.dropout_step,
            adamw,
            dscale: s.dscale,
        })
    }

    fn capture(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<GpuGraph> {
        let generation = self.generation.load(Ordering::Relaxed);
        let graph = self.dev.capture(f)?;
        if self.generation.load(Ordering::Relaxed) != generation {
            bail!("the step reallocated backend memory while it was captured");
        }
        Ok(GpuGraph { graph, generation })
    }

    unsafe fn replay(&self, g: &GpuGraph) -> Result<bool> {
        if g.generation != self.generation.load(Ordering::Relaxed) {
            return Ok(false);
        }
        // SAFETY: the caller keeps its buffers alive; the backend's own (workspace, AdamW table)
        // are the ones captured, as the generation shows.
        unsafe { g.graph.launch()? };
        Ok(true)
    }

    fn name(&self) -> String {
        format!("{} ({})", self.dev.kind(), self.dev.name())
    }

    // ---------------------------------------------------------------- memory
    fn alloc<T: Element>(&self, len: usize) -> Result<GpuBuf<T>> {
        self.count_alloc();
        Ok(GpuBuf::whole(self.dev.alloc(len)?))
    }

    fn upload<T: Element>(&self, data: &[T]) -> Result<GpuBuf<T>> {
        self.count_alloc();
        Ok(GpuBuf::whole(self.dev.upload(data)?))
    }

    fn write<T: Element>(&self, dst: &mut GpuBuf<T>, data: &[T]) -> Result<()> {
        if dst.len() < data.len() {
            bail!(
                "write: {} elements into a buffer of {}",
                data.len(),
                dst.len()
            );
        }
        self.dev.htod(data, dst.view_mut().slice_mut(..data.len()))
    }

    fn download<T: Element>(&self, src: &GpuBuf<T>, len: usize) -> Result<Vec<T>> {
        if src.len() < len {
            bail!("download: {len} elements from a buffer of {}", src.len());
        }
        self.dev.download(src.view().slice(..len))
    }

    fn len<T: Element>(&self, buf: &GpuBuf<T>) -> usize {
        buf.len()
    }

    fn zero<T: Element>(&self, buf: &mut GpuBuf<T>) -> Result<()> {
        self.dev.zero(buf.view_mut())
    }

    fn synchronize(&self) -> Result<()> {
        self.dev.synchronize()
    }

    fn alloc_group<T: Element>(&self, lens: &[usize]) -> Result<Vec<GpuBuf<T>>> {
        self.count_alloc();
        let mem = self.dev.alloc::<T>(buf::group_len(lens))?;
        Ok(GpuBuf::group(mem, lens))
    }

    fn zero_group(&self, bufs: &mut [GpuBuf<f32>]) -> Result<()> {
        match buf::arena_view_mut(bufs) {
            // one memset over the whole arena (alignment gaps are zero already)
            Some(all) => self.dev.zero(all),
            None => bufs.iter_mut().try_for_each(|b| self.zero(b)),
        }
    }

    // ---------------------------------------------------------------- encoder
    fn embedding_forward<A: Act>(
        &self,
        out: &mut GpuBuf<A>,
        table: &GpuBuf<f32>,
        ids: &GpuBuf<i32>,
        wpe: Option<&GpuBuf<f32>>,
        s: EmbedShape,
    ) -> Result<()> {
        let wpe = wpe.map(|w| w.view());
        embedding::embedding_forward(&self.dev, out.view_mut(), table.view(), ids.view(), wpe, s)
    }

    fn embedding_backward<A: Act>(
        &self,
        dtable: Option<&mut GpuBuf<f32>>,
        dwpe: Option<&mut GpuBuf<f32>>,
        dout: &GpuBuf<A>,
        ids: &GpuBuf<i32>,
        s: EmbedShape,
    ) -> Result<()> {
        let ni = embedding::embedding_backward_scratch_len(&s);
        self.with_scratch(0, ni, |_, scratch| {
            embedding::embedding_backward(
                &self.dev,
                opt_mut(dtable),
                opt_mut(dwpe),
                scratch,
                dout.view(),
                ids.view(),
                s,
            )
        })
    }

    fn row_gather<A: Act>(
        &self,
        out: &mut GpuBuf<A>,
        src: &GpuBuf<A>,
        ids: &GpuBuf<i32>,
        n: usize,
        c: usize,
        src_rows: usize,
    ) -> Result<()> {
        gather::row_gather(
            &self.dev,
            out.view_mut(),
            src.view(),
            ids.view(),
            n,
            c,
            src_rows,
        )
    }

    fn row_scatter_add<A: Act>(
        &self,
        dst: &mut GpuBuf<A>,
        src: &GpuBuf<A>,
        ids: &GpuBuf<i32>,
        n: usize,
        c: usize,
        dst_rows: usize,
    ) -> Result<()> {
        gather::row_scatter_add(
            &self.dev,
            dst.view_mut(),
            src.view(),
            ids.view(),
            n,
            c,
            dst_rows,
        )
    }

    // ---------------------------------------------------------------- dense layers
    fn matmul_forward<A: Act>(
        &self,
        out: &mut GpuBuf<A>,
        inp: &GpuBuf<A>,
        weight: &GpuBuf<A>,
        bias: Option<&GpuBuf<f32>>,
        rows: usize,
        cin: usize,
        cout: usize,
        layout: WeightLayout,
    ) -> Result<()> {
        matmul::matmul_forward(
            &self.dev,
            out.view_mut(),
            inp.view(),
            weight.view(),
            bias.map(|b| b.view()),
            rows,
            cin,
            cout,
            layout,
        )
    }

    fn matmul_backward<A: Act>(
        &self,
        dinp: Option<&mut GpuBuf<A>>,
        dweight: Option<&mut GpuBuf<f32>>,
        dbias: Option<&mut GpuBuf<f32>>,
        dout: &GpuBuf<A>,
        inp: &GpuBuf<A>,
        weight: &GpuBuf<A>,
        rows: usize,
        cin: usize,
        cout: usize,
        layout: WeightLayout,
    ) -> Result<()> {
        let nf = if dbias.is_some() {
            matmul::matmul_backward_scratch_len(rows, cout)
        } else {
            0
        };
        self.with_scratch(nf, 0, |scratch, _| {
            matmul::matmul_backward(
                &self.dev,
                opt_mut(dinp),
                opt_mut(dweight),
                opt_mut(dbias),
                scratch,
                dout.view(),
                inp.view(),
                weight.view(),
                rows,
                cin,
                cout,
                layout,
            )
        })
    }

    fn matmul_bias_gelu_forward<A: Act>(
        &self,
        pre: &mut GpuBuf<A>,
        out: &mut GpuBuf<A>,
        inp: &GpuBuf<A>,
        weight: &GpuBuf<A>,
        bias: &GpuBuf<f32>,
        rows: usize,
        cin: usize,
        cout: usize,
        layout: WeightLayout,
    ) -> Result<()> {
        match (
            pre.typed_mut::<f32>(),
            out.typed_mut::<f32>(),
            inp.typed::<f32>(),
            weight.typed::<f32>(),
        ) {
            // f32: the GEMM alone, then one pass that adds the bias and applies GELU
            (Some(pre), Some(out), Some(inp), Some(weight)) => {
                self.matmul_forward(pre, inp, weight, None, rows, cin, cout, layout)?;
                let (p, o, b) = (pre.view_mut(), out.view_mut(), bias.view());
                gelu::bias_gelu_forward(&self.dev, p, o, b, rows, cout)
            }
            // bf16: the GEMM's bias epilogue rounds `pre` once, then GELU
            _ => {
                self.matmul_forward(pre, inp, weight, Some(bias), rows, cin, cout, layout)?;
                self.gelu_forward(out, pre, rows * cout)
            }
        }
    }

    // ---------------------------------------------------------------- layernorm
    fn layernorm_forward<A: Act>(
        &self,
        out: &mut GpuBuf<A>,
        mean: &mut GpuBuf<f32>,
        rstd: &mut GpuBuf<f32>,
        inp: &GpuBuf<A>,
        weight: &GpuBuf<f32>,
        bias: &GpuBuf<f32>,
        rows: usize,
        c: usize,
        eps: f32,
    ) -> Result<()> {
        layernorm::layernorm_forward(
            &self.dev,
            out.view_mut(),
            Some(mean.view_mut()),
            Some(rstd.view_mut()),
            inp.view(),
            weight.view(),
            bias.view(),
            rows,
            c,
            eps,
        )
    }

    fn layernorm_backward<A: Act>(
        &self,
        dinp: &mut GpuBuf<A>,
        dweight: Option<&mut GpuBuf<f32>>,
        dbias: Option<&mut GpuBuf<f32>>,
        dout: &GpuBuf<A>,
        inp: &GpuBuf<A>,
        weight: &GpuBuf<f32>,
        mean: &GpuBuf<f32>,
        rstd: &GpuBuf<f32>,
        rows: usize,
        c: usize,
    ) -> Result<()> {
        let nf = if dweight.is_some() || dbias.is_some() {
            layernorm::layernorm_backward_scratch_len(rows, c)?
        } else {
            0
        };
        self.with_scratch(nf, 0, |scratch, _| {
            layernorm::layernorm_backward(
                &self.dev,
                dinp.view_mut(),
                opt_mut(dweight),
                opt_mut(dbias),
                scratch,
                dout.view(),
                inp.view(),
                weight.view(),
                mean.view(),
                rstd.view(),
                rows,
                c,
            )
        })
    }

    // ---------------------------------------------------------------- attention
    /// The per-row log-sum-exp (B, NH, L).
    fn attention_state_len(&self, s: AttnShape) -> usize {
        s.b * s.nh * s.l
    }

    fn attention_forward<A: Act>(
        &self,
        out: &mut GpuBuf<A>,
        state: &mut GpuBuf<f32>,
        qkv: &GpuBuf<A>,
        key_mask: Option<&GpuBuf<i32>>,
        dropout: Option<DropoutSite>,
        s: AttnShape,
    ) -> Result<()> {
        attention::attention_forward(
            &self.dev,
            out.view_mut(),
            state.view_mut(),
            qkv.view(),
            key_mask.map(|m| m.view()),
            dropout,
            s,
        )
    }

    fn attention_backward<A: Act>(
        &self,
        dqkv: &mut GpuBuf<A>,
        dout: &GpuBuf<A>,
        qkv: &GpuBuf<A>,
        out: &GpuBuf<A>,
        state: &GpuBuf<f32>,
        key_mask: Option<&GpuBuf<i32>>,
        dropout: Option<DropoutSite>,
        s: AttnShape,
    ) -> Result<()> {
        let nf = attention::attention_backward_scratch_len(s)?;
        self.with_scratch(nf, 0, |scratch, _| {
            attention::attention_backward(
                &self.dev,
                dqkv.view_mut(),
                dout.view(),
                qkv.view(),
                out.view(),
                state.view(),
                key_mask.map(|m| m.view()),
                dropout,
                s,
                scratch,
            )
        })
    }

    fn attention_cached_forward<A: Act>(
        &self,
        out: &mut GpuBuf<A>,
        qkv: &GpuBuf<A>,
        k_cache: &mut GpuBuf<A>,
        v_cache: &mut GpuBuf<A>,
        start: usize,
        n: usize,
        lmax: usize,
        s: AttnShape,
    ) -> Result<()> {
        attention::attention_cached_forward(
            &self.dev,
            out.view_mut(),
            qkv.view(),
            k_cache.view_mut(),
            v_cache.view_mut(),
            start,
            n,
            lmax,
            s,
        )
    }

    // ---------------------------------------------------------------- pointwise
    fn gelu_forward<A: Act>(&self, out: &mut GpuBuf<A>, inp: &GpuBuf<A>, n: usize) -> Result<()> {
        gelu::gelu_forward(&self.dev, out.view_mut(), inp.view(), n)
    }

    fn gelu_backward<A: Act>(
        &self,
        dinp: &mut GpuBuf<A>,
        inp: &GpuBuf<A>,
        dout: &GpuBuf<A>,
        n: usize,
    ) -> Result<()> {
        gelu::gelu_backward(&self.dev, dinp.view_mut(), inp.view(), dout.view(), n)
    }

    fn residual_forward<A: Act>(
        &self,
        out: &mut GpuBuf<A>,
        a: &GpuBuf<A>,
        b: &GpuBuf<A>,
        n: usize,
    ) -> Result<()> {
        residual::residual_forward(&self.dev, out.view_mut(), a.view(), b.view(), n)
    }

    fn dropout_forward<A: Act>(
        &self,
        out: &mut GpuBuf<A>,
        inp: &GpuBuf<A>,
        site: DropoutSite,
        n: usize,
    ) -> Result<()> {
        dropout::dropout_forward(&self.dev, out.view_mut(), inp.view(), site, n)
    }

    fn sigmoid_forward<A: Act>(
        &self,
        out: &mut GpuBuf<A>,
        inp: &GpuBuf<A>,
        n: usize,
    ) -> Result<()> {
        rating::sigmoid_forward(&self.dev, out.view_mut(), inp.view(), n)
    }

    fn sigmoid_backward<A: Act>(
        &self,
        dinp: &mut GpuBuf<A>,
        out: &GpuBuf<A>,
        dout: &GpuBuf<A>,
        n: usize,
    ) -> Result<()> {
        rating::sigmoid_backward(&self.dev, dinp.view_mut(), out.view(), dout.view(), n)
    }

    // ---------------------------------------------------------------- heads and losses
    fn crossentropy_forward<A: Act>(
        &self,
        losses: &mut GpuBuf<f32>,
        logits: &mut GpuBuf<A>,
        targets: &GpuBuf<i32>,
        rows: usize,
        v: usize,
        dscale: Option<f32>,
    ) -> Result<()> {
        classifier::crossentropy_forward(
            &self.dev,
            losses.view_mut(),
            logits.view_mut(),
            targets.view(),
            rows,
            v,
            dscale,
        )
    }

    fn crossentropy_mean(
        &self,
        out: &mut GpuBuf<f32>,
        slot: usize,
        losses: &GpuBuf<f32>,
        targets: &GpuBuf<i32>,
        rows: usize,
    ) -> Result<()> {
        let out = slot_mut("crossentropy_mean", out, slot)?;
        classifier::crossentropy_mean(&self.dev, out, losses.view(), targets.view(), rows)
    }

    fn argmax<A: Act>(
        &self,
        out: &mut GpuBuf<i32>,
        logits: &GpuBuf<A>,
        rows: usize,
        v: usize,
    ) -> Result<()> {
        classifier::argmax_forward(&self.dev, out.view_mut(), logits.view(), rows, v)
    }

    fn rating_mf_forward<A: Act>(
        &self,
        out: &mut GpuBuf<A>,
        ui: &GpuBuf<A>,
        b: usize,
        c: usize,
    ) -> Result<()> {
        rating::rating_mf_forward(&self.dev, out.view_mut(), ui.view(), b, c)
    }

    fn rating_mf_backward<A: Act>(
        &self,
        dui: &mut GpuBuf<A>,
        dpred: &GpuBuf<A>,
        ui: &GpuBuf<A>,
        b: usize,
        c: usize,
    ) -> Result<()> {
        rating::rating_mf_backward(&self.dev, dui.view_mut(), dpred.view(), ui.view(), b, c)
    }

    fn mse_forward<A: Act>(
        &self,
        loss: &mut GpuBuf<f32>,
        slot: usize,
        dpred: &mut GpuBuf<A>,
        pred: &GpuBuf<A>,
        target: &GpuBuf<f32>,
        n: usize,
        grad_scale: f32,
    ) -> Result<()> {
        let loss = slot_mut("mse_forward", loss, slot)?;
        rating::mse_forward(
            &self.dev,
            loss,
            dpred.view_mut(),
            pred.view(),
            target.view(),
            n,
            grad_scale,
        )
    }

    fn global_norm(&self, out: &mut GpuBuf<f32>, slot: usize, group: &[GpuBuf<f32>]) -> Result<()> {
        let out = slot_mut("global_norm", out, slot)?;
        let Some(all) = buf::arena_view(group) else {
            bail!("global_norm: the buffers are not one whole group (alloc_group)");
        };
        // Over the whole arena: the alignment gaps are zero (zero_group clears them, no op writes
        // them), so they add nothing to the sum of squares.
        let n = all.len();
        let nf = global_norm::global_norm_scratch_len(n);
        self.with_scratch(nf, 0, |scratch, _| {
            global_norm::global_norm(&self.dev, out, scratch, all, n)
        })
    }

    fn clip_group(
        &self,
        group: &mut [GpuBuf<f32>],
        norm: &GpuBuf<f32>,
        slot: usize,
        max_norm: f32,
    ) -> Result<()> {
        if slot >= norm.len() {
            bail!(
                "clip_group: slot {slot} outside a buffer of {} elements",
                norm.len()
            );
        }
        let norm = norm.view().slice(slot..slot + 1);
        match buf::arena_view_mut(group) {
            Some(all) => {
                let n = all.len();
                global_norm::scale_by_clip(&self.dev, all, norm, max_norm, n)
            }
            None => group.iter_mut().try_for_each(|b| {
                let n = b.len();
                global_norm::scale_by_clip(&self.dev, b.view_mut(), norm, max_norm, n)
            }),
        }
    }

    // ---------------------------------------------------------------- optimizer
    fn adamw_update(
        &self,
        param: &mut GpuBuf<f32>,
        grad: &GpuBuf<f32>,
        m: &mut GpuBuf<f32>,
        v: &mut GpuBuf<f32>,
        hp: AdamWParams,
        step: u64,
    ) -> Result<()> {
        let n = param.len();
        adamw::adamw_update(
            &self.dev,
            param.view_mut(),
            grad.view(),
            m.view_mut(),
            v.view_mut(),
            &hp,
            step,
            n,
        )
    }

    fn adamw_update_group<A: Act>(
        &self,
        params: &mut [GpuBuf<f32>],
        grads: &[GpuBuf<f32>],
        m: &mut [GpuBuf<f32>],
        v: &mut [GpuBuf<f32>],
        copies: &mut [GpuBuf<A>],
        tensors: &[GroupTensor],
        hp: AdamWParams,
        step: u64,
    ) -> Result<()> {
        let n = params.len();
        let copies_ok = copies.is_empty() || copies.len() == n;
        if grads.len() != n || m.len() != n || v.len() != n || tensors.len() != n || !copies_ok {
            bail!("adamw_update_group: groups of different sizes");
        }
        // One launch when the groups are whole arenas with the same layout (and the copies, if
        // any, a bf16 arena laid out like them); otherwise the per-tensor fallback.
        let same_layout = (0..n).all(|i| {
            let (o, l) = (params[i].offset(), params[i].len());
            let copy_same = copies
                .get(i)
                .is_none_or(|c| (c.offset(), c.len()) == (o, l));
            [grads[i].offset(), m[i].offset(), v[i].offset()] == [o, o, o]
                && [grads[i].len(), m[i].len(), v[i].len()] == [l, l, l]
                && copy_same
        });
        if !same_layout {
            return super::adamw_update_each(self, params, grads, m, v, copies, tensors, hp, step);
        }
        let key: Vec<(usize, usize, GroupTensor)> = params
            .iter()
            .zip(tensors)
            .map(|(p, &t)| (p.offset(), p.len(), t))
            .collect();
        let arenas = (
            buf::arena_view_mut(params),
            buf::arena_view(grads),
            buf::arena_view_mut(m),
            buf::arena_view_mut(v),
        );
        let (Some(pa), Some(ga), Some(ma), Some(va)) = arenas else {
            return super::adamw_update_each(self, params, grads, m, v, copies, tensors, hp, step);
        };
        let mut cache = self
            .adamw
            .lock()
            .map_err(|_| anyhow::anyhow!("GPU backend AdamW table poisoned by an earlier panic"))?;
        if cache.as_ref().is_none_or(|c| c.key != key) {
            let table: Vec<adamw::AdamWTensor> = key
                .iter()
                .map(|&(offset, len, t)| adamw::AdamWTensor {
                    offset,
                    len,
                    decay: t.decay,
                    trainable: t.trainable,
                })
                .collect();
            *cache = None;
            let plan = adamw::AdamWPlan::new(&self.dev, &table)?;
            self.count_realloc();
            *cache = Some(AdamWCache { key, plan });
        }
        let plan = &cache.as_ref().expect("built above").plan;
        let ca = match copies.is_empty() {
            true => None,
            false => {
                let bf: &mut [GpuBuf<half::bf16>] = bf16_group_mut(copies)?;
                Some(buf::arena_view_mut(bf).ok_or_else(|| {
                    anyhow::anyhow!("adamw_update_group: the weight copies are not one whole group")
                })?)
            }
        };
        adamw::adamw_update_multi(&self.dev, plan, pa, ga, ma, va, ca, &hp, step)
    }

    fn cast<A: Act>(&self, dst: &mut GpuBuf<A>, src: &GpuBuf<f32>, n: usize) -> Result<()> {
        if let Some(d) = dst.typed_mut::<f32>() {
            if d.len() < n || src.len() < n {
                bail!(
                    "cast: {n} elements, buffers of {} and {}",
                    d.len(),
                    src.len()
                );
            }
            return self
                .dev
                .dtod(src.view().slice(..n), d.view_mut().slice_mut(..n));
        }
        let Some(d) = dst.typed_mut::<half::bf16>() else {
            bail!("cast: no kernel for {:?}", A::DTYPE);
        };
        adamw::cast_f32_to_bf16(&self.dev, d.view_mut(), src.view(), n)
    }
}
