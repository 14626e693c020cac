#!/usr/bin/env python3
"""Paper-and-pencil budget of PEPLER training on one GPU: FLOPs, bytes and expected time of every
kernel of one training step, per epoch and for a whole run, plus device memory (docs/performance.md
is this script's output with the default arguments, and explains the model).

Plain Python 3, no torch. Re-run with the rates scripts/gpu-check.sh measured, e.g.

    python3 scripts/perf_budget.py                           # the tables of docs/performance.md
    python3 scripts/perf_budget.py --gemm-eff 0.45 --bw-eff 0.75 --launch-us 6
    python3 scripts/perf_budget.py --precision fp32          # today's fp32 backend (sgemm, no TF32)
    python3 scripts/perf_budget.py --targets-per-row 19      # a typical batch instead of a full one

Every row is one kernel as kernels/*.cu names it (the bf16 build appends `_bf16`), or a cuBLAS(Lt)
GEMM named by the launcher that issues it (src/kernels/matmul.rs) and its site, or a memset/copy.
Time of a row = launches x max(launch floor, FLOPs / compute rate, bytes / bandwidth) per launch.
"""

import argparse
import math
import sys
from dataclasses import dataclass

# --------------------------------------------------------------------------------------------------
# The GPUs: vendor peak rates (dense, no sparsity). Replace by the measured ones.
# --------------------------------------------------------------------------------------------------
GPUS = {
    # name: (bf16 tensor-core TFLOP/s, fp32 CUDA-core TFLOP/s, HBM TB/s, memory GB)
    "H100 SXM": (989.0, 67.0, 3.35, 80.0),
    "H200": (989.0, 67.0, 4.8, 141.0),
}

# docs/performance.md holds the default output between these markers (--update-doc rewrites it)
BEGIN = "<!-- perf_budget.py output: begin -->"
END = "<!-- perf_budget.py output: end -->"

# GPT-2 shapes (n_layer, n_embd, n_head): src/model/sizes.rs
SIZES = {"small": (12, 768, 12), "medium": (24, 1024, 16), "large": (36, 1280, 20), "xl": (48, 1600, 25)}


@dataclass
class Row:
    phase: str  # fwd | bwd | opt | io
    kernel: str  # as in kernels/*.cu, or "gemm (<launcher>)", "memset", "H2D", "D2H"
    site: str
    launches: float  # per step
    flops: float  # per step
    bytes: float  # per step
    kind: str  # "tc" tensor-core GEMM, "cc" CUDA-core compute, "fixed" (sync latency)
    fixed_us: float = 0.0  # per launch, kind "fixed"

    def per_launch_us(self, rates):
        if self.kind == "fixed":
            return self.fixed_us
        flops = self.flops / self.launches
        byts = self.bytes / self.launches
        rate = rates.tc if self.kind == "tc" else rates.cc
        t_c = flops / rate * 1e6
        t_m = byts / rates.bw * 1e6
        return max(rates.floor, t_c, t_m)

    def bound(self, rates):
        if self.kind == "fixed":
            return "sync"
        flops = self.flops / self.launches
        byts = self.bytes / self.launches
        rate = rates.tc if self.kind == "tc" else rates.cc
        t_c, t_m = flops / rate * 1e6, byts / rates.bw * 1e6
        if max(t_c, t_m) < rates.floor:
            return "launch"
        return "compute" if t_c >= t_m else "memory"

    def step_us(self, rates):
        return self.launches * self.per_launch_us(rates)


@dataclass
class Rates:
    name: str
    tc: float  # achievable FLOP/s of the GEMMs
    cc: float  # achievable FLOP/s of CUDA-core kernels (attention, elementwise)
    bw: float  # achievable bytes/s
    floor: float  # us per launch
    mem_gb: float


@dataclass
class Shape:
    nl: int
    c: int
    nh: int
    v: int
    b: int
    p: int  # prompt positions
    t: int  # text positions (padded)
    tgt: int  # LM-head target rows per sequence
    users: int
    items: int
    npos: int
    rec: str
    mlp_hidden: int
    mlp_layers: int
    a: int  # bytes of an activation (2 bf16, 4 fp32)
    wbytes: int  # bytes of a GEMM weight operand (the bf16 copy, or the f32 master)
    dropout: bool = True

    @property
    def l(self):
        return self.p + self.t

    @property
    def rows(self):
        return self.b * self.l

    @property
    def n(self):
        return self.b * self.tgt

    @property
    def hd(self):
        return self.c // self.nh


def param_counts(s):
    """(all parameters, GEMM weights that get a bf16 copy, per-block parameters)."""
    c = s.c
    block = 12 * c * c + 13 * c  # c_attn 3c^2+3c, c_proj c^2+c, c_fc 4c^2+4c, mlp c_proj 4c^2+c, 2 LN 4c
    gpt2 = s.v * c + s.npos * c + s.nl * block + 2 * c
    ui = (s.users + s.items) * c
    rec = 0
    rec_gemm = 0
    if s.rec == "mlp":
        h = s.mlp_hidden
        rec = 2 * c * h + h + s.mlp_layers * (h * h + h) + h + 1
        rec_gemm = 2 * c * h + s.mlp_layers * h * h + h
    gemm = s.v * c + s.nl * 12 * c * c + rec_gemm
    return gpt2 + ui + rec, gemm, block


# --------------------------------------------------------------------------------------------------
# The kernels of one step, in launch order (src/model/pepler.rs, block.rs, heads.rs;
# src/backend/gpu/mod.rs says which kernels each Backend op launches).
# --------------------------------------------------------------------------------------------------
def gemm(phase, site, m, n, k, s, a_bytes, b_bytes, c_bytes, accumulate=False, count=1, launcher="matmul_forward"):
    """C (m x n) = A (m x k) B (k x n): 2mnk FLOPs; bytes A + B + C (+ C read when +=)."""
    byts = m * k * a_bytes + k * n * b_bytes + m * n * c_bytes * (2 if accumulate else 1)
    return Row(phase, f"gemm ({launcher})", site, count, 2.0 * m * n * k * count, byts * count, "tc")


def ew(phase, kernel, site, flops, byts, count=1):
    return Row(phase, kernel, site, count, flops * count, byts * count, "cc")


def attention_pairs(s):
    # causal pairs per (sequence, head): query t sees keys 0..t (the kernels skip the rest)
    return s.l * (s.l + 1) / 2


def encoder_fwd(s, train):
    a, r, c = s.a, s.rows, s.c
    rows = []
    # continuous prompt: user row (pos 0), item row (pos 1), text (pos 2..): f32 tables + f32 wpe
    per = lambda n: n * (4 + c * 4 + c * 4 + c * a)  # id, table row, wpe row, output
    # three launches (user rows, item rows, text); per-launch values are the average
    rows.append(ew("fwd", "embedding_forward", "user, item, text (+ wpe)", r * c / 3, per(r) / 3, 3))
    if train and s.dropout:
        rows.append(ew("fwd", "dropout_forward", "embedding", 2 * r * c, 2 * r * c * a))
    return rows


def block_fwd(s, train, rowsn=None, decode_len=None):
    """One block's forward over `rowsn` rows (default B*L); decode_len: cached attention."""
    a, c, w = s.a, s.c, s.wbytes
    r = rowsn if rowsn is not None else s.rows
    drop = train and s.dropout
    out = []
    ln = lambda site: ew("fwd", "layernorm_forward", site, 8 * r * c, r * c * a * 2 + 2 * c * 4 + r * 8)
    out.append(ln("ln_1"))
    out.append(gemm("fwd", "attn.c_attn", r, 3 * c, c, s, a, w, a))
    out.append(ew("fwd", "matmul_forward_bias", "attn.c_attn", r * 3 * c, r * 3 * c * a * 2 + 3 * c * 4))
    if decode_len is None:
        pairs = attention_pairs(s)
        flops = s.b * s.nh * pairs * (4 * s.hd + 8)  # q.k and p.v (2 FLOPs per MAC each) + softmax
        byts = r * 3 * c * a + s.b * s.l * 4 + r * c * a + s.b * s.nh * s.l * 4
        out.append(ew("fwd", f"attention_forward_hd{hd_variant(s)}", "causal, key mask" + (", dropout" if drop else ""), flops, byts))
    else:
        # decoding one position per sequence against `decode_len` cached ones
        out.append(ew("fwd", "attention_cache_append", "k, v of the new rows", 0, r * 2 * c * a * 2))
        kv = 2 * s.b * decode_len * c * a
        flops = s.b * s.nh * decode_len * (4 * s.hd + 8)
        out.append(ew("fwd", f"attention_cached_forward_hd{hd_variant(s)}", f"{decode_len} cached keys", flops, r * c * a * 2 + kv))
    out.append(gemm("fwd", "attn.c_proj", r, c, c, s, a, w, a))
    out.append(ew("fwd", "matmul_forward_bias", "attn.c_proj", r * c, r * c * a * 2 + c * 4))
    if drop:
        out.append(ew("fwd", "dropout_forward", "attn residual", 2 * r * c, 2 * r * c * a))
    out.append(ew("fwd", "residual_forward", "x + attn", r * c, 3 * r * c * a))
    out.append(ln("ln_2"))
    out.append(gemm("fwd", "mlp.c_fc", r, 4 * c, c, s, a, w, a))
    out.append(ew("fwd", "bias_gelu_forward", "mlp.c_fc bias + GELU", 16 * r * 4 * c, 3 * r * 4 * c * a + 4 * c * 4))
    out.append(gemm("fwd", "mlp.c_proj", r, c, 4 * c, s, a, w, a))
    out.append(ew("fwd", "matmul_forward_bias", "mlp.c_proj", r * c, r * c * a * 2 + c * 4))
    if drop:
        out.append(ew("fwd", "dropout_forward", "mlp residual", 2 * r * c, 2 * r * c * a))
    out.append(ew("fwd", "residual_forward", "x + mlp", r * c, 3 * r * c * a))
    return out


def hd_variant(s):
    hd = s.hd
    return 32 if hd <= 32 else 64 if hd <= 64 else 128


def lm_head_fwd(s, train):
    a, r, c, n, v, w = s.a, s.rows, s.c, s.n, s.v, s.wbytes
    out = [
        ew("fwd", "layernorm_forward", "ln_f", 8 * r * c, r * c * a * 2 + 2 * c * 4 + r * 8),
        ew("fwd", "embedding_forward", "gather the target rows", 0, n * (4 + 2 * c * a)),
        gemm("fwd", "LM head: logits = x wte^T", n, v, c, s, a, w, a),
        # three passes over each row (max, sum, dlogits in place): one HBM read and one write,
        # the other passes hit L2 (a row is V*a bytes)
        ew("fwd", "crossentropy_forward", "softmax CE" + (" + dlogits in place" if train else ""),
           6 * n * v, n * v * a * (2 if train else 1) + n * 8),
        ew("fwd", "crossentropy_mean", "mean over targets", n, n * 8),
    ]
    return out


def rating_fwd(s):
    a, b, c = s.a, s.b, s.c
    if s.rec == "none":
        return []
    out = [ew("fwd", "embedding_forward", "rating head: [u, i] rows", 0, b * (4 + c * 4 + c * a), 2)]
    if s.rec == "mf":
        out.append(ew("fwd", "rating_mf_forward", "u . i", 2 * b * c, b * 2 * c * a + b * a))
    else:
        h = s.mlp_hidden
        dims = [2 * c] + [h] * (1 + s.mlp_layers) + [1]
        site = "rating MLP " + "→".join(str(d) for d in dims)  # one row per kernel, all layers
        for i in range(len(dims) - 1):
            out.append(gemm("fwd", site, b, dims[i + 1], dims[i], s, a, s.wbytes, a, launcher="matmul_forward"))
            out.append(ew("fwd", "matmul_forward_bias", site, b * dims[i + 1], 2 * b * dims[i + 1] * a))
            if i + 2 < len(dims):
                out.append(ew("fwd", "sigmoid_forward", site, 4 * b * h, 2 * b * h * a))
    out.append(ew("fwd", "mse_forward", "MSE + lambda dMSE", 4 * b, 4 * b * 4))
    return out


def bias_bwd(site, r, cout, a):
    chunks = math.ceil(r / 64)  # MM_BIAS_ROWS
    return [
        ew("bwd", "matmul_backward_bias", site, r * cout, r * cout * a + chunks * cout * 4),
        ew("bwd", "matmul_backward_bias_reduce", site, chunks * cout, chunks * cout * 4 + 2 * cout * 4),
    ]


def ln_bwd(site, r, c, a, want_w):
    # pass 1: dinp += (read dout, inp, read+write dinp, mean/rstd); partial sums of dweight/dbias
    byts = r * c * a * 4 + r * 8 + c * 4
    out = [ew("bwd", "layernorm_backward", site, 14 * r * c, byts)]
    if want_w:
        g = 132  # blocks of pass 1 (order of the SM count; the partials are small either way)
        out.append(ew("bwd", "layernorm_backward_reduce", site, g * 2 * c, g * 2 * c * 4 + 4 * c * 4))
    return out


def block_bwd(s, frozen):
    """One block's backward; frozen: the LM is frozen (stage 1), so no weight/bias/LN gradients."""
    a, r, c, w = s.a, s.rows, s.c, s.wbytes
    out = []
    drop = lambda site: ew("bwd", "dropout_forward", site + " (mask regenerated)", 2 * r * c, 2 * r * c * a)
    dx = lambda site, m, n, k: gemm("bwd", site + " dX", m, n, k, s, a, w, a, launcher="matmul_backward")
    dw = lambda site, m, n, k: gemm("bwd", site + " dW (f32, +=)", m, n, k, s, a, a, 4, accumulate=True, launcher="matmul_backward")
    if s.dropout:
        out.append(drop("mlp residual"))
    out.append(dx("mlp.c_proj", r, 4 * c, c))
    if not frozen:
        out.append(dw("mlp.c_proj", 4 * c, c, r))
        out += bias_bwd("mlp.c_proj", r, c, a)
    out.append(ew("bwd", "gelu_backward", "mlp", 24 * r * 4 * c, 3 * r * 4 * c * a))
    out.append(dx("mlp.c_fc", r, c, 4 * c))
    if not frozen:
        out.append(dw("mlp.c_fc", c, 4 * c, r))
        out += bias_bwd("mlp.c_fc", r, 4 * c, a)
    out += ln_bwd("ln_2", r, c, a, not frozen)
    if s.dropout:
        out.append(drop("attn residual"))
    out.append(dx("attn.c_proj", r, c, c))
    if not frozen:
        out.append(dw("attn.c_proj", c, c, r))
        out += bias_bwd("attn.c_proj", r, c, a)
    pairs = attention_pairs(s)
    unit = s.b * s.nh * pairs * 2 * s.hd  # one L x L x hd product over the causal pairs
    side = s.b * s.nh * s.l * 4  # lse or D
    hv = hd_variant(s)
    out.append(ew("bwd", "attention_backward_rowdot", "D = rowsum(dO * O)", 2 * r * c, 2 * r * c * a + side))
    # dq: recompute S, dP = dO V^T, dQ = dS K (3 units); dkv: S, dP, dK, dV (4 units)
    out.append(ew("bwd", f"attention_backward_dq_hd{hv}", "dQ", 3 * unit + 10 * s.b * s.nh * pairs,
                  r * 3 * c * a + r * c * a + 2 * side + s.b * s.l * 4 + r * c * a))
    out.append(ew("bwd", f"attention_backward_dkv_hd{hv}", "dK, dV", 4 * unit + 10 * s.b * s.nh * pairs,
                  r * 3 * c * a + r * c * a + 2 * side + s.b * s.l * 4 + r * 2 * c * a))
    out.append(dx("attn.c_attn", r, c, 3 * c))
    if not frozen:
        out.append(dw("attn.c_attn", c, 3 * c, r))
        out += bias_bwd("attn.c_attn", r, 3 * c, a)
    out += ln_bwd("ln_1", r, c, a, not frozen)
    return out


def lm_head_bwd(s, train_wte, frozen):
    a, r, c, n, v, w = s.a, s.rows, s.c, s.n, s.v, s.wbytes
    out = [gemm("bwd", "LM head dX = dlogits wte", n, c, v, s, a, w, a, launcher="matmul_backward")]
    if train_wte:
        out.append(gemm("bwd", "LM head dW: dwte += dlogits^T x (f32)", v, c, n, s, a, a, 4, accumulate=True, launcher="matmul_backward"))
    out.append(Row("bwd", "memset", "dlnf = 0", 1, 0, r * c * a, "cc"))
    out.append(ew("bwd", "embedding_backward_chain", "scatter target rows: chains", n * n / 2, n * 4 * 3))
    out.append(ew("bwd", "embedding_backward_table", "scatter target rows", n * c, n * c * a * 3))
    out.append(Row("bwd", "memset", "dres = 0", 1, 0, r * c * a, "cc"))
    out += ln_bwd("ln_f", r, c, a, not frozen)
    return out


def encoder_bwd(s, train_wte, train_wpe):
    a, c, b, t = s.a, s.c, s.b, s.t
    out = []
    if s.dropout:
        out.append(ew("bwd", "dropout_forward", "embedding (mask regenerated)", 2 * s.rows * c, 2 * s.rows * c * a))
    # user and item rows (1 position each), then the text (T positions): chain, table (+= f32), wpe (+= f32)
    for site, npos, table in [("user", 1, True), ("item", 1, True), ("text -> wte", t, train_wte)]:
        m = b * npos
        if table:
            out.append(ew("bwd", "embedding_backward_chain", site, m * m / 2, m * 4 * 3))
            out.append(ew("bwd", "embedding_backward_table", site, m * c, m * c * a + 2 * m * c * 4))
        if train_wpe:
            out.append(ew("bwd", "embedding_backward_wpe", site, m * c, m * c * a + 2 * npos * c * 4))
    return out


def rating_bwd(s):
    a, b, c = s.a, s.b, s.c
    if s.rec == "none":
        return []
    out = []
    if s.rec == "mf":
        out.append(ew("bwd", "rating_mf_backward", "d[u, i]", 2 * b * c, 2 * b * 2 * c * a))
    else:
        h = s.mlp_hidden
        dims = [2 * c] + [h] * (1 + s.mlp_layers) + [1]
        site = "rating MLP " + "→".join(str(d) for d in dims)
        for i in reversed(range(len(dims) - 1)):
            out.append(gemm("bwd", site + " dX", b, dims[i], dims[i + 1], s, a, s.wbytes, a, launcher="matmul_backward"))
            out.append(gemm("bwd", site + " dW (f32, +=)", dims[i + 1], dims[i], b, s, a, a, 4, accumulate=True, launcher="matmul_backward"))
            out += bias_bwd(site, b, dims[i + 1], a)
            if i > 0:
                out.append(ew("bwd", "sigmoid_backward", site, 3 * b * h, 3 * b * h * a))
    for _ in ("user", "item"):
        out.append(ew("bwd", "embedding_backward_chain", "rating head: user, item rows", b * b / 2, b * 12))
        out.append(ew("bwd", "embedding_backward_table", "rating head: user, item rows", b * c, b * c * a + 2 * b * c * 4))
    return out


def optimizer_rows(s, n_all, n_train, n_copy):
    bf16 = s.wbytes == 2
    copy = n_copy * 2 if bf16 else 0
    return [
        Row("opt", "memset", "zero every gradient (one arena)", 1, 0, n_all * 4, "cc"),
        ew("opt", "adamw_update_multi", "p, m, v (f32) + bf16 GEMM copy" if bf16 else "p, m, v (f32)",
           16 * n_train, n_train * 28 + copy),
    ]


def global_norm_rows(n_all):
    """The gradient norm the trainer logs once per epoch (every step with --clip-grad-norm, which
    adds `scale_by_clip`: one more read and write of every gradient)."""
    g = min(512, max(1, math.ceil(n_all / (256 * 8))))
    return [ew("opt", "global_norm_partial", "sum of squares of every gradient", 2 * n_all, n_all * 4 + g * 4),
            ew("opt", "global_norm_final", "sqrt of the partials' sum", g, g * 4 + 4)]


def io_rows(s, sync_us):
    return [
        Row("io", "H2D", "ids, key mask, targets, rows, users, items, ratings (7 synchronous copies)", 7, 0, 0, "fixed", sync_us),
        Row("io", "D2H", "the loss scalars (the step's one read; waits for the GPU)", 1, 0, 0, "fixed", sync_us),
    ]


def train_step(s, stage, stage1_wte, sync_us):
    """stage 2: everything trains; stage 1: prompts (+ rating head) (+ wte) train, the LM is frozen."""
    n_all, n_gemm, block = param_counts(s)
    frozen = stage == 1
    train_wte = not frozen or stage1_wte == "train"
    train_wpe = not frozen
    rows = io_rows(s, sync_us)
    fwd = encoder_fwd(s, True)
    for _ in range(s.nl):
        fwd += block_fwd(s, True)
    fwd += lm_head_fwd(s, True) + rating_fwd(s)
    bwd = lm_head_bwd(s, train_wte, frozen)
    for _ in range(s.nl):
        bwd += block_bwd(s, frozen)
    bwd += encoder_bwd(s, train_wte, train_wpe) + rating_bwd(s)
    if frozen:
        ui = (s.users + s.items) * s.c
        rec = n_all - (s.v * s.c + s.npos * s.c + s.nl * block + 2 * s.c) - ui
        n_train = ui + rec + (s.v * s.c if train_wte else 0)
        n_copy = (s.v * s.c if train_wte else 0) + (n_gemm - s.v * s.c - s.nl * 12 * s.c * s.c)
    else:
        n_train, n_copy = n_all, n_gemm
    opt = optimizer_rows(s, n_all, n_train, n_copy)
    return merge(rows[:1] + fwd + bwd + opt + rows[1:]), n_train


def eval_forward(s, sync_us):
    rows = [Row("io", "H2D", "ids, key mask, targets, ... (synchronous copies)", 7, 0, 0, "fixed", sync_us)]
    rows += encoder_fwd(s, False)
    for _ in range(s.nl):
        rows += block_fwd(s, False)
    rows += lm_head_fwd(s, False) + rating_fwd(s)
    rows.append(Row("io", "D2H", "losses (+ predicted ratings)", 2, 0, 0, "fixed", sync_us))
    return merge(rows)


def decode_pass(s, n_new, cached, sync_us):
    """One KV-cache decoding step of the B sequences: n_new positions each, `cached` keys seen."""
    a, c, v, b = s.a, s.c, s.v, s.b
    r = b * n_new
    rows = [Row("io", "H2D", "token ids of the step", 3 if n_new > 1 else 1, 0, 0, "fixed", sync_us)]
    rows.append(ew("fwd", "embedding_forward", "new positions (+ wpe)", r * c, r * (4 + 8 * c + c * a), 3 if n_new > 1 else 1))
    for _ in range(s.nl):
        rows += block_fwd(s, False, rowsn=r, decode_len=cached + n_new)
    rows.append(ew("fwd", "embedding_forward", "last position of each sequence", 0, b * (4 + 2 * c * a)))
    rows.append(ew("fwd", "layernorm_forward", "ln_f (last positions)", 8 * b * c, 2 * b * c * a + b * 8))
    rows.append(gemm("fwd", "LM head: logits of the last positions", b, v, c, s, a, s.wbytes, a))
    rows.append(ew("fwd", "argmax_forward", "greedy next token", b * v, b * v * a + b * 4))
    rows.append(Row("io", "D2H", "the B next tokens (waits for the GPU)", 1, 0, 0, "fixed", sync_us))
    return merge(rows)


def merge(rows):
    """Adds up rows with the same (phase, kernel, site): per-layer rows become one row x n_layer."""
    out, index = [], {}
    for r in rows:
        key = (r.phase, r.kernel, r.site)
        if key in index:
            m = out[index[key]]
            m.launches += r.launches
            m.flops += r.flops
            m.bytes += r.bytes
        else:
            index[key] = len(out)
            out.append(Row(r.phase, r.kernel, r.site, r.launches, r.flops, r.bytes, r.kind, r.fixed_us))
    return out


def total_us(rows, rates):
    return sum(r.step_us(rates) for r in rows)


# --------------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------------
def memory(s, cublas_ws_mb=32, context_gb=0.5):
    a = s.a
    n_all, n_gemm, _ = param_counts(s)
    r, c, v = s.rows, s.c, s.v
    per_layer = r * (18 * c * a + 4 * 4 + s.nh * 4)  # LayerActs: 18C Act + mean/rstd x2 + lse
    glob = r * c * a * (2 if s.dropout else 1) + r * c * a * 2 + r * 8  # emb, encoded_d, lnf, lnf_sel, stats
    grads_scratch = r * c * a * (14 + 4 + (1 if s.dropout else 0))  # dblock 14C, dres, dlnf, dlnf_sel, drop_tmp
    ids = 7 * r * 4
    lm = r * v * a  # Acts::logits is sized (B*L) x V although only the n target rows are used
    kv = 2 * s.nl * s.b * (s.p + 1 + 19) * c * a
    items = [
        ("parameters (f32 masters)", n_all * 4),
        ("bf16 copy of the GEMM weights" if s.wbytes == 2 else "GEMM weight copy (none in fp32)", n_gemm * 2 if s.wbytes == 2 else 0),
        ("gradients (f32, every parameter)", n_all * 4),
        ("AdamW m and v (f32, every parameter)", n_all * 8),
        (f"activations kept for the backward ({s.nl} x {per_layer / 2**20:.0f} MiB + embeddings, ln_f)", s.nl * per_layer + glob),
        ("logits / dlogits in place ((B*L) x V as allocated)", lm),
        ("backward scratch (one block's activation gradients, dres, ...) + ids", grads_scratch + ids),
        ("cuBLAS(Lt) workspace + CUDA context, fatbin (assumed)", cublas_ws_mb * 2**20 + context_gb * 1e9),
    ]
    return items, kv


# --------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------
def fmt_num(x, digits=3):
    if x == 0:
        return "0"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    if abs(x) >= 0.1:
        return f"{x:.2f}"
    return f"{x:.{digits}f}" if abs(x) >= 0.001 else f"{x:.1e}"


def launches_str(x):
    return str(int(x)) if float(x).is_integer() else f"{x:.1f}"


def step_table(rows, all_rates, s):
    h = ["phase", "kernel", "site", "launches", "GFLOP", "MB moved", "bound (" + all_rates[-1].name + ")"]
    h += [f"µs/launch {r.name}" for r in all_rates] + [f"µs/step {r.name}" for r in all_rates]
    lines = ["| " + " | ".join(h) + " |", "|" + "---|" * 3 + "---:|" * 3 + "---|" + "---:|" * (2 * len(all_rates))]
    for r in rows:
        cells = [r.phase, f"`{r.kernel}`" if not r.kernel.startswith(("gemm", "memset", "H2D", "D2H")) else r.kernel,
                 r.site, launches_str(r.launches), fmt_num(r.flops / 1e9), fmt_num(r.bytes / 1e6), r.bound(all_rates[-1])]
        cells += [fmt_num(r.per_launch_us(x)) for x in all_rates]
        cells += [fmt_num(r.step_us(x)) for x in all_rates]
        lines.append("| " + " | ".join(cells) + " |")
    tot = ["**total**", "", "", launches_str(sum(r.launches for r in rows)),
           fmt_num(sum(r.flops for r in rows) / 1e9), fmt_num(sum(r.bytes for r in rows) / 1e6), ""]
    tot += [""] * len(all_rates) + [f"**{fmt_num(total_us(rows, x))}**" for x in all_rates]
    lines.append("| " + " | ".join(tot) + " |")
    return "\n".join(lines)


def phase_summary(rows, all_rates):
    lines = ["| phase | launches | GFLOP | GB moved | " + " | ".join(f"ms {r.name}" for r in all_rates) + " |",
             "|---|---:|---:|---:|" + "---:|" * len(all_rates)]
    groups = {}
    for r in rows:
        k = "GEMMs (fwd+bwd)" if r.kind == "tc" else {"fwd": "forward, other kernels", "bwd": "backward, other kernels",
                                                         "opt": "optimizer (zero grads + AdamW)", "io": "host syncs (H2D, D2H)"}[r.phase]
        groups.setdefault(k, []).append(r)
    order = ["GEMMs (fwd+bwd)", "forward, other kernels", "backward, other kernels", "optimizer (zero grads + AdamW)", "host syncs (H2D, D2H)"]
    for k in order:
        g = groups.get(k, [])
        lines.append(f"| {k} | {launches_str(sum(r.launches for r in g))} | {fmt_num(sum(r.flops for r in g) / 1e9)} | "
                     f"{fmt_num(sum(r.bytes for r in g) / 1e9)} | " + " | ".join(fmt_num(total_us(g, x) / 1e3) for x in all_rates) + " |")
    return "\n".join(lines)


def build_shape(args, size):
    nl, c, nh = SIZES[size]
    a = 2 if args.precision == "bf16" else 4
    return Shape(nl=nl, c=c, nh=nh, v=args.vocab, b=args.batch, p=args.prompt_len, t=args.text_len,
                 tgt=args.targets_per_row if args.targets_per_row else args.text_len,
                 users=args.users, items=args.items, npos=args.n_positions, rec=args.rec,
                 mlp_hidden=args.mlp_hidden, mlp_layers=args.mlp_layers, a=a, wbytes=a)


def make_rates(args):
    out = []
    for name in args.gpus:
        tc, cc, bw, mem = GPUS[name]
        if args.precision == "fp32":
            tc = cc  # cuBLAS sgemm without TF32 runs on the CUDA cores
        out.append(Rates(name, (args.peak_tflops or tc) * 1e12 * args.gemm_eff, cc * 1e12 * args.cc_eff,
                         (args.bw_tbs.get(name) if args.bw_tbs else bw) * 1e12 * args.bw_eff, args.launch_us, mem))
    return out


def run_budget(args, size, rates):
    s = build_shape(args, size)
    step2, n_train2 = train_step(s, 2, args.stage1_wte, args.sync_us)
    step1, n_train1 = train_step(s, 1, args.stage1_wte, args.sync_us)
    ev = eval_forward(s, args.sync_us)
    n_all, n_gemm, _ = param_counts(s)
    # generation: prefill (prompt + <bos>), then up to gen_len - 1 one-token steps
    dec = [decode_pass(s, s.p + 1, 0, args.sync_us)]
    for k in range(1, args.gen_len):
        dec.append(decode_pass(s, 1, s.p + k, args.sync_us))
    steps_per_epoch = math.ceil(args.train_records / s.b)
    valid_batches = math.ceil(args.valid_records / s.b)
    test_batches = math.ceil(args.test_records / s.b)
    res = {"shape": s, "step2": step2, "step1": step1, "eval": ev, "dec": dec, "n_all": n_all, "n_gemm": n_gemm,
           "n_train1": n_train1, "n_train2": n_train2, "spe": steps_per_epoch, "vb": valid_batches, "tb": test_batches}
    per = {}
    for r in rates:
        t2 = total_us(step2, r) / 1e6
        t1 = total_us(step1, r) / 1e6
        te = total_us(ev, r) / 1e6
        tdec = sum(total_us(d, r) for d in dec) / 1e6
        tpass = total_us(dec[1], r) / 1e6 if len(dec) > 1 else 0.0
        # checkpoint I/O after every epoch: state (params + trainable moments) and, when improved, the model
        ckpt1 = (n_all + 2 * n_train1) * 4
        ckpt2 = (n_all + 2 * n_train2) * 4
        best = n_all * 4
        io = lambda byts: byts / (args.pcie_gbs * 1e9) + byts / (args.disk_gbs * 1e9)
        gn = total_us(global_norm_rows(n_all), r) / 1e6
        ep1 = steps_per_epoch * t1 + valid_batches * te + gn
        ep2 = steps_per_epoch * t2 + valid_batches * te + gn
        gen = test_batches * tdec
        test_loss = test_batches * te
        run_gpu = args.epochs_stage1 * ep1 + args.epochs_stage2 * ep2 + test_loss + gen
        run_io = args.epochs_stage1 * io(ckpt1 + best) + args.epochs_stage2 * io(ckpt2 + best)
        per[r.name] = dict(t1=t1, t2=t2, gn=gn, tpass=tpass, stage1=args.epochs_stage1 * ep1, stage2=args.epochs_stage2 * ep2, te=te, tdec=tdec, ep1=ep1, ep2=ep2, gen=gen, test_loss=test_loss,
                           run_gpu=run_gpu, run_io=run_io, io1=io(ckpt1 + best), io2=io(ckpt2 + best),
                           tok_s=s.rows / t2, mfu=sum(x.flops for x in step2) / t2 / (GPUS[r.name][0 if args.precision == 'bf16' else 1] * 1e12))
    res["per"] = per
    return res


def hms(sec):
    if sec < 60:
        return f"{sec:.1f} s"
    if sec < 3600:
        return f"{sec / 60:.1f} min"
    return f"{sec / 3600:.2f} h"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="small,xl", help="GPT-2 shapes: small,medium,large,xl")
    ap.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--gpus", default="H100 SXM,H200", type=lambda x: [g.strip() for g in x.split(",")])
    ap.add_argument("--peak-tflops", type=float, default=0.0, help="GEMM peak (default: the GPU's bf16 dense peak; fp32 peak with --precision fp32)")
    ap.add_argument("--gemm-eff", type=float, default=0.65, help="achievable fraction of the GEMM peak")
    ap.add_argument("--cc-eff", type=float, default=0.5, help="achievable fraction of the fp32 CUDA-core peak (attention, elementwise)")
    ap.add_argument("--bw-tbs", default="", help="HBM TB/s per GPU, e.g. 'H100 SXM=3.35,H200=4.8' (the measured ones)")
    ap.add_argument("--bw-eff", type=float, default=0.85, help="achievable fraction of the HBM bandwidth")
    ap.add_argument("--launch-us", type=float, default=4.0, help="floor per launch: host launch cost / shortest kernel, no CUDA graph")
    ap.add_argument("--sync-us", type=float, default=10.0, help="a synchronous H2D/D2H copy of a few bytes (round trip)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--prompt-len", type=int, default=2)
    ap.add_argument("--text-len", type=int, default=24, help="padded text positions <bos> .. <eos> (L = prompt + text)")
    ap.add_argument("--targets-per-row", type=int, default=0, help="LM-head rows per sequence (default: text-len, a full batch)")
    ap.add_argument("--vocab", type=int, default=50260)
    ap.add_argument("--n-positions", type=int, default=1024)
    ap.add_argument("--users", type=int, default=9765)
    ap.add_argument("--items", type=int, default=6280)
    ap.add_argument("--rec", choices=["none", "mf", "mlp"], default="mlp")
    ap.add_argument("--mlp-hidden", type=int, default=400)
    ap.add_argument("--mlp-layers", type=int, default=2)
    ap.add_argument("--train-records", type=int, default=256018, help="TripAdvisor: 320,023 records, 8:1:1")
    ap.add_argument("--valid-records", type=int, default=32002)
    ap.add_argument("--test-records", type=int, default=32003)
    ap.add_argument("--epochs-stage1", type=int, default=8)
    ap.add_argument("--epochs-stage2", type=int, default=10)
    ap.add_argument("--stage1-wte", choices=["train", "freeze"], default="train")
    ap.add_argument("--gen-len", type=int, default=20)
    ap.add_argument("--pcie-gbs", type=float, default=25.0, help="device-to-host GB/s for checkpoints")
    ap.add_argument("--disk-gbs", type=float, default=2.0, help="disk write GB/s for checkpoints")
    ap.add_argument("--detail", default="small,xl", help="sizes that get the per-kernel table ('' for none)")
    ap.add_argument("--summary-only", action="store_true", help="only the rates, step/epoch/run and memory tables")
    ap.add_argument("--update-doc", default="", help="write the output between the markers of this file "
                    "(docs/performance.md) instead of printing it")
    args = ap.parse_args()
    if args.bw_tbs:
        args.bw_tbs = {k.strip(): float(v) for k, v in (kv.split("=") for kv in args.bw_tbs.split(","))}
    rates = make_rates(args)
    text = []
    out = lambda x="": text.append(str(x) + "\n")
    sizes = [x.strip() for x in args.sizes.split(",")]
    detail = [] if args.summary_only else [x.strip() for x in args.detail.split(",") if x.strip()]

    out(f"<!-- generated by scripts/perf_budget.py (precision {args.precision}); do not edit by hand -->\n")
    out("### Assumed rates\n")
    out("| GPU | GEMM peak TFLOP/s | × eff | CUDA-core fp32 TFLOP/s | × eff | HBM TB/s | × eff | launch floor µs | sync copy µs | memory GB |")
    out("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rates:
        tc, cc, bw, mem = GPUS[r.name]
        g = tc if args.precision == "bf16" else cc
        out(f"| {r.name} | {args.peak_tflops or g:g} | {args.gemm_eff} | {cc:g} | {args.cc_eff} | "
              f"{(args.bw_tbs.get(r.name) if args.bw_tbs else bw):g} | {args.bw_eff} | {args.launch_us:g} | {args.sync_us:g} | {mem:g} |")
    out()

    results = {sz: run_budget(args, sz, rates) for sz in sizes}
    for sz in sizes:
        res = results[sz]
        s = res["shape"]
        if args.summary_only:
            continue
        out(f"### GPT-2 {sz}: {s.nl} layers, d {s.c}, {s.nh} heads (hd {s.hd}), V {s.v}; "
              f"{res['n_all'] / 1e6:,.1f} M parameters ({res['n_gemm'] / 1e6:,.1f} M in GEMM weights)\n")
        out(f"Batch {s.b} × L {s.l} (prompt {s.p} + text {s.t}) = {s.rows} rows; LM head on n = {s.n} target rows; "
              f"rating head {s.rec}; activations {'bf16' if s.a == 2 else 'fp32'}; dropout on.\n")
        if sz in detail:
            out(f"One training step, stage 2 (everything trains), kernels in launch order, per-layer kernels summed over the {s.nl} layers:\n")
            out(step_table(res["step2"], rates, s))
            out()
            out(f"Once per epoch (every step with `--clip-grad-norm`, plus `scale_by_clip`: one more read and write of every gradient), not in the total above:\n")
            out("\n".join(step_table(merge(global_norm_rows(res["n_all"])), rates, s).split("\n")[:-1]))
            out()
        out(f"Where the stage-2 step goes:\n")
        out(phase_summary(res["step2"], rates))
        out()

    out("### Step, epoch, run\n")
    hdr = ["", *[f"{sz} {r.name}" for sz in sizes for r in rates]]
    out("| " + " | ".join(hdr) + " |")
    out("|---|" + "---:|" * (len(hdr) - 1))
    def line(label, f):
        out("| " + label + " | " + " | ".join(f(results[sz], results[sz]["per"][r.name]) for sz in sizes for r in rates) + " |")
    line("training step, stage 2 (all train)", lambda R, p: f"{p['t2'] * 1e3:.2f} ms")
    line("training step, stage 1 (LM frozen, wte " + args.stage1_wte + ")", lambda R, p: f"{p['t1'] * 1e3:.2f} ms")
    line("tokens/s, stage 2 (B·L per step)", lambda R, p: f"{p['tok_s'] / 1e3:,.0f} k")
    line("model FLOP utilisation, stage 2 (of the GEMM peak above)", lambda R, p: f"{100 * p['mfu']:.0f} %")
    line("eval forward (validation/test batch)", lambda R, p: f"{p['te'] * 1e3:.2f} ms")
    line("one KV-cache decoding pass (B tokens, 2nd token)", lambda R, p: f"{p['tpass'] * 1e3:.2f} ms")
    line(f"generation of one batch ({args.gen_len} KV-cache passes)", lambda R, p: f"{p['tdec'] * 1e3:.1f} ms")
    line(f"epoch, stage 1 ({results[sizes[0]]['spe']} steps + {results[sizes[0]]['vb']} validation batches)", lambda R, p: hms(p["ep1"]))
    line("epoch, stage 2", lambda R, p: hms(p["ep2"]))
    line("(of which the per-epoch gradient norm)", lambda R, p: f"{p['gn'] * 1e3:.2f} ms")
    line(f"stage 1 ({args.epochs_stage1} epochs)", lambda R, p: hms(p["stage1"]))
    line(f"stage 2 ({args.epochs_stage2} epochs)", lambda R, p: hms(p["stage2"]))
    line(f"test loss + generation ({results[sizes[0]]['tb']} batches)", lambda R, p: hms(p["test_loss"] + p["gen"]))
    line(f"**whole run on the GPU** ({args.epochs_stage1} + {args.epochs_stage2} epochs + test)", lambda R, p: f"**{hms(p['run_gpu'])}**")
    line(f"checkpoint I/O per epoch, stage 2 ({args.pcie_gbs:g} GB/s D2H + {args.disk_gbs:g} GB/s disk)", lambda R, p: hms(p["io2"]))
    line("whole run incl. checkpoint I/O", lambda R, p: hms(p["run_gpu"] + p["run_io"]))
    out()

    out("### Device memory during a training step (stage 2)\n")
    mems = {sz: memory(results[sz]["shape"]) for sz in sizes}
    out("| item | " + " | ".join(f"{sz} GB" for sz in sizes) + " |")
    out("|---|" + "---:|" * len(sizes))
    names = [it[0] for it in mems[sizes[0]][0]]
    for i, nm in enumerate(names):
        label = nm if "activations" not in nm else "activations kept for the backward (per layer: 18·C Act + 4 f32 stats + NH f32 lse per row)"
        out(f"| {label} | " + " | ".join(f"{mems[sz][0][i][1] / 1e9:.2f}" for sz in sizes) + " |")
    out("| **total** | " + " | ".join(f"**{sum(x[1] for x in mems[sz][0]) / 1e9:.1f}**" for sz in sizes) + " |")
    out("| KV cache for generation (B × (prompt + 1 + 19) positions, all layers) | " + " | ".join(f"{mems[sz][1] / 1e9:.2f}" for sz in sizes) + " |")
    out("| fits: H100 SXM 80 GB / H200 141 GB | " + " | ".join(
        ("yes / yes" if sum(x[1] for x in mems[sz][0]) + mems[sz][1] < 80e9 else
         "no / yes" if sum(x[1] for x in mems[sz][0]) + mems[sz][1] < 141e9 else "no / no") for sz in sizes) + " |")
    out()

    text = "".join(text)
    if args.update_doc:
        doc = open(args.update_doc).read()
        i, j = doc.find(BEGIN), doc.find(END)
        if i < 0 or j < i:
            raise SystemExit(f"{args.update_doc}: no '{BEGIN}' ... '{END}' block to replace")
        with open(args.update_doc, "w") as f:
            f.write(doc[: i + len(BEGIN)] + "\n" + text + doc[j:])
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
