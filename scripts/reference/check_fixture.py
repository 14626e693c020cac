#!/usr/bin/env python3
"""Independent check of docs/parity-format.md: recomputes each fixture's forward, losses, gradients
and AdamW steps from the stored tensors with plain torch ops (no transformers), following only the
semantics written in the doc, and reports the largest deviations.

Usage: python scripts/reference/check_fixture.py tests/fixtures/parity/*.safetensors \
           tests/fixtures/parity/bf16/*.safetensors
Exits non-zero if a deviation (relative to the reference tensor's max magnitude) exceeds 1e-5,
or 1e-3 for the AdamW updates (p_k - p_0).

A dump with `autocast` metadata (dump.py --autocast bf16) is recomputed with the casts the doc's
"autocast bf16 dumps" section lists, written out by hand (no torch.autocast): bf16 GEMMs with the
bias added inside, bf16 scores and probabilities, fp32 residual stream, LayerNorm and softmax. It
is also compared with the plain fp32 recomputation ("fp32 distance", printed, not checked): the size
of the bf16 effects a tolerance has to cover.
"""

import json
import math
import sys

import torch
from safetensors import safe_open


def load(path):
    with safe_open(path, framework="pt") as f:
        return f.metadata(), {k: f.get_tensor(k) for k in f.keys()}


def gelu_new(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def addmm_bf16(b, x, w):
    """Conv1D (`addmm(b, x, W)`) under CPU autocast: all three cast to bf16, one bf16 result."""
    shape = x.shape[:-1] + (w.shape[1],)
    return torch.addmm(b.bfloat16(), x.reshape(-1, x.shape[-1]).bfloat16(), w.bfloat16()).view(shape)


def forward(cfg, p, t, bf16=False):
    """p: name -> tensor (leaf); returns loss, text_loss, rating_loss, rating, logits.
    bf16: the casts torch.autocast("cpu", dtype=torch.bfloat16) makes in HF's GPT-2 (see the doc)."""
    C, H = cfg["n_embd"], cfg["n_head"]
    text, mask = t["batch.text"], t["batch.mask"]
    B, T = text.shape
    wte = p["transformer.wte.weight"]
    if cfg["prompt"] == "continuous":
        u = p["user_embeddings.weight"][t["batch.user"]]
        i = p["item_embeddings.weight"][t["batch.item"]]
        x = torch.cat([u[:, None], i[:, None], wte[text]], 1)
        P = 2
    else:
        prompt = t["batch.prompt"]
        P = prompt.shape[1]
        x = wte[torch.cat([prompt, text], 1)]
    L = P + T
    x = x + p["transformer.wpe.weight"][:L][None]
    am = torch.cat([torch.ones(B, P, dtype=torch.int64), mask], 1).bool()  # [B,L]
    causal = torch.tril(torch.ones(L, L, dtype=torch.bool))
    visible = causal[None, None] & am[:, None, None, :]  # [B,1,L,L]
    eps = cfg["layer_norm_epsilon"]
    ln = lambda h, n: torch.nn.functional.layer_norm(h, (C,), p[n + ".weight"], p[n + ".bias"], eps)
    hd = C // H
    if bf16:
        # x (embeddings + positions, then the residual stream) and every LayerNorm stay fp32
        dense = lambda h, n: addmm_bf16(p[n + ".bias"], h, p[n + ".weight"])
    else:
        dense = lambda h, n: h @ p[n + ".weight"] + p[n + ".bias"]
    for li in range(cfg["n_layer"]):
        pre = f"transformer.h.{li}."
        h = ln(x, pre + "ln_1")
        qkv = dense(h, pre + "attn.c_attn")
        q, k, v = qkv.split(C, dim=2)
        q, k, v = (z.view(B, L, H, hd).transpose(1, 2) for z in (q, k, v))
        if bf16:
            # bf16 scores divided by sqrt(hd) rounded to bf16; HF's fp32 padding mask promotes them
            # to fp32 for the softmax; the probabilities are rounded to bf16 before P V
            w = (q @ k.transpose(-1, -2)) / torch.full([], hd ** 0.5, dtype=torch.bfloat16)
            w = w.float().masked_fill(~visible, float("-inf")).softmax(-1).bfloat16()
        else:
            w = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
            w = w.masked_fill(~visible, float("-inf")).softmax(-1)
        a = (w @ v).transpose(1, 2).reshape(B, L, C)
        x = x + dense(a, pre + "attn.c_proj")  # fp32 + bf16 -> fp32 under autocast
        h = ln(x, pre + "ln_2")
        h = gelu_new(dense(h, pre + "mlp.c_fc"))  # bf16 in, every op of gelu_new rounds to bf16
        x = x + dense(h, pre + "mlp.c_proj")
    x = ln(x, "transformer.ln_f")
    logits = (x.bfloat16() @ wte.bfloat16().T).float() if bf16 else x @ wte.T
    labels = torch.cat([torch.full((B, P), -100), torch.where(mask == 1, text, -100)], 1)
    text_loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                  labels[:, 1:].reshape(-1), ignore_index=-100)
    if cfg["rec"] == "none":
        return text_loss, text_loss, None, None, logits
    if cfg["rec"] == "mf":
        rating = (u * i).sum(1)
    else:
        if bf16:  # nn.Linear autocasts to bf16 (sigmoid follows its input); MF stays fp32
            lin = lambda z, n: torch.nn.functional.linear(
                z.bfloat16(), p[n + ".weight"].bfloat16(), p[n + ".bias"].bfloat16())
        else:
            lin = lambda z, n: z @ p[n + ".weight"].T + p[n + ".bias"]
        hid = torch.sigmoid(lin(torch.cat([u, i], 1), "recommender.first_layer"))
        for j in range(cfg["mlp_layers"]):
            hid = torch.sigmoid(lin(hid, f"recommender.layers.{j}"))
        rating = lin(hid, "recommender.last_layer")[:, 0].float()
    rating_loss = ((rating - t["batch.rating"]) ** 2).mean()  # mse_loss autocasts to fp32
    return text_loss + cfg["rec_lambda"] * rating_loss, text_loss, rating_loss, rating, logits


def rel(a, b):
    return (a - b).abs().max().item() / max(b.abs().max().item(), 1e-12)


AUTOCAST_BF16 = {"device_type": "cpu", "dtype": "bfloat16", "scope": "forward"}


def fp32_distance(cfg, t, names):
    """How far an autocast dump's step-0 outputs and gradients are from plain fp32 semantics."""
    p = {n: t["param." + n].clone().requires_grad_(True) for n in names}
    loss, tl, rl, rating, logits = forward(cfg, p, t)
    loss.backward()
    d = {"logits": rel(logits.detach(), t["out.logits"]), "text_loss": rel(tl.detach(), t["out.text_loss"])}
    d["grads"] = max(rel(p[n].grad, t["grad." + n]) for n in names)
    return d


def check(path):
    md, t = load(path)
    assert md["format"] == "pepler-parity/1"
    cfg, opt, trainable = json.loads(md["config"]), json.loads(md["optimizer"]), json.loads(md["trainable"])
    bf16 = "autocast" in md
    if bf16:
        assert json.loads(md["autocast"]) == AUTOCAST_BF16, md["autocast"]
    names = [k[len("param."):] for k in t if k.startswith("param.")]
    p = {n: t["param." + n].clone().requires_grad_(True) for n in names}
    loss, tl, rl, rating, logits = forward(cfg, p, t, bf16)
    loss.backward()
    worst = {"logits": rel(logits.detach(), t["out.logits"]), "loss": rel(loss.detach(), t["out.loss"]),
             "text_loss": rel(tl.detach(), t["out.text_loss"])}
    if rl is not None:
        worst["rating"] = rel(rating.detach(), t["out.rating"])
        worst["rating_loss"] = rel(rl.detach(), t["out.rating_loss"])
    worst["grads"] = max(rel(p[n].grad, t["grad." + n]) for n in names)
    # AdamW as written in the doc, from the stored step-0 parameters
    lr, (b1, b2), eps, wd = opt["lr"], opt["betas"], opt["eps"], opt["weight_decay"]
    variant = opt.get("variant", "torch")
    q = {n: t["param." + n].clone() for n in names}
    m = {n: torch.zeros_like(q[n]) for n in trainable}
    v = {n: torch.zeros_like(q[n]) for n in trainable}
    step_loss, step_param = 0.0, 0.0
    for s in range(1, opt["steps"] + 1):
        leaf = {n: q[n].clone().requires_grad_(n in trainable) for n in names}
        ls = forward(cfg, leaf, t, bf16)[0]
        ls.backward()
        step_loss = max(step_loss, rel(ls.detach(), t[f"step{s}.loss"]))
        for n in trainable:
            g = leaf[n].grad
            if variant == "hf":  # transformers.AdamW: eps before the bias correction, decay after
                m[n] = m[n] * b1 + (1 - b1) * g
                v[n] = v[n] * b2 + (1 - b2) * g * g
                q[n] = q[n] - (lr * math.sqrt(1 - b2 ** s) / (1 - b1 ** s)) * m[n] / (v[n].sqrt() + eps)
                if wd > 0:
                    q[n] = q[n] - lr * wd * q[n]
            else:  # torch.optim.AdamW
                q[n] = q[n] * (1 - lr * wd)
                m[n] = m[n] + (1 - b1) * (g - m[n])
                v[n] = v[n] * b2 + (1 - b2) * g * g
                denom = v[n].sqrt() / math.sqrt(1 - b2 ** s) + eps
                q[n] = q[n] - (lr / (1 - b1 ** s)) * m[n] / denom
            # compare the update (p_k - p_0), which is what AdamW changes
            d_ref = t[f"step{s}.param.{n}"] - t["param." + n]
            step_param = max(step_param, rel(q[n] - t["param." + n], d_ref))
    worst["step_loss"], worst["step_update"] = step_loss, step_param
    info = fp32_distance(cfg, t, names) if bf16 else {}
    return worst, info


def main():
    bad = False
    for path in sys.argv[1:]:
        w, info = check(path)
        print(path, " ".join(f"{k}={v:.2e}" for k, v in w.items()))
        if info:
            print("  fp32 distance (autocast bf16 vs plain fp32, not checked):",
                  " ".join(f"{k}={v:.2e}" for k, v in info.items()))
        # AdamW normalises each gradient entry: entries with |g| near eps amplify the ~1e-7 relative
        # gradient differences of an independent implementation, so updates get a looser bound.
        bad |= any(v > (1e-3 if k == "step_update" else 1e-5) for k, v in w.items())
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
