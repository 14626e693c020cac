#!/usr/bin/env python3
"""Times one PEPLER training step in PyTorch (CPU, or a CUDA GPU with --device cuda) at GPT-2 small shapes.

Model: HF GPT2LMHeadModel, 12 layers, n_embd 768, 12 heads, vocab 50260 (GPT-2 + <bos>/<eos>/<pad>),
n_positions 1024, randomly initialised (no download), dropout 0.1 in train mode as in the original,
continuous prompt (user + item embedding, 2 positions) with no rating head.
Batch: 8 rows x 22 text tokens (<bos> w.. <eos> <pad>.., ragged), i.e. 24 positions incl. the prompt.
One step = zero_grad + forward + loss.backward() + AdamW(lr 1e-3, eps 1e-6, wd 0).
--stage 2 (default) trains every parameter (the expensive stage); --stage 1 trains prompts + wte.
Warmup 2 steps, then the median of 10 timed steps. Prints one JSON line.
--device cuda runs the same step in eager mode on GPU 0 (fp32, TF32 off for matmuls as in the
pepler-cuda parity setting), synchronising before each clock read; inputs are drawn on the CPU with the
same generator, so both devices train on identical batches. Needs only torch + transformers (checked
with torch 2.11 on the GPU machine).

--autocast bf16 runs forward and loss under bf16 autocast (the fastest plain-PyTorch option a user has).

Usage: python scripts/reference/bench_step.py --threads 2 [--attn sdpa] [--autocast bf16]
       python scripts/reference/bench_step.py --device cuda --batch 128
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dump import ContinuousPepler  # noqa: E402  (the same module code as the fixtures)
from transformers import GPT2Config  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--text-len", type=int, default=22, help="text tokens incl. <bos>/<eos>/<pad>")
    ap.add_argument("--stage", type=int, choices=[1, 2], default=2)
    ap.add_argument("--attn", choices=["eager", "sdpa"], default="eager",
                    help="eager mirrors the original (transformers 4.18)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--autocast", choices=["off", "bf16"], default="off",
                    help="bf16 autocast around forward + loss (the user's fastest PyTorch option; "
                         "master weights and AdamW stay fp32)")
    args = ap.parse_args()

    if args.device == "cuda":
        if not torch.cuda.is_available():
            sys.exit("bench_step.py: --device cuda but torch sees no CUDA GPU "
                     f"(torch {torch.__version__}, built for CUDA {torch.version.cuda})")
        # fp32 everywhere, as the pepler-cuda parity runs: no TF32 in matmuls or convolutions
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    dev = torch.device(args.device)

    def sync():
        if args.device == "cuda":
            torch.cuda.synchronize()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    V, bos, eos, pad = 50260, 50257, 50258, 50259
    cfg = GPT2Config(vocab_size=V, n_positions=1024, n_embd=768, n_layer=12, n_head=12,
                     resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1,
                     bos_token_id=bos, eos_token_id=eos, pad_token_id=pad)
    cfg._attn_implementation = args.attn
    model = ContinuousPepler(cfg)
    n_users, n_items = 1000, 1000
    model.init_prompt(n_users, n_items, "none", 0, 0)
    model.to(dev)
    model.train()

    if args.stage == 1:
        for n, p in model.named_parameters():
            p.requires_grad_(n.startswith(("user_embeddings.", "item_embeddings.", "transformer.wte.")))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0)

    B, T = args.batch, args.text_len
    g = torch.Generator().manual_seed(1)
    lens = torch.randint(5, T - 1, (B,), generator=g)
    lens[0] = T - 2
    text = torch.full((B, T), pad, dtype=torch.int64)
    mask = torch.zeros((B, T), dtype=torch.int64)
    for b in range(B):
        n = int(lens[b])
        text[b, 0] = bos
        text[b, 1:1 + n] = torch.randint(0, 50257, (n,), generator=g)
        text[b, 1 + n] = eos
        mask[b, :n + 2] = 1
    user = torch.randint(0, n_users, (B,), generator=g)
    item = torch.randint(0, n_items, (B,), generator=g)
    text, mask, user, item = (t.to(dev) for t in (text, mask, user, item))

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=args.device, dtype=torch.bfloat16,
                            enabled=args.autocast == "bf16"):
            out, _ = model.pepler_forward(user, item, text, mask)
        out.loss.backward()
        opt.step()
        return out.loss.item()

    for _ in range(args.warmup):
        step()
    sync()
    times = []
    for _ in range(args.iters):
        t0 = time.perf_counter()
        step()  # .item() on the loss already waits for the GPU; sync() makes it explicit
        sync()
        times.append(time.perf_counter() - t0)
    print(json.dumps({
        "framework": "pytorch", "threads": args.threads, "median_step_s": round(statistics.median(times), 4),
        "min_step_s": round(min(times), 4), "batch": B, "text_len": T, "seq_len": T + 2,
        "stage": args.stage, "attn": args.attn, "autocast": args.autocast, "torch": torch.__version__,
        "trainable_params": sum(p.numel() for p in params), "device": args.device,
        "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
    }))


if __name__ == "__main__":
    main()
