#!/usr/bin/env python3
"""Writes the tiny data fixtures for tests/data.rs into tests/fixtures/data/ (stdlib only).

The valid dataset has the EXACT shape of the PEPLER/PETER/NETE release: `reviews.pickle` is a
pickled list of dicts with `user`, `item`, `rating` and `template` = (feature, adjective,
sentence, sentiment), plus extra keys the loader must ignore; split folders hold
`train.index`, `validation.index`, `test.index` (space-separated indices on one line).
The corrupt variants each break one thing. Output is deterministic; rerun with
    python3 scripts/data/make_fixtures.py
and commit the result.
"""
import json
import os
import pickle

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "fixtures", "data")

# (user, item, rating, feature, adjective, sentence, sentiment)
RECORDS = [
    ("u_alice", "h_ritz", 5.0, "room", "clean", "the room was clean", 1),
    ("u_bob", "h_ritz", 4, "staff", "friendly", "great location and friendly staff", 1),
    ("u_alice", "h_motel", 2, "breakfast", "cold", "i did n't like the breakfast , it was cold .", -1),
    ("u_carol", "h_inn", 3, "location", "great",
     "the hotel was in a great location , close to the beach and the staff were very friendly "
     "and helpful , we will definitely come back", 1),
    ("u_bob", "h_motel", 1, "front desk", "rude", "the front desk was rude", -1),
    ("u_alice", "h_inn", 4, "pool", "nice", "nice pool", 1),
    ("u_carol", "h_ritz", 5, "view", "stunning", "the view was stunning", 1),
    ("u_dave", "h_inn", 3, "room", "small", "the room was small but clean", 1),
    ("u_bob", "h_inn", 4, "breakfast", "good", "good breakfast", 1),
    ("u_alice", "h_ritz", 5, "staff", "helpful", "the staff were helpful", 1),
]
SPLITS = {"train": [0, 1, 2, 3, 4, 5, 6], "validation": [8], "test": [7, 9]}


def review_dicts():
    out = []
    for (u, i, r, f, a, s, sent) in RECORDS:
        # Extra keys as in the release ('text', 'predicted'): the loader must ignore them.
        out.append({"user": u, "item": i, "rating": r, "template": (f, a, s, sent),
                    "predicted": "", "text": s})
    return out


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def write_splits(folder, splits):
    for name, idx in splits.items():
        if idx is None:
            continue
        write(os.path.join(folder, name + ".index"), (" ".join(str(x) for x in idx) + "\n").encode())


def main():
    tiny = os.path.join(ROOT, "tiny")
    good = pickle.dumps(review_dicts(), protocol=4)
    write(os.path.join(tiny, "reviews.pickle"), good)
    write(os.path.join(tiny, "reviews_protocol2.pickle"), pickle.dumps(review_dicts(), protocol=2))
    write_splits(os.path.join(tiny, "1"), SPLITS)
    write_splits(os.path.join(tiny, "bad_index"), dict(SPLITS, test=[7, 10]))
    write_splits(os.path.join(tiny, "empty_split"), dict(SPLITS, validation=[]))
    write_splits(os.path.join(tiny, "missing_index"), dict(SPLITS, test=None))
    write(os.path.join(tiny, "garbage_index", "train.index"), b"0 1 x 3\n")
    write_splits(os.path.join(tiny, "garbage_index"), dict(SPLITS, train=None))

    corrupt = os.path.join(ROOT, "corrupt")
    write(os.path.join(corrupt, "truncated.pickle"), good[: len(good) // 2])
    no_tpl = review_dicts()
    del no_tpl[3]["template"]
    write(os.path.join(corrupt, "missing_template.pickle"), pickle.dumps(no_tpl, protocol=4))
    bad_rating = review_dicts()
    bad_rating[2]["rating"] = "two"
    write(os.path.join(corrupt, "bad_rating.pickle"), pickle.dumps(bad_rating, protocol=4))
    write(os.path.join(corrupt, "not_a_list.pickle"), pickle.dumps({"user": "u"}, protocol=4))

    jl = os.path.join(ROOT, "jsonl")
    lines = []
    for k, (u, i, r, f, a, s, sent) in enumerate(RECORDS):
        if k % 2 == 0:
            lines.append({"user": u, "item": i, "rating": r, "template": [f, a, s, sent]})
        else:  # the flat form
            lines.append({"user": u, "item": i, "rating": r, "feature": f, "text": s})
    body = "\n".join(json.dumps(x) for x in lines) + "\n\n"
    write(os.path.join(jl, "reviews.jsonl"), body.encode())
    bad = list(lines)
    bad[4] = dict(bad[4], rating="five")
    write(os.path.join(jl, "bad_rating.jsonl"), ("\n".join(json.dumps(x) for x in bad) + "\n").encode())
    no_text = list(lines)
    no_text[1] = {"user": "u_bob", "item": "h_ritz", "rating": 4, "feature": "staff"}
    write(os.path.join(jl, "no_text.jsonl"), ("\n".join(json.dumps(x) for x in no_text) + "\n").encode())


if __name__ == "__main__":
    main()
