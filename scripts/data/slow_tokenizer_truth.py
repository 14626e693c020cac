#!/usr/bin/env python3
"""Prints the token ids the ORIGINAL PEPLER pipeline gives the tiny fixture, for tests/data.rs.

Runs utils.py's DataLoader.load_data + Batchify / Batchify2 tokenization with the library the
original used: transformers 4.18.0's slow GPT2Tokenizer, built from the repo's vocabulary
(assets/gpt2/tokenizer.json) instead of the hub download. Setup (no torch needed):
    python3 -m venv /tmp/tf418
    /tmp/tf418/bin/pip install --no-deps transformers==4.18.0
    /tmp/tf418/bin/pip install regex filelock "huggingface-hub<0.6" numpy packaging pyyaml \
        requests tqdm sacremoses
    /tmp/tf418/bin/python scripts/data/slow_tokenizer_truth.py
The `tokenizers` wheel 4.18 wants (<0.13) has no build for current Pythons; without it
transformers falls back to its own AddedToken dataclass, whose str() is not the token text, so
we give it the str() the real one has. Nothing else is patched.
"""
import json
import os
import pickle
import tempfile

import transformers.tokenization_utils_base as tub

tub.AddedToken.__str__ = lambda self: self.content  # what tokenizers.AddedToken does
from transformers.models.gpt2.tokenization_gpt2 import GPT2Tokenizer  # noqa: E402

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


def slow_tokenizer():
    asset = json.load(open(os.path.join(REPO, "assets", "gpt2", "tokenizer.json"), encoding="utf-8"))
    d = tempfile.mkdtemp()
    json.dump(asset["model"]["vocab"], open(os.path.join(d, "vocab.json"), "w", encoding="utf-8"))
    merges = [m if isinstance(m, str) else " ".join(m) for m in asset["model"]["merges"]]
    with open(os.path.join(d, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    # What GPT2Tokenizer.from_pretrained('gpt2', bos_token=.., eos_token=.., pad_token=..) does.
    tok = GPT2Tokenizer(os.path.join(d, "vocab.json"), os.path.join(d, "merges.txt"),
                        bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    tok.sanitize_special_tokens()
    return tok


def main():
    tok = slow_tokenizer()
    print("bos/eos/pad", tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, "vocab", len(tok))
    reviews = pickle.load(open(os.path.join(REPO, "tests", "fixtures", "data", "tiny", "reviews.pickle"), "rb"))
    texts = []
    for review in reviews:  # DataLoader.load_data
        (fea, adj, tem, sco) = review["template"]
        tokens = tok(tem)["input_ids"]
        texts.append(tok.decode(tokens[:20]))
    enc = tok(["{} {} {}".format("<bos>", t, "<eos>") for t in texts], padding=True)  # Batchify
    for t, ids, m in zip(texts, enc["input_ids"], enc["attention_mask"]):
        print(repr(t), [x for x, keep in zip(ids, m) if keep])
    for s in ["room breakfast pool staff view", "location pool", "staff front desk location pool"]:
        print(repr(s), tok(s)["input_ids"])  # Batchify2 prompt (before padding and [:, :20])


if __name__ == "__main__":
    main()
