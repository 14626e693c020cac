#!/usr/bin/env python3
"""PyTorch reference for PEPLER parity: writes tests/fixtures/parity/<case>.safetensors.

Builds PEPLER exactly as the original (lileipisces/PEPLER, module.py: UIPrompt /
UIPromptWithReg / FeaturePrompt, MF, MLP) on a small random Hugging Face GPT2LMHeadModel
(dropout 0, tied LM head, eager attention), runs one forward/backward and N AdamW steps
(torch.optim.AdamW, or transformers.AdamW for cases with optimizer "hf"),
and stores inputs, parameters, outputs, gradients and post-step parameters in the format
of docs/parity-format.md (contract "pepler-parity/1").

With --autocast bf16 every forward runs under torch.autocast("cpu", dtype=torch.bfloat16), as the
original would under AMP (backward and optimizer outside it, fp32 parameters and optimizer state, no
GradScaler: bf16 needs none); the file gets an `autocast` metadata key and the bf16 logits are
stored widened (exactly) to F32, so the format is unchanged. The committed one is
tests/fixtures/parity/bf16/continuous_hf_adamw.safetensors.

Usage:
    python scripts/reference/dump.py --all --out tests/fixtures/parity
    python scripts/reference/dump.py --case continuous_mf --out /tmp/x
    python scripts/reference/dump.py --case continuous_hf_adamw --autocast bf16 \
        --out tests/fixtures/parity/bf16
The output is bit-for-bit reproducible on a given machine (single thread, fixed seeds, our own
deterministic safetensors writer); SHA256SUMS in the output directory lists its files.
"""

import argparse
import contextlib
import copy
import hashlib
import json
import math
import os
import struct
import sys

import numpy as np
import torch
import torch.nn as nn
import transformers
from transformers import GPT2Config, GPT2LMHeadModel

FORMAT = "pepler-parity/1"
IGNORE_INDEX = -100
# The `autocast` metadata value of an --autocast bf16 dump (absent in fp32 dumps, which therefore
# stay byte-identical to the files written before this option existed).
AUTOCAST_BF16 = {"device_type": "cpu", "dtype": "bfloat16", "scope": "forward"}


# --------------------------------------------------------------------------------------
# Cases. Sizes are chosen so that all fixtures together stay around 3 MB.
# --------------------------------------------------------------------------------------
def _case(**kw):
    base = dict(
        n_positions=32,
        layer_norm_epsilon=1e-5,
        rec="none",
        rec_lambda=0.0,
        mlp_hidden=0,
        mlp_layers=0,
        n_users=5,
        n_items=7,
        prompt_len=0,  # discrete only
        lr=1e-3,
        weight_decay=0.0,
        steps=5,
        optimizer="torch",  # "torch": torch.optim.AdamW; "hf": transformers.AdamW (the original's)
    )
    base.update(kw)
    v = base["vocab_size"]
    base.setdefault("bos_id", v - 3)
    base.setdefault("eos_id", v - 2)
    base.setdefault("pad_id", v - 1)
    return base


CASES = {
    # Stage 1 of sequential tuning as the original does it: the prompts AND the (tied,
    # freshly resized) word-embedding table train, the rest of the LM is frozen.
    "continuous_ragged": _case(
        seed=1001, vocab_size=523, n_positions=32, n_embd=48, n_layer=2, n_head=3,
        n_users=5, n_items=7, batch=3, text_len=25, prompt="continuous",
        trainable=["user_embeddings.weight", "item_embeddings.weight", "transformer.wte.weight"],
    ),
    # reg.py with --use_mf: everything trains from the start; this run covers weight decay.
    "continuous_mf": _case(
        seed=1002, vocab_size=131, n_positions=24, n_embd=32, n_layer=1, n_head=4,
        n_users=6, n_items=5, batch=4, text_len=20, prompt="continuous",
        rec="mf", rec_lambda=0.1, weight_decay=0.01, trainable="all",
    ),
    # MLP rating head (smaller than the original 400 hidden), LM frozen.
    "continuous_mlp": _case(
        seed=1003, vocab_size=131, n_positions=24, n_embd=32, n_layer=2, n_head=2,
        n_users=6, n_items=6, batch=4, text_len=18, prompt="continuous",
        rec="mlp", rec_lambda=0.25, mlp_hidden=40, mlp_layers=2,
        trainable="prompt+rec",
    ),
    # PEPLER-D: feature tokens as a discrete prompt through GPT-2's own wte; lr 1e-4.
    "discrete": _case(
        seed=1004, vocab_size=131, n_positions=24, n_embd=32, n_layer=1, n_head=2,
        batch=3, text_len=16, prompt="discrete", prompt_len=6, lr=1e-4,
        n_users=4, n_items=4, trainable="all",
    ),
    # The optimizer the original scripts really use: transformers.AdamW (eps added before the
    # bias correction, weight decay after the update). Everything trains, weight decay on, so
    # both differences from torch.optim.AdamW show; small so the file stays under 300 KB.
    "continuous_hf_adamw": _case(
        seed=1005, vocab_size=67, n_positions=24, n_embd=16, n_layer=2, n_head=2,
        n_users=6, n_items=5, batch=4, text_len=20, prompt="continuous",
        rec="mf", rec_lambda=0.1, weight_decay=0.01, trainable="all", optimizer="hf",
    ),
}


# --------------------------------------------------------------------------------------
# The PEPLER modules, mirroring module.py of the original.
# --------------------------------------------------------------------------------------
class MF(nn.Module):
    def forward(self, user, item):  # (B, C) x2
        return torch.sum(user * item, 1)  # (B,)


def _get_clones(module, n):
    return nn.ModuleList([copy.deepcopy(module) for _ in range(n)])


class MLP(nn.Module):
    def __init__(self, emsize, hidden_size=400, num_layers=2):
        super().__init__()
        self.first_layer = nn.Linear(emsize * 2, hidden_size)
        self.last_layer = nn.Linear(hidden_size, 1)
        layer = nn.Linear(hidden_size, hidden_size)
        self.layers = _get_clones(layer, num_layers)
        self.sigmoid = nn.Sigmoid()
        self.init_weights()

    def init_weights(self):
        initrange = 0.1
        self.first_layer.weight.data.uniform_(-initrange, initrange)
        self.first_layer.bias.data.zero_()
        self.last_layer.weight.data.uniform_(-initrange, initrange)
        self.last_layer.bias.data.zero_()
        for layer in self.layers:
            layer.weight.data.uniform_(-initrange, initrange)
            layer.bias.data.zero_()

    def forward(self, user, item):
        ui_cat = torch.cat([user, item], 1)
        hidden = self.sigmoid(self.first_layer(ui_cat))
        for layer in self.layers:
            hidden = self.sigmoid(layer(hidden))
        return torch.squeeze(self.last_layer(hidden), 1)  # (B,); original squeezes all dims


class ContinuousPepler(GPT2LMHeadModel):
    """UIPrompt (rec none) / UIPromptWithReg (rec mf|mlp). The original names the rating
    head `rec`; contract pepler-parity/1 names it `recommender`."""

    def init_prompt(self, nuser, nitem, rec, mlp_hidden, mlp_layers):
        self.src_len = 2
        emsize = self.transformer.wte.weight.size(1)
        self.user_embeddings = nn.Embedding(nuser, emsize)
        self.item_embeddings = nn.Embedding(nitem, emsize)
        if rec == "mf":
            self.recommender = MF()
        elif rec == "mlp":
            self.recommender = MLP(emsize, mlp_hidden, mlp_layers)
        else:
            self.recommender = None
        initrange = 0.1
        self.user_embeddings.weight.data.uniform_(-initrange, initrange)
        self.item_embeddings.weight.data.uniform_(-initrange, initrange)

    def pepler_forward(self, user, item, text, mask, ignore_index=IGNORE_INDEX):
        batch_size = user.size(0)
        u_src = self.user_embeddings(user)
        i_src = self.item_embeddings(item)
        w_src = self.transformer.wte(text)
        src = torch.cat([u_src.unsqueeze(1), i_src.unsqueeze(1), w_src], 1)
        rating = self.recommender(u_src, i_src) if self.recommender is not None else None
        pad_left = torch.ones((batch_size, self.src_len), dtype=torch.int64)
        pad_input = torch.cat([pad_left, mask], 1)
        pred_left = torch.full((batch_size, self.src_len), ignore_index, dtype=torch.int64)
        pred_right = torch.where(mask == 1, text, torch.tensor(ignore_index))
        prediction = torch.cat([pred_left, pred_right], 1)
        out = self(attention_mask=pad_input, inputs_embeds=src, labels=prediction)
        return out, rating


class DiscretePepler(GPT2LMHeadModel):
    """FeaturePrompt: context (feature tokens) + explanation through wte, prompt fully attended."""

    def pepler_forward(self, context, explanation, exp_mask, ignore_index=IGNORE_INDEX):
        text = torch.cat([context, explanation], 1)
        src = self.transformer.wte(text)
        pad_left = torch.ones_like(context, dtype=torch.int64)
        pad_input = torch.cat([pad_left, exp_mask], 1)
        pred_left = torch.full_like(context, ignore_index, dtype=torch.int64)
        pred_right = torch.where(exp_mask == 1, explanation, torch.tensor(ignore_index))
        prediction = torch.cat([pred_left, pred_right], 1)
        out = self(attention_mask=pad_input, inputs_embeds=src, labels=prediction)
        return out, None


# --------------------------------------------------------------------------------------
def build_model(c):
    cfg = GPT2Config(
        vocab_size=c["vocab_size"], n_positions=c["n_positions"], n_embd=c["n_embd"],
        n_layer=c["n_layer"], n_head=c["n_head"], layer_norm_epsilon=c["layer_norm_epsilon"],
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=c["bos_id"], eos_token_id=c["eos_id"], pad_token_id=c["pad_id"],
        tie_word_embeddings=True,
    )
    cfg._attn_implementation = "eager"  # the original (transformers 4.18) only had eager
    cls = DiscretePepler if c["prompt"] == "discrete" else ContinuousPepler
    model = cls(cfg)
    assert model.config._attn_implementation == "eager", model.config._attn_implementation
    assert model.lm_head.weight is model.transformer.wte.weight
    # Pretrained GPT-2 has non-trivial LayerNorm affine parameters and biases; HF's random
    # init makes them 1/0, which would hide swapped or ignored terms. Perturb them.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                p.add_(torch.randn_like(p) * 0.1)
            elif name.endswith(".bias"):
                p.copy_(torch.randn_like(p) * 0.05)
    if c["prompt"] == "continuous":
        model.init_prompt(c["n_users"], c["n_items"], c["rec"], c["mlp_hidden"], c["mlp_layers"])
    model.train()  # dropout probabilities are 0, so train mode == eval mode numerically
    return model


def make_batch(c, gen):
    B, T, V = c["batch"], c["text_len"], c["vocab_size"]
    n_words = V - 3
    # number of words per row: row 0 full (T-2 words), row 1 short, the rest in between
    lens = [T - 2, 2] + [int(x) for x in torch.randint(3, T - 2, (B - 2,), generator=gen)]
    text = torch.full((B, T), c["pad_id"], dtype=torch.int64)
    mask = torch.zeros((B, T), dtype=torch.int64)
    for b, n in enumerate(lens):
        words = torch.randint(0, n_words, (n,), generator=gen)
        text[b, 0] = c["bos_id"]
        text[b, 1:1 + n] = words
        text[b, 1 + n] = c["eos_id"]
        mask[b, :n + 2] = 1
    batch = {
        "batch.user": torch.randint(0, c["n_users"], (B,), generator=gen),
        "batch.item": torch.randint(0, c["n_items"], (B,), generator=gen),
        "batch.text": text,
        "batch.mask": mask,
        "batch.rating": torch.randint(1, 6, (B,), generator=gen).to(torch.float32),
    }
    if c["prompt"] == "discrete":
        P = c["prompt_len"]
        plens = [P, 1] + [int(x) for x in torch.randint(1, P + 1, (B - 2,), generator=gen)]
        prompt = torch.full((B, P), c["pad_id"], dtype=torch.int64)
        for b, n in enumerate(plens):
            prompt[b, :n] = torch.randint(0, n_words, (n,), generator=gen)
        batch["batch.prompt"] = prompt
    return batch


def forward_losses(model, c, batch):
    """Returns (loss, text_loss, rating_loss or None, rating or None, logits)."""
    if c["prompt"] == "discrete":
        out, rating = model.pepler_forward(batch["batch.prompt"], batch["batch.text"], batch["batch.mask"])
    else:
        out, rating = model.pepler_forward(batch["batch.user"], batch["batch.item"],
                                           batch["batch.text"], batch["batch.mask"])
    text_loss = out.loss
    if rating is None:
        return text_loss, text_loss, None, None, out.logits
    rating_loss = nn.MSELoss()(rating, batch["batch.rating"])
    # reg.py: args.text_reg (1.0) * t_loss + args.rating_reg * r_loss
    loss = 1.0 * text_loss + c["rec_lambda"] * rating_loss
    return loss, text_loss, rating_loss, rating, out.logits


def check_text_loss(c, batch, logits, text_loss):
    """Independent recomputation of the HF loss, to pin down its semantics."""
    B = batch["batch.text"].shape[0]
    P = logits.shape[1] - batch["batch.text"].shape[1]
    labels = torch.cat([torch.full((B, P), IGNORE_INDEX),
                        torch.where(batch["batch.mask"] == 1, batch["batch.text"], IGNORE_INDEX)], 1)
    lp = torch.log_softmax(logits[:, :-1].double(), -1)
    tgt = labels[:, 1:]
    keep = tgt != IGNORE_INDEX
    nll = -lp[keep].gather(1, tgt[keep].unsqueeze(1)).squeeze(1)
    ref = nll.mean()
    assert abs(ref.item() - text_loss.item()) < 1e-5, (ref.item(), text_loss.item())


def trainable_names(c, names):
    t = c["trainable"]
    if t == "all":
        return list(names)
    if t == "prompt+rec":
        return [n for n in names if n.startswith(("user_embeddings.", "item_embeddings.", "recommender."))]
    missing = [n for n in t if n not in names]
    assert not missing, missing
    return [n for n in names if n in t]


def make_optimizer(c, train_params):
    if c["optimizer"] == "torch":
        return torch.optim.AdamW(train_params, lr=c["lr"], betas=(0.9, 0.999), eps=1e-6,
                                 weight_decay=c["weight_decay"], foreach=False, fused=False,
                                 amsgrad=False, maximize=False)
    assert c["optimizer"] == "hf", c["optimizer"]
    # transformers.AdamW is deprecated in 4.46 but its step() is still the 4.18 code the original
    # PEPLER ran (checked: mul_/add_, mul_/addcmul_, sqrt().add_(eps), addcdiv_, then decay).
    from transformers import AdamW as HfAdamW
    return HfAdamW(train_params, lr=c["lr"], betas=(0.9, 0.999), eps=1e-6,
                   weight_decay=c["weight_decay"], correct_bias=True, no_deprecation_warning=True)


def check_hf_step1(c, before, params):
    """Pins down the transformers.AdamW step as docs/parity-format.md writes it (first step: m = v = 0)."""
    lr, (b1, b2), eps, wd = c["lr"], (0.9, 0.999), 1e-6, c["weight_decay"]
    step = lr * math.sqrt(1.0 - b2) / (1.0 - b1)
    for n, (p, g) in before.items():
        m = torch.zeros_like(p).mul_(b1).add_(g, alpha=1.0 - b1)
        v = torch.zeros_like(p).mul_(b2).addcmul_(g, g, value=1.0 - b2)
        q = p.clone().addcdiv_(m, v.sqrt().add_(eps), value=-step)
        if wd > 0.0:
            q.add_(q, alpha=-lr * wd)
        assert torch.equal(q, params[n].detach()), f"transformers.AdamW step 1 of {n}"


def autocast_ctx(autocast):
    """The context every forward of a case runs in: nothing (fp32), or CPU autocast to bf16."""
    if autocast is None:
        return contextlib.nullcontext()
    assert autocast == "bf16", autocast
    return torch.autocast("cpu", dtype=torch.bfloat16)


def as_stored(t):
    """A tensor as the format stores it: integers as they are, floats as F32. Under autocast the
    logits are bf16; widening bf16 to f32 is exact, so nothing is lost."""
    t = t.detach().clone()
    if t.is_floating_point() and t.dtype != torch.float32:
        assert t.dtype == torch.bfloat16, t.dtype
        t = t.float()
    return t


def run_case(name, c, autocast=None):
    torch.manual_seed(c["seed"])
    model = build_model(c)
    gen = torch.Generator().manual_seed(c["seed"] + 7)
    batch = make_batch(c, gen)

    params = dict(model.named_parameters())  # tied lm_head is deduplicated: wte appears once
    names = list(params.keys())
    assert "lm_head.weight" not in params
    tensors = {}
    tensors.update({k: v.clone() for k, v in batch.items()})
    for n in names:
        tensors["param." + n] = params[n].detach().clone()

    # step 0: everything requires grad
    for p in params.values():
        p.requires_grad_(True)
    with autocast_ctx(autocast):
        loss, text_loss, rating_loss, rating, logits = forward_losses(model, c, batch)
    if autocast is not None:
        # what autocast does to this model (docs/parity-format.md, "autocast bf16 dumps")
        assert logits.dtype == torch.bfloat16, logits.dtype
        assert loss.dtype == text_loss.dtype == torch.float32, (loss.dtype, text_loss.dtype)
    check_text_loss(c, batch, logits.detach().float(), text_loss.detach())
    model.zero_grad(set_to_none=True)
    loss.backward()  # outside autocast, as torch recommends
    tensors["out.logits"] = as_stored(logits)
    tensors["out.text_loss"] = as_stored(text_loss).reshape(())
    tensors["out.loss"] = as_stored(loss).reshape(())
    if rating is not None:
        tensors["out.rating_loss"] = as_stored(rating_loss).reshape(())
        tensors["out.rating"] = as_stored(rating)
    for n in names:
        g = params[n].grad
        # parameters stay f32 under autocast, so their gradients are f32 too
        assert g is None or g.dtype == torch.float32, (n, g.dtype)
        tensors["grad." + n] = torch.zeros_like(params[n]) if g is None else g.detach().clone()

    # optimizer steps on the trainable subset; the rest is frozen
    train_names = trainable_names(c, names)
    for n in names:
        params[n].requires_grad_(n in train_names)
    model.zero_grad(set_to_none=True)
    opt = make_optimizer(c, [params[n] for n in train_names])
    frozen_before = {n: params[n].detach().clone() for n in names if n not in train_names}
    for k in range(1, c["steps"] + 1):
        opt.zero_grad(set_to_none=True)
        with autocast_ctx(autocast):
            loss_k = forward_losses(model, c, batch)[0]
        tensors[f"step{k}.loss"] = as_stored(loss_k).reshape(())
        loss_k.backward()
        before = {n: (params[n].detach().clone(), params[n].grad.clone()) for n in train_names}
        opt.step()
        if k == 1 and c["optimizer"] == "hf":
            check_hf_step1(c, before, params)
        for n in train_names:
            tensors[f"step{k}.param.{n}"] = params[n].detach().clone()
    assert torch.equal(tensors["step1.loss"], tensors["out.loss"]), "step1.loss != out.loss"
    for n, v in frozen_before.items():
        assert torch.equal(params[n].detach(), v), f"frozen {n} changed"

    config = {
        "vocab_size": c["vocab_size"], "n_positions": c["n_positions"], "n_embd": c["n_embd"],
        "n_layer": c["n_layer"], "n_head": c["n_head"], "layer_norm_epsilon": c["layer_norm_epsilon"],
        "n_users": c["n_users"], "n_items": c["n_items"], "bos_id": c["bos_id"], "eos_id": c["eos_id"],
        "pad_id": c["pad_id"], "prompt": c["prompt"], "rec": c["rec"], "rec_lambda": c["rec_lambda"],
        "mlp_hidden": c["mlp_hidden"], "mlp_layers": c["mlp_layers"],
    }
    optimizer = {"lr": c["lr"], "betas": [0.9, 0.999], "eps": 1e-6,
                 "weight_decay": c["weight_decay"], "steps": c["steps"]}
    if c["optimizer"] != "torch":
        # absent means "torch", so the files dumped before this key existed stay bit-identical
        optimizer["variant"] = c["optimizer"]
    metadata = {
        "format": FORMAT,
        "case": name,
        "config": json.dumps(config, sort_keys=True),
        "optimizer": json.dumps(optimizer, sort_keys=True),
        "trainable": json.dumps(train_names),
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "seed": str(c["seed"]),
    }
    if autocast is not None:
        metadata["autocast"] = json.dumps(AUTOCAST_BF16, sort_keys=True)
    for k, t in tensors.items():
        assert t.dtype in _DTYPES, (k, t.dtype)
    return tensors, metadata


# --------------------------------------------------------------------------------------
# Deterministic safetensors writer: tensors sorted by (dtype size desc, name), metadata keys sorted, header
# padded with spaces to a multiple of 8 (as the reference implementation does). Readable
# by every safetensors reader; we check it with safetensors.safe_open after writing.
# --------------------------------------------------------------------------------------
_DTYPES = {torch.float32: ("F32", "<f4"), torch.int64: ("I64", "<i8")}


def write_safetensors(path, tensors, metadata):
    header = {"__metadata__": {k: metadata[k] for k in sorted(metadata)}}
    blobs = []
    offset = 0
    # like safetensors' own serializer: larger dtypes first, then by name, so every tensor
    # stays aligned to its element size (readers may cast the bytes in place)
    for name in sorted(tensors, key=lambda n: (-tensors[n].element_size(), n)):
        t = tensors[name].detach().contiguous().cpu()
        dt, npdt = _DTYPES[t.dtype]
        data = t.numpy().astype(npdt, copy=False).tobytes(order="C")
        header[name] = {"dtype": dt, "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    hbytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hbytes += b" " * ((8 - len(hbytes) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hbytes)))
        f.write(hbytes)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def verify_file(path, tensors, metadata):
    from safetensors import safe_open
    with safe_open(path, framework="pt") as f:
        assert f.metadata() == metadata
        assert sorted(f.keys()) == sorted(tensors)
        for k in f.keys():
            assert torch.equal(f.get_tensor(k), tensors[k]), k


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read())
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--all", action="store_true", help="dump every case")
    ap.add_argument("--case", action="append", default=[], choices=sorted(CASES))
    ap.add_argument("--out", default="tests/fixtures/parity")
    ap.add_argument("--autocast", choices=["bf16"], default=None,
                    help="run every forward under torch.autocast('cpu', dtype=torch.bfloat16) "
                         "(the committed bf16 dump: --case continuous_hf_adamw --out "
                         "tests/fixtures/parity/bf16)")
    args = ap.parse_args()
    cases = sorted(CASES) if args.all else args.case
    if not cases:
        ap.error("give --all or --case NAME")

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.set_default_dtype(torch.float32)
    os.makedirs(args.out, exist_ok=True)
    for name in cases:
        tensors, metadata = run_case(name, CASES[name], args.autocast)
        path = os.path.join(args.out, name + ".safetensors")
        write_safetensors(path, tensors, metadata)
        verify_file(path, tensors, metadata)
        print(f"{name}: {len(tensors)} tensors, {os.path.getsize(path)} bytes, "
              f"loss {tensors['out.loss'].item():.6f} -> step{CASES[name]['steps']} "
              f"{tensors['step%d.loss' % CASES[name]['steps']].item():.6f}"
              + (f" (autocast {args.autocast})" if args.autocast else ""), file=sys.stderr)
    if args.all or args.autocast:
        # the bf16 directory holds only the autocast dump(s): its SHA256SUMS lists them
        files = sorted(f for f in os.listdir(args.out) if f.endswith(".safetensors"))
        lines = "".join(f"{sha256(os.path.join(args.out, f))}  {f}\n" for f in files)
        with open(os.path.join(args.out, "SHA256SUMS"), "w") as f:
            f.write(lines)


if __name__ == "__main__":
    np.random.seed(0)
    main()
