//! The `Backend` trait the model (`crate::model`) is written against, and its implementations
//! (`cpu` now; the CUDA/emulated backend later implements the same trait).
//!
//! # Design
//! - **Backend-owned buffers.** `Backend::Buf<T>` is an opaque buffer of `T` elements living where the
//!   backend computes (host memory for `cpu`, device memory for CUDA). Parameters, gradients, AdamW
//!   moments, activations and the KV cache stay there between steps; only losses, metrics, and logits
//!   on request come back (`download`). The element type is a parameter: `i32` for ids, `f32` for
//!   parameters, gradients, moments and reductions, and `A: Act` (`f32` or `bf16`, `--precision`)
//!   for activations: each op is generic over `A`, with the typing rule of `crate::precision`.
//! - **Kernel-granularity ops (llm.c style).** One method per kernel, forward and backward side by
//!   side; shapes are explicit arguments. Each CPU method delegates to the pure reference function of
//!   the same name in `crate::ops::<op>`, which is what the CUDA kernels are tested against.
//! - **Prefix semantics.** A buffer may be longer than an op needs; the op reads/writes the prefix
//!   its shape implies. The model allocates activations for the largest (batch, length) seen and
//!   reuses them for smaller batches (no allocation per step).
//! - **Gradient convention (llm.c).** Activation gradients are written (`=`) except where an input
//!   sits on the residual stream (`layernorm_backward`'s `dinp` accumulates); parameter gradients
//!   always accumulate (`+=`). `None` for a gradient output skips its computation (frozen weights).
//! - **Determinism.** Same inputs, same bits: fixed reduction orders, no float atomics; dropout masks
//!   come from a counter-based hash of (seed, step, site, index) (`ops::dropout`), identical on
//!   every backend.
//! - **Errors.** Methods return `anyhow::Result`: shape mismatches and out-of-range ids name the op.

pub mod cpu;
pub mod gpu;

use anyhow::Result;

pub use crate::precision::Act;

pub use crate::ops::attention::AttnShape;
pub use crate::ops::dropout::DropoutSite;
pub use crate::ops::embedding::EmbedShape;
pub use crate::ops::matmul::WeightLayout;

/// Element types of backend buffers: the device layer's one element trait and `DType`, so a
/// backend's `Buf<T: Element>` can be a `DeviceBuffer<T>` (f32, i32 and bf16 are what the model uses).
pub use crate::device::{DType, Elem as Element};

/// Which AdamW: `torch.optim.AdamW` (the parity fixtures' reference) or `transformers.AdamW`
/// (what the original PEPLER scripts use; eps before the bias correction, decay after the update).
/// See `ops::adamw`.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum AdamWVariant {
    #[default]
    Torch,
    Hf,
}

/// AdamW hyper-parameters (decoupled weight decay, bias correction; `variant` picks the formula).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWParams {
    // f64, as torch's Python floats: `1e-3f32 as f64` would move torch's step size by an ulp.
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub variant: AdamWVariant,
}

/// The operations GPT-2 + PEPLER needs, on backend-owned buffers (see the module docs).
pub trait Backend {
    /// An owned buffer of `len` elements of `T` in the backend's memory.
    type Buf<T: Element>;

    /// A captured sequence of this backend's work (`capture`); `()` where there are no graphs.
    type Graph: Send + Sync;

    /// Human-readable name ("cpu", "cuda:0", ...).
    fn name(&self) -> String;

    // ---------------------------------------------------------------- memory
    /// A zero-filled buffer of `len` elements.
    fn alloc<T: Element>(&self, len: usize) -> Result<Self::Buf<T>>;
    /// A new buffer holding a copy of `data`.
    fn upload<T: Element>(&self, data: &[T]) -> Result<Self::Buf<T>>;
    /// Overwrites the first `data.len()` elements of `dst` (reuse without allocating).
    fn write<T: Element>(&self, dst: &mut Self::Buf<T>, data: &[T]) -> Result<()>;
    /// Copies the first `len` elements back to the host.
    fn download<T: Element>(&self, src: &Self::Buf<T>, len: usize) -> Result<Vec<T>>;
    /// Number of elements `buf` holds.
    fn len<T: Element>(&self, buf: &Self::Buf<T>) -> usize;
    /// Sets every element to zero.
    fn zero<T: Element>(&self, buf: &mut Self::Buf<T>) -> Result<()>;
    /// Waits for queued work (a no-op on the CPU).
    fn synchronize(&self) -> Result<()>;

    // ---------------------------------------------------------------- encoder
    /// `out[b, off+j] = table[ids[b, j]] (+ wpe[pos0+off+j])` (=). See `ops::embedding`.
    fn embedding_forward<A: Act>(
        &self,
        out: &mut Self::Buf<A>,
        table: &Self::Buf<f32>,
        ids: &Self::Buf<i32>,
        wpe: Option<&Self::Buf<f32>>,
        s: EmbedShape,
    ) -> Result<()>;
    /// `dtable[ids] += dout`, `dwpe[pos] += dout` (deterministic order).
    fn embedding_backward<A: Act>(
        &self,
        dtable: Option<&mut Self::Buf<f32>>,
        dwpe: Option<&mut Self::Buf<f32>>,
        dout: &Self::Buf<A>,
        ids: &Self::Buf<i32>,
        s: EmbedShape,
    ) -> Result<()>;

    /// `out[r, :] = src[ids[r], :]` for `r < n`, rows of `c` (=): the rows the LM head runs on.
    /// See `ops::gather`.
    #[allow(clippy::too_many_arguments)]
    fn row_gather<A: Act>(
        &self,
        out: &mut Self::Buf<A>,
        src: &Self::Buf<A>,
        ids: &Self::Buf<i32>,
        n: usize,
        c: usize,
        src_rows: usize,
    ) -> Result<()>;
    /// `dst[ids[r], :] += src[r, :]` for `r < n` (+=); the ids must be distinct.
    #[allow(clippy::too_many_arguments)]
    fn row_scatter_add<A: Act>(
        &self,
        dst: &mut Self::Buf<A>,
        src: &Self::Buf<A>,
        ids: &Self::Buf<i32>,
        n: usize,
        c: usize,
        dst_rows: usize,
    ) -> Result<()>;

    // ---------------------------------------------------------------- dense layers
    /// `out = inp W (+ bias)` (=), W per `layout`. See `ops::matmul`.
    #[allow(clippy::too_many_arguments)]
    fn matmul_forward<A: Act>(
        &self,
        out: &mut Self::Buf<A>,
        inp: &Self::Buf<A>,
        weight: &Self::Buf<A>,
        bias: Option<&Self::Buf<f32>>,
        rows: usize,
        cin: usize,
        cout: usize,
        layout: WeightLayout,
    ) -> Result<()>;
    /// `dinp = dout W^T` (=), `dweight +=`, `dbias +=`; `None` skips.
    #[allow(clippy::too_many_arguments)]
    fn matmul_backward<A: Act>(
        &self,
        dinp: Option<&mut Self::Buf<A>>,
        dweight: Option<&mut Self::Buf<f32>>,
        dbias: Option<&mut Self::Buf<f32>>,
        dout: &Self::Buf<A>,
        inp: &Self::Buf<A>,
        weight: &Self::Buf<A>,
        rows: usize,
        cin: usize,
        cout: usize,
        layout: WeightLayout,
    ) -> Result<()>;

    /// The MLP's first layer: `pre = inp W + bias` (=) and `out = gelu_tanh(pre)` (=). Default:
    /// `matmul_forward` then `gelu_forward`; a GPU fuses the bias add into the GELU pass
    /// (`ops::gelu::bias_gelu_forward`, bit-identical).
    #[allow(clippy::too_many_arguments)]
    fn matmul_bias_gelu_forward<A: Act>(
        &self,
        pre: &mut Self::Buf<A>,
        out: &mut Self::Buf<A>,
        inp: &Self::Buf<A>,
        weight: &Self::Buf<A>,
        bias: &Self::Buf<f32>,
        rows: usize,
        cin: usize,
        cout: usize,
        layout: WeightLayout,
    ) -> Result<()> {
        self.matmul_forward(pre, inp, weight, Some(bias), rows, cin, cout, layout)?;
        self.gelu_forward(out, pre, rows * cout)
    }

    // ---------------------------------------------------------------- layernorm
    /// LayerNorm over rows of `c` (=), saving `mean`, `rstd` per row. See `ops::layernorm`.
    #[allow(clippy::too_many_arguments)]
    fn layernorm_forward<A: Act>(
        &self,
        out: &mut Self::Buf<A>,
        mean: &mut Self::Buf<f32>,
        rstd: &mut Self::Buf<f32>,
        inp: &Self::Buf<A>,
        weight: &Self::Buf<f32>,
        bias: &Self::Buf<f32>,
        rows: usize,
        c: usize,
        eps: f32,
    ) -> Result<()>;
    /// `dinp +=` (residual stream), `dweight +=`, `dbias +=` (`None` skips the weight gradients).
    #[allow(clippy::too_many_arguments)]
    fn layernorm_backward<A: Act>(
        &self,
        dinp: &mut Self::Buf<A>,
        dweight: Option<&mut Self::Buf<f32>>,
        dbias: Option<&mut Self::Buf<f32>>,
        dout: &Self::Buf<A>,
        inp: &Self::Buf<A>,
        weight: &Self::Buf<f32>,
        mean: &Self::Buf<f32>,
        rstd: &Self::Buf<f32>,
        rows: usize,
        c: usize,
    ) -> Result<()>;

    // ---------------------------------------------------------------- attention
    /// Elements of the state `attention_forward` saves for `attention_backward` at shape `s`: the
    /// backend decides what it keeps (the CPU keeps the probabilities (B, NH, L, L); the GPU backend
    /// the per-row log-sum-exp (B, NH, L)). A state buffer sized for a larger shape serves smaller ones.
    fn attention_state_len(&self, s: AttnShape) -> usize;
    /// Causal MHA with key-padding mask: `out` (=), the backward's `state` (=). See `ops::attention`.
    fn attention_forward<A: Act>(
        &self,
        out: &mut Self::Buf<A>,
        state: &mut Self::Buf<f32>,
        qkv: &Self::Buf<A>,
        key_mask: Option<&Self::Buf<i32>>,
        dropout: Option<DropoutSite>,
        s: AttnShape,
    ) -> Result<()>;
    /// `dqkv` (=) from `dout`, the forward's inputs, its `out` and saved `state`, the same mask and
    /// dropout site.
    #[allow(clippy::too_many_arguments)]
    fn attention_backward<A: Act>(
        &self,
        dqkv: &mut Self::Buf<A>,
        dout: &Self::Buf<A>,
        qkv: &Self::Buf<A>,
        out: &Self::Buf<A>,
        state: &Self::Buf<f32>,
        key_mask: Option<&Self::Buf<i32>>,
        dropout: Option<DropoutSite>,
        s: AttnShape,
    ) -> Result<()>;
    /// Decoding: append `n` positions at `start` to the KV cache (B, NH, lmax, hd) and attend (=).
    #[allow(clippy::too_many_arguments)]
    fn attention_cached_forward<A: Act>(
        &self,
        out: &mut Self::Buf<A>,
        qkv: &Self::Buf<A>,
        k_cache: &mut Self::Buf<A>,
        v_cache: &mut Self::Buf<A>,
        start: usize,
        n: usize,
        lmax: usize,
        s: AttnShape,
    ) -> Result<()>;

    // ---------------------------------------------------------------- pointwise
    /// `out = gelu_tanh(inp)` over `n` elements (=).
    fn gelu_forward<A: Act>(
        &self,
        out: &mut Self::Buf<A>,
        inp: &Self::Buf<A>,
        n: usize,
    ) -> Result<()>;
    /// `dinp = gelu'(inp) dout` (=).
    fn gelu_backward<A: Act>(
        &self,
        dinp: &mut Self::Buf<A>,
        inp: &Self::Buf<A>,
        dout: &Self::Buf<A>,
        n: usize,
    ) -> Result<()>;
    /// `out = a + b` over `n` elements (=).
    fn residual_forward<A: Act>(
        &self,
        out: &mut Self::Buf<A>,
        a: &Self::Buf<A>,
        b: &Self::Buf<A>,
        n: usize,
    ) -> Result<()>;
    /// `out = dropout(inp)` over `n` elements (=); also the backward pass (same site).
    fn dropout_forward<A: Act>(
        &self,
        out: &mut Self::Buf<A>,
        inp: &Self::Buf<A>,
        site: DropoutSite,
        n: usize,
    ) -> Result<()>;
    /// `out = sigmoid(inp)` (=).
    fn sigmoid_forward<A: Act>(
        &self,
        out: &mut Self::Buf<A>,
        inp: &Self::Buf<A>,
        n: usize,
    ) -> Result<()>;
    /// `dinp = dout * out * (1 - out)` (=).
    fn sigmoid_backward<A: Act>(
        &self,
        dinp: &mut Self::Buf<A>,
        out: &Self::Buf<A>,
        dout: &Self::Buf<A>,
        n: usize,
    ) -> Result<()>;

    // ---------------------------------------------------------------- heads and losses
    /// Per-row cross-entropy `losses` (=); with `dscale`, `logits` become `dlogits` in place.
    fn crossentropy_forward<A: Act>(
        &self,
        losses: &mut Self::Buf<f32>,
        logits: &mut Self::Buf<A>,
        targets: &Self::Buf<i32>,
        rows: usize,
        v: usize,
        dscale: Option<f32>,
    ) -> Result<()>;
    /// `out[r] = argmax(logits[r])` (greedy decoding).
    fn argmax<A: Act>(
        &self,
        out: &mut Self::Buf<i32>,
        logits: &Self::Buf<A>,
        rows: usize,
        v: usize,
    ) -> Result<()>;
    /// MF rating `out[b] = u_b . i_b` from `ui` (B, 2C) (=).
    fn rating_mf_forward<A: Act>(
        &self,
        out: &mut Self::Buf<A>,
        ui: &Self::Buf<A>,
        b: usize,
        c: usize,
    ) -> Result<()>;
    /// `dui = [dpred i | dpred u]` (=).
    fn rating_mf_backward<A: Act>(
        &self,
        dui: &mut Self::Buf<A>,
        dpred: &Self::Buf<A>,
        ui: &Self::Buf<A>,
        b: usize,
        c: usize,
    ) -> Result<()>;
    /// `out[slot]` = mean of `losses[r]` over the rows `r < rows` with `targets[r] >= 0`, summed
    /// in f64 in row order and rounded once to f32 (=): the text loss stays on the device until the
    /// caller reads it. See `ops::crossentropy::crossentropy_mean`.
    fn crossentropy_mean(
        &self,
        out: &mut Self::Buf<f32>,
        slot: usize,
        losses: &Self::Buf<f32>,
        targets: &Self::Buf<i32>,
        rows: usize,
    ) -> Result<()>;
    /// `loss[slot] = mean((pred - target)^2)` over `n` (=), on the device;
    /// `dpred = grad_scale * 2 (pred - target) / n` (=).
    #[allow(clippy::too_many_arguments)]
    fn mse_forward<A: Act>(
        &self,
        loss: &mut Self::Buf<f32>,
        slot: usize,
        dpred: &mut Self::Buf<A>,
        pred: &Self::Buf<A>,
        target: &Self::Buf<f32>,
        n: usize,
        grad_scale: f32,
    ) -> Result<()>;

    // ---------------------------------------------------------------- tensor groups
    /// Zero-filled buffers of the given lengths that a backend may place in ONE allocation, so
    /// that `zero_group` and `adamw_update_group` on the whole group are one launch each.
    /// Default: one allocation per tensor.
    fn alloc_group<T: Element>(&self, lens: &[usize]) -> Result<Vec<Self::Buf<T>>> {
        lens.iter().map(|&n| self.alloc::<T>(n)).collect()
    }
    /// Sets every buffer of a group to zero. Default: one `zero` per buffer.
    fn zero_group(&self, bufs: &mut [Self::Buf<f32>]) -> Result<()> {
        bufs.iter_mut().try_for_each(|b| self.zero(b))
    }

    /// `out[slot]` = the L2 norm of every element of the group (=), a deterministic reduction
    /// (the global gradient norm). See `ops::global_norm`.
    fn global_norm(
        &self,
        out: &mut Self::Buf<f32>,
        slot: usize,
        group: &[Self::Buf<f32>],
    ) -> Result<()>;
    /// Multiplies every buffer of the group by `min(1, max_norm / (norm[slot] + 1e-6))`, the norm
    /// read on the device (torch's `clip_grad_norm_` without a host round trip).
    fn clip_group(
        &self,
        group: &mut [Self::Buf<f32>],
        norm: &Self::Buf<f32>,
        slot: usize,
        max_norm: f32,
    ) -> Result<()>;

    // ---------------------------------------------------------------- optimizer
    /// One AdamW update (`hp.variant`) of `param` from `grad` with moments `m`, `v`; `step` counts from 1.
    fn adamw_update(
        &self,
        param: &mut Self::Buf<f32>,
        grad: &Self::Buf<f32>,
        m: &mut Self::Buf<f32>,
        v: &mut Self::Buf<f32>,
        hp: AdamWParams,
        step: u64,
    ) -> Result<()>;
    /// One AdamW update of every tensor `i` of a group with `tensors[i].trainable` (the rest are
    /// untouched), decay `hp.weight_decay` where `tensors[i].decay`, else 0. When `copies` is not
    /// empty (bf16 training), `copies[i] = A(params[i])` for every updated tensor too: the GEMMs'
    /// weight copy. Default: one `adamw_update` (and `cast`) per tensor; a backend with
    /// `alloc_group` arenas does all in one launch.
    #[allow(clippy::too_many_arguments)]
    fn adamw_update_group<A: Act>(
        &self,
        params: &mut [Self::Buf<f32>],
        grads: &[Self::Buf<f32>],
        m: &mut [Self::Buf<f32>],
        v: &mut [Self::Buf<f32>],
        copies: &mut [Self::Buf<A>],
        tensors: &[GroupTensor],
        hp: AdamWParams,
        step: u64,
    ) -> Result<()> {
        adamw_update_each(self, params, grads, m, v, copies, tensors, hp, step)
    }

    // ---------------------------------------------------------------- step graphs
    /// Whether `capture` and `replay` work here (the GPU backend: CUDA graphs, recorded on emu).
    /// The model then captures whole training steps (`Pepler::train_step`).
    fn has_graphs(&self) -> bool {
        false
    }
    /// Makes `s` the per-step values that captured work reads when it is replayed (the device's
    /// step scalars, `crate::device::step`). Call it before each step, outside any capture; a
    /// no-op on backends without graphs (their ops take the values by argument).
    fn set_step_values(&self, s: &StepValues) -> Result<()> {
        let _ = s;
        Ok(())
    }
    /// Records the backend work `f` submits, in order, without running it (see
    /// `crate::device::Device::capture`: no allocation, host copy or host read inside).
    fn capture(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<Self::Graph> {
        let _ = f;
        anyhow::bail!("{}: this backend has no graphs", self.name())
    }
    /// Replays a graph from `capture`. `Ok(false)`: the graph is stale (memory the backend owns
    /// and the graph used was reallocated since) and nothing ran: run the work directly.
    ///
    /// # Safety
    /// Every buffer the captured work used must still be alive, at the same address.
    unsafe fn replay(&self, g: &Self::Graph) -> Result<bool> {
        let _ = g;
        anyhow::bail!("{}: this backend has no graphs", self.name())
    }

    /// `dst[..n] = A(src[..n])`, rounded to nearest even (=): the weight copies of bf16 training.
    fn cast<A: Act>(&self, dst: &mut Self::Buf<A>, src: &Self::Buf<f32>, n: usize) -> Result<()>;
    /// `cast` of every whole tensor of a group. Default: one `cast` per tensor.
    fn cast_group<A: Act>(&self, dst: &mut [Self::Buf<A>], src: &[Self::Buf<f32>]) -> Result<()> {
        if dst.len() != src.len() {
            anyhow::bail!("cast_group: {} outputs for {} inputs", dst.len(), src.len());
        }
        for (d, s) in dst.iter_mut().zip(src) {
            self.cast(d, s, self.len(s))?;
        }
        Ok(())
    }
}

/// `Backend::adamw_update_group` as one `adamw_update` per trainable tensor (the default, and the
/// fallback of backends whose groups are not whole arenas).
#[allow(clippy::too_many_arguments)]
pub fn adamw_update_each<B: Backend + ?Sized, A: Act>(
    be: &B,
    params: &mut [B::Buf<f32>],
    grads: &[B::Buf<f32>],
    m: &mut [B::Buf<f32>],
    v: &mut [B::Buf<f32>],
    copies: &mut [B::Buf<A>],
    tensors: &[GroupTensor],
    hp: AdamWParams,
    step: u64,
) -> Result<()> {
    let n = params.len();
    let copies_ok = copies.is_empty() || copies.len() == n;
    if grads.len() != n || m.len() != n || v.len() != n || tensors.len() != n || !copies_ok {
        anyhow::bail!(
            "adamw_update_group: {n} params, {} grads, {} m, {} v, {} copies, {} flags",
            grads.len(),
            m.len(),
            v.len(),
            copies.len(),
            tensors.len()
        );
    }
    for i in 0..n {
        let t = tensors[i];
        if t.trainable {
            let hp = AdamWParams {
                weight_decay: if t.decay { hp.weight_decay } else { 0.0 },
                ..hp
            };
            be.adamw_update(&mut params[i], &grads[i], &mut m[i], &mut v[i], hp, step)?;
            if let Some(copy) = copies.get_mut(i) {
                be.cast(copy, &params[i], be.len(&params[i]))?;
            }
        }
    }
    Ok(())
}

/// Per-tensor flags of a group update (`Backend::adamw_update_group`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupTensor {
    /// Update this tensor (frozen tensors are left untouched, moments included).
    pub trainable: bool,
    /// Apply the optimizer's weight decay to it.
    pub decay: bool,
}

/// The values of one training step that change from step to step and that a captured step must
/// read at replay (`Backend::set_step_values`): each equals what the step's ops take by argument.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepValues {
    /// `DropoutSite::step` of every dropout site of the step.
    pub dropout_step: u64,
    /// AdamW's hyper-parameters and step (`adamw_update_group`), when the step updates.
    pub adamw: Option<(AdamWParams, u64)>,
    /// `crossentropy_forward`'s dscale (1 / the batch's target count).
    pub dscale: f32,
}
