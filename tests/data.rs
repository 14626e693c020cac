//! Tests of the data layer: the original-format readers (tiny fixtures written by
//! scripts/data/make_fixtures.py), JSON lines, tokenization exactly as the original, batching,
//! the discrete prompt, the synthetic dataset, and every bad-input error.
//!
//! Expected token ids come from transformers 4.18.0's slow `GPT2Tokenizer` (the original's
//! library) run on the fixture with the repo's vocabulary (scripts/data/slow_tokenizer_truth.py).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use pepler_cuda::data::synthetic::{self, SyntheticConfig, FEATURES};
use pepler_cuda::data::{
    encode_explanation, encode_split, random_split, read_jsonl, Dataset, EncodeOptions, Padding,
    Split, TextStyle,
};
use pepler_cuda::data::{read_index_file, read_reviews_pickle};
use pepler_cuda::tokenizer::Tokenizer;

const BOS: u32 = 50257;
const EOS: u32 = 50258;
const PAD: u32 = 50259;

fn fx(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/data")
        .join(rel)
}

fn tiny() -> Dataset {
    Dataset::load(&fx("tiny/reviews.pickle"), Some(&fx("tiny/1")), 0).expect("tiny fixture loads")
}

fn tok() -> Tokenizer {
    Tokenizer::builtin().expect("builtin tokenizer")
}

/// The error chain as one string, as the CLI prints it.
fn err_text<T: std::fmt::Debug>(r: anyhow::Result<T>) -> String {
    format!("{:#}", r.expect_err("expected an error"))
}

// ---------------------------------------------------------------------------------------------
// Loading and id mapping

#[test]
fn pickle_loads_with_ids_in_first_appearance_order() {
    let ds = tiny();
    assert_eq!(ds.reviews.len(), 10);
    assert_eq!(ds.users.names(), ["u_alice", "u_bob", "u_carol", "u_dave"]);
    assert_eq!(ds.items.names(), ["h_ritz", "h_motel", "h_inn"]);
    let ui: Vec<(u32, u32)> = ds.reviews.iter().map(|r| (r.user, r.item)).collect();
    assert_eq!(
        ui,
        [
            (0, 0),
            (1, 0),
            (0, 1),
            (2, 2),
            (1, 1),
            (0, 2),
            (2, 0),
            (3, 2),
            (1, 2),
            (0, 0)
        ]
    );
    assert_eq!(ds.train, [0, 1, 2, 3, 4, 5, 6]);
    assert_eq!(ds.valid, [8]);
    assert_eq!(ds.test, [7, 9]);
    assert_eq!((ds.min_rating, ds.max_rating), (1.0, 5.0));
    // Int and float ratings both load.
    assert_eq!(ds.reviews[0].rating, 5.0);
    assert_eq!(ds.reviews[1].rating, 4.0);
    let r = &ds.reviews[4];
    assert_eq!(
        (
            r.feature.as_str(),
            r.adjective.as_str(),
            r.sentence.as_str(),
            r.sentiment
        ),
        ("front desk", "rude", "the front desk was rude", -1)
    );
    assert_eq!(
        ds.features,
        [
            "room",
            "staff",
            "breakfast",
            "location",
            "front desk",
            "pool",
            "view"
        ]
    );
    // Training-split features only: dave has none, bob's "breakfast" (validation) is absent.
    assert_eq!(ds.user_features[0], ["room", "breakfast", "pool"]);
    assert_eq!(ds.user_features[1], ["staff", "front desk"]);
    assert!(ds.user_features[3].is_empty());
    assert_eq!(ds.item_features[2], ["location", "pool"]);
}

#[test]
fn protocol2_pickle_loads_the_same() {
    let a = tiny();
    let b = Dataset::load(&fx("tiny/reviews_protocol2.pickle"), Some(&fx("tiny/1")), 0).unwrap();
    assert_eq!(a.reviews, b.reviews);
    assert_eq!(a.users, b.users);
}

#[test]
fn id_lookup_known_and_unknown() {
    let ds = tiny();
    assert_eq!(ds.users.lookup("u_carol").unwrap(), 2);
    assert_eq!(ds.items.lookup("h_inn").unwrap(), 2);
    assert_eq!(ds.users.name(1), Some("u_bob"));
    let e = err_text(ds.users.lookup("u_zed"));
    assert!(
        e.contains("unknown user id \"u_zed\"") && e.contains("4 users"),
        "{e}"
    );
    let e = err_text(ds.items.lookup("h_nowhere"));
    assert!(e.contains("unknown item id \"h_nowhere\""), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Tokenization exactly as the original

#[test]
fn explanations_tokenize_exactly_as_the_original() {
    let ds = tiny();
    let t = tok();
    let expected: [&[u32]; 10] = [
        &[BOS, 262, 2119, 373, 3424, 220, EOS],
        &[BOS, 1049, 4067, 290, 8030, 3085, 220, EOS],
        &[
            BOS, 1312, 1422, 470, 588, 262, 12607, 11, 340, 373, 4692, 13, 220, EOS,
        ],
        &[
            BOS, 262, 7541, 373, 287, 257, 1049, 4067, 11, 1969, 284, 262, 10481, 290, 262, 3085,
            547, 845, 8030, 290, 7613, 220, EOS,
        ],
        &[BOS, 262, 2166, 6915, 373, 22066, 220, EOS],
        &[BOS, 3621, 5933, 220, EOS],
        &[BOS, 262, 1570, 373, 13393, 220, EOS],
        &[BOS, 262, 2119, 373, 1402, 475, 3424, 220, EOS],
        &[BOS, 922, 12607, 220, EOS],
        &[BOS, 262, 3085, 547, 7613, 220, EOS],
    ];
    for (k, r) in ds.reviews.iter().enumerate() {
        let (seq, _) = encode_explanation(&t, &r.sentence, 20, TextStyle::Original).unwrap();
        assert_eq!(seq, expected[k], "review {k}: {:?}", r.sentence);
    }
}

#[test]
fn explanations_are_cut_to_20_bpe_tokens() {
    let ds = tiny();
    let t = tok();
    let long = &ds.reviews[3].sentence;
    assert_eq!(t.encode(long).unwrap().len(), 26);
    let (seq, text) = encode_explanation(&t, long, 20, TextStyle::Compact).unwrap();
    assert_eq!(seq.len(), 22);
    assert_eq!(seq[1..21], t.encode(long).unwrap()[..20]);
    // The kept text is the decoded first 20 tokens, cleaned up as transformers does.
    assert_eq!(
        text,
        "the hotel was in a great location, close to the beach and the staff were very friendly and helpful"
    );
    let (seq, text2) = encode_explanation(&t, long, 20, TextStyle::Original).unwrap();
    assert_eq!(text2, text);
    assert_eq!(seq.len(), 23); // "Ġthe" instead of "the", plus "Ġ" before <eos>
    let (seq, _) = encode_explanation(&t, long, 5, TextStyle::Compact).unwrap();
    assert_eq!(seq, [BOS, 1169, 7541, 373, 287, 257, EOS]);
}

// ---------------------------------------------------------------------------------------------
// Batching

#[test]
fn batch_layout_is_row_major_right_padded_with_mask() {
    let ds = tiny();
    let t = tok();
    let enc = encode_split(&ds, Split::Train, &t, &EncodeOptions::default()).unwrap();
    assert_eq!(enc.len(), 7);
    assert_eq!(enc.max_seq_len, 23);
    assert!(enc.prompts.is_none());
    let batches: Vec<_> = enc.batches(3, Padding::Batch).collect();
    assert_eq!(batches.len(), 3);
    assert_eq!(
        batches.iter().map(|b| b.len()).collect::<Vec<_>>(),
        [3, 3, 1]
    );
    let b = &batches[0];
    assert_eq!(b.users, [0, 1, 0]);
    assert_eq!(b.items, [0, 0, 1]);
    assert_eq!(b.ratings, [5.0, 4.0, 2.0]);
    assert_eq!(b.features, ["room", "staff", "breakfast"]);
    assert_eq!(b.rows, [0, 1, 2]);
    assert_eq!(b.seq_len, 14); // longest row of the batch
    assert_eq!(b.text.len(), 3 * 14);
    assert_eq!(b.mask.len(), 3 * 14);
    assert_eq!(
        &b.text[..14],
        &[BOS, 262, 2119, 373, 3424, 220, EOS, PAD, PAD, PAD, PAD, PAD, PAD, PAD]
    );
    assert_eq!(&b.mask[..14], &[1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(&b.text[28..42], enc.sequences[2].as_slice());
    assert!(b.mask[28..42].iter().all(|&m| m == 1));
    assert!(b.prompt.is_none());
    // Split padding: every batch has the split's longest length, like the original.
    for b in enc.batches(3, Padding::Split) {
        assert_eq!(b.seq_len, 23);
        assert_eq!(b.text.len(), b.len() * 23);
    }
}

#[test]
fn eval_order_is_fixed_and_shuffle_is_seeded() {
    let ds = synthetic::generate(&SyntheticConfig {
        n_reviews: 400,
        n_users: 30,
        n_items: 30,
        ..SyntheticConfig::default()
    })
    .unwrap();
    let t = tok();
    let enc = encode_split(&ds, Split::Train, &t, &EncodeOptions::default()).unwrap();
    let fixed: Vec<usize> = enc
        .batches(64, Padding::Batch)
        .flat_map(|b| b.rows)
        .collect();
    assert_eq!(fixed, (0..enc.len()).collect::<Vec<_>>());
    let order = |seed, epoch| {
        enc.shuffled_batches(64, Padding::Batch, seed, epoch)
            .order()
            .to_vec()
    };
    let a = order(7, 0);
    assert_eq!(a, order(7, 0), "same seed and epoch, same order");
    assert_ne!(a, order(7, 1), "each epoch shuffles differently");
    assert_ne!(a, order(8, 0));
    assert_ne!(a, fixed);
    let mut sorted = a.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, fixed, "a permutation of the split");
    let it = enc.shuffled_batches(64, Padding::Batch, 7, 0);
    assert_eq!(it.len(), enc.len().div_ceil(64));
    let rows: Vec<usize> = it.flat_map(|b| b.rows).collect();
    assert_eq!(rows, a);
}

// ---------------------------------------------------------------------------------------------
// Discrete prompt

#[test]
fn discrete_prompt_puts_shared_features_first() {
    let ds = tiny();
    // alice x ritz: shared "room", then alice's rest, then ritz's rest (first appearance order).
    assert_eq!(
        ds.prompt_features(0, 0, false),
        ["room", "breakfast", "pool", "staff", "view"]
    );
    // The original's precedence slip repeats the shared features.
    assert_eq!(
        ds.prompt_features(0, 0, true),
        ["room", "room", "breakfast", "pool", "staff", "view"]
    );
    // bob x inn share nothing; dave has no training reviews (the original would KeyError).
    assert_eq!(
        ds.prompt_features(1, 2, false),
        ["staff", "front desk", "location", "pool"]
    );
    assert_eq!(ds.prompt_features(3, 2, false), ["location", "pool"]);

    let t = tok();
    let opts = EncodeOptions {
        discrete_prompt: true,
        ..EncodeOptions::default()
    };
    let test = encode_split(&ds, Split::Test, &t, &opts).unwrap(); // rows: review 7, review 9
    let p = test.prompts.as_ref().unwrap();
    assert_eq!(p[0], [24886, 5933]); // "location pool"
    assert_eq!(p[1], [3823, 12607, 5933, 3085, 1570]); // "room breakfast pool staff view"
    assert_eq!(test.prompt_width, 5);
    let b = test.batches(2, Padding::Batch).next().unwrap();
    assert_eq!(b.prompt_len, 5);
    assert_eq!(
        b.prompt.as_deref().unwrap(),
        [24886, 5933, PAD, PAD, PAD, 3823, 12607, 5933, 3085, 1570]
    );
    // Prompt width is split-wide, not per batch (prompt padding is attended).
    let b1 = test.batches(1, Padding::Batch).next().unwrap();
    assert_eq!(b1.prompt_len, 5);
    assert_eq!(b1.prompt.as_deref().unwrap(), [24886, 5933, PAD, PAD, PAD]);

    // The model's batch carries the same ids and the prompt width.
    let mb = b.to_model_batch();
    assert_eq!((mb.b, mb.t, mb.p), (2, b.seq_len, 5));
    assert_eq!(
        (&mb.text, &mb.mask, &mb.prompt),
        (&b.text, &b.mask, b.prompt.as_ref().unwrap())
    );
    assert_eq!(
        (&mb.users, &mb.items, &mb.rating),
        (&b.users, &b.items, &b.ratings)
    );

    // Cut to max_prompt_tokens.
    let short = EncodeOptions {
        discrete_prompt: true,
        max_prompt_tokens: 3,
        ..EncodeOptions::default()
    };
    let test = encode_split(&ds, Split::Test, &t, &short).unwrap();
    assert_eq!(test.prompts.unwrap()[1], [3823, 12607, 5933]);
    assert_eq!(test.prompt_width, 3);
}

/// Prompts are assembled from per-feature pieces; they must equal tokenizing the joined string.
fn assert_prompts_match_direct_encoding(
    t: &Tokenizer,
    ds: &Dataset,
    split: Split,
    max: usize,
    repeat: bool,
) {
    let opts = EncodeOptions {
        discrete_prompt: true,
        max_prompt_tokens: max,
        repeat_shared_features: repeat,
        ..EncodeOptions::default()
    };
    let enc = encode_split(ds, split, t, &opts).unwrap();
    for (k, p) in enc.prompts.as_ref().unwrap().iter().enumerate() {
        let words = ds
            .prompt_features(enc.users[k], enc.items[k], repeat)
            .join(" ");
        let mut direct = t.encode(&words).unwrap();
        direct.truncate(max);
        assert_eq!(p, &direct, "row {k}: {words:?}");
    }
}

#[test]
fn discrete_prompt_pieces_equal_direct_tokenization() {
    let ds = tiny();
    let t = tok();
    for max in [1, 2, 3, 6, 20] {
        for repeat in [false, true] {
            for split in Split::ALL {
                assert_prompts_match_direct_encoding(&t, &ds, split, max, repeat);
            }
        }
    }
    let syn = synthetic::generate(&SyntheticConfig {
        n_reviews: 600,
        n_users: 40,
        n_items: 40,
        ..SyntheticConfig::default()
    })
    .unwrap();
    assert_prompts_match_direct_encoding(&t, &syn, Split::Test, 20, false);
    assert_prompts_match_direct_encoding(&t, &syn, Split::Valid, 5, true);
}

// ---------------------------------------------------------------------------------------------
// JSON lines

#[test]
fn jsonl_reads_template_and_flat_forms() {
    let ds = Dataset::load(&fx("jsonl/reviews.jsonl"), Some(&fx("tiny/1")), 0).unwrap();
    let p = tiny();
    assert_eq!(ds.users, p.users);
    assert_eq!(ds.items, p.items);
    assert_eq!(
        (ds.train.clone(), ds.valid.clone(), ds.test.clone()),
        (p.train, p.valid, p.test)
    );
    for (a, b) in ds.reviews.iter().zip(&p.reviews) {
        assert_eq!((a.user, a.item, a.rating), (b.user, b.item, b.rating));
        assert_eq!((&a.feature, &a.sentence), (&b.feature, &b.sentence));
    }
    assert_eq!(ds.reviews[0].adjective, "clean"); // template form keeps the adjective
    assert_eq!(ds.reviews[1].adjective, ""); // flat form has none
}

#[test]
fn jsonl_random_split_is_seeded_and_covers_users_in_train() {
    let path = fx("jsonl/reviews.jsonl");
    let a = Dataset::load(&path, None, 3).unwrap();
    let b = Dataset::load(&path, None, 3).unwrap();
    assert_eq!((&a.train, &a.valid, &a.test), (&b.train, &b.valid, &b.test));
    assert_eq!((a.train.len(), a.valid.len(), a.test.len()), (8, 1, 1));
    let mut all: Vec<usize> = a
        .train
        .iter()
        .chain(&a.valid)
        .chain(&a.test)
        .copied()
        .collect();
    all.sort_unstable();
    assert_eq!(all, (0..10).collect::<Vec<_>>());
    let in_train: HashSet<u32> = a.train.iter().map(|&i| a.reviews[i].user).collect();
    assert_eq!(
        in_train.len(),
        a.n_users(),
        "every user has a training review"
    );
    let items: HashSet<u32> = a.train.iter().map(|&i| a.reviews[i].item).collect();
    assert_eq!(items.len(), a.n_items());
    // Different seeds give different splits (over a few seeds at least one differs).
    let raw = read_jsonl(&path).unwrap();
    assert!((0..5).any(|s| random_split(&raw, s) != random_split(&raw, 3)));
}

// ---------------------------------------------------------------------------------------------
// Synthetic dataset

#[test]
fn synthetic_is_deterministic_and_sized() {
    let cfg = SyntheticConfig::default();
    let (a, _) = synthetic::generate_with_truth(&cfg).unwrap();
    let (b, _) = synthetic::generate_with_truth(&cfg).unwrap();
    assert_eq!(a.reviews, b.reviews);
    assert_eq!((&a.train, &a.valid, &a.test), (&b.train, &b.valid, &b.test));
    assert_eq!(a.reviews.len(), 6000);
    assert_eq!(
        (a.train.len(), a.valid.len(), a.test.len()),
        (4800, 600, 600)
    );
    assert_eq!(a.n_users(), 100);
    assert_eq!(a.n_items(), 120);
    assert!(a.min_rating >= 1.0 && a.max_rating <= 5.0);
    let c = synthetic::generate(&SyntheticConfig { seed: 43, ..cfg }).unwrap();
    assert_ne!(a.reviews, c.reviews);
    // Every rating value 1..5 occurs, so sentiment varies.
    let ratings: HashSet<u32> = a.reviews.iter().map(|r| r.rating as u32).collect();
    assert_eq!(ratings, (1..=5).collect());
}

#[test]
fn synthetic_explanations_mention_a_feature_the_user_wants_and_the_item_has() {
    let (ds, truth) = synthetic::generate_with_truth(&SyntheticConfig::default()).unwrap();
    let names: HashSet<&str> = FEATURES.iter().map(|f| f.0).collect();
    for r in &ds.reviews {
        assert!(names.contains(r.feature.as_str()));
        let prefs = &truth.user_prefs[r.user as usize];
        let aspects = &truth.item_aspects[r.item as usize];
        assert!(
            prefs.iter().any(|(f, _)| f == &r.feature),
            "{r:?} not a user preference"
        );
        assert!(
            aspects.iter().any(|(f, _)| f == &r.feature),
            "{r:?} not an item aspect"
        );
        let words: Vec<&str> = r.sentence.split(' ').collect();
        assert!(words.contains(&r.feature.as_str()), "{r:?}");
        assert!(words.contains(&r.adjective.as_str()), "{r:?}");
        let want = if r.rating >= 4.0 {
            1
        } else if r.rating <= 2.0 {
            -1
        } else {
            0
        };
        assert_eq!(r.sentiment, want, "{r:?}");
        if r.sentiment == 1 {
            let f = FEATURES.iter().find(|f| f.0 == r.feature).unwrap();
            assert!(f.1.contains(&r.adjective.as_str()), "{r:?}");
        }
    }
    // Everyone appears in training (prompts are learnable for every test pair).
    let users: HashSet<u32> = ds.train.iter().map(|&i| ds.reviews[i].user).collect();
    assert_eq!(users.len(), ds.n_users());
}

#[test]
fn synthetic_feature_is_predictable_from_the_pair_but_not_without_it() {
    // The structure a prompt-using model can exploit: the user's top shared aspect predicts the
    // test feature far better than the globally most frequent training feature.
    let (ds, truth) = synthetic::generate_with_truth(&SyntheticConfig::default()).unwrap();
    let mut counts = std::collections::HashMap::new();
    for &i in &ds.train {
        *counts
            .entry(ds.reviews[i].feature.as_str())
            .or_insert(0usize) += 1;
    }
    let top = counts
        .iter()
        .max_by_key(|(f, c)| (**c, std::cmp::Reverse(**f)))
        .unwrap()
        .0;
    let mut hit_global = 0;
    let mut hit_pair = 0;
    for &i in &ds.test {
        let r = &ds.reviews[i];
        hit_global += usize::from(r.feature == *top);
        let aspects = &truth.item_aspects[r.item as usize];
        let best = truth.user_prefs[r.user as usize]
            .iter()
            .filter(|(f, _)| aspects.iter().any(|(g, _)| g == f))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap();
        hit_pair += usize::from(best.0 == r.feature);
    }
    let n = ds.test.len() as f64;
    let (g, p) = (hit_global as f64 / n, hit_pair as f64 / n);
    assert!(g < 0.15, "global-majority FMR {g}");
    assert!(p > 0.6, "pair-aware FMR {p}");
}

#[test]
fn synthetic_bad_config_is_an_error() {
    let e = err_text(synthetic::generate(&SyntheticConfig {
        n_users: 5,
        n_items: 5,
        ..SyntheticConfig::default()
    }));
    assert!(e.contains("pairs share an aspect"), "{e}");
    let e = err_text(synthetic::generate(&SyntheticConfig {
        n_features: 99,
        ..SyntheticConfig::default()
    }));
    assert!(e.contains("n_features"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Errors: each names the file and the problem

#[test]
fn missing_pickle_is_an_error_naming_it() {
    let e = err_text(Dataset::load(
        &fx("tiny/nope.pickle"),
        Some(&fx("tiny/1")),
        0,
    ));
    assert!(
        e.contains("cannot read the reviews pickle") && e.contains("nope.pickle"),
        "{e}"
    );
}

#[test]
fn truncated_pickle_is_an_error_naming_it() {
    let e = err_text(Dataset::load(
        &fx("corrupt/truncated.pickle"),
        Some(&fx("tiny/1")),
        0,
    ));
    assert!(
        e.contains("truncated.pickle") && e.contains("not a readable pickle"),
        "{e}"
    );
}

#[test]
fn pickle_that_is_not_a_list_is_an_error() {
    let e = err_text(Dataset::load(
        &fx("corrupt/not_a_list.pickle"),
        Some(&fx("tiny/1")),
        0,
    ));
    assert!(
        e.contains("not_a_list.pickle") && e.contains("expected a pickled list"),
        "{e}"
    );
}

#[test]
fn review_without_template_is_an_error_naming_it() {
    let e = err_text(Dataset::load(
        &fx("corrupt/missing_template.pickle"),
        Some(&fx("tiny/1")),
        0,
    ));
    assert!(
        e.contains("missing_template.pickle") && e.contains("review 3") && e.contains("'template'"),
        "{e}"
    );
}

#[test]
fn non_numeric_rating_is_an_error_naming_it() {
    let e = err_text(Dataset::load(
        &fx("corrupt/bad_rating.pickle"),
        Some(&fx("tiny/1")),
        0,
    ));
    assert!(
        e.contains("bad_rating.pickle")
            && e.contains("review 2")
            && e.contains("'rating' is not a number"),
        "{e}"
    );
    let e = err_text(Dataset::load(&fx("jsonl/bad_rating.jsonl"), None, 0));
    assert!(
        e.contains("bad_rating.jsonl line 5") && e.contains("'rating' is not a number"),
        "{e}"
    );
}

#[test]
fn jsonl_without_text_is_an_error_naming_the_line() {
    let e = err_text(Dataset::load(&fx("jsonl/no_text.jsonl"), None, 0));
    assert!(
        e.contains("no_text.jsonl line 2") && e.contains("'text'"),
        "{e}"
    );
}

#[test]
fn index_past_the_end_is_an_error_naming_the_file() {
    let e = err_text(Dataset::load(
        &fx("tiny/reviews.pickle"),
        Some(&fx("tiny/bad_index")),
        0,
    ));
    assert!(
        e.contains("bad_index/test.index")
            && e.contains("index 10 is past the end of the 10 reviews"),
        "{e}"
    );
}

#[test]
fn empty_split_is_an_error_naming_the_file() {
    let e = err_text(Dataset::load(
        &fx("tiny/reviews.pickle"),
        Some(&fx("tiny/empty_split")),
        0,
    ));
    assert!(
        e.contains("empty_split/validation.index") && e.contains("empty validation split"),
        "{e}"
    );
}

#[test]
fn unreadable_or_garbled_index_file_is_an_error_naming_it() {
    let e = err_text(Dataset::load(
        &fx("tiny/reviews.pickle"),
        Some(&fx("tiny/missing_index")),
        0,
    ));
    assert!(
        e.contains("cannot read index file") && e.contains("missing_index/test.index"),
        "{e}"
    );
    let e = err_text(Dataset::load(
        &fx("tiny/reviews.pickle"),
        Some(&fx("tiny/garbage_index")),
        0,
    ));
    assert!(
        e.contains("garbage_index/train.index")
            && e.contains("\"x\" is not a non-negative integer"),
        "{e}"
    );
    let e = err_text(Dataset::load(
        &fx("tiny/reviews.pickle"),
        Some(&fx("tiny/no_such_dir")),
        0,
    ));
    assert!(
        e.contains("split folder") && e.contains("no_such_dir"),
        "{e}"
    );
    let e = err_text(Dataset::load(&fx("tiny/reviews.pickle"), None, 0));
    assert!(e.contains("needs its split folder"), "{e}");
}

#[test]
fn index_file_is_read_whole_whatever_the_whitespace() {
    let tmp = tempfile::tempdir().unwrap();
    let one = tmp.path().join("one.index");
    let many = tmp.path().join("many.index");
    std::fs::write(&one, "0 1 2 3 4 5 6\n").unwrap();
    // One index per line (with a CRLF, a tab, a blank line): all seven, not the first only.
    std::fs::write(&many, "0\n1\r\n2\t3\n\n4  5\n6").unwrap();
    let expected: Vec<usize> = (0..7).collect();
    assert_eq!(read_index_file(&one).unwrap(), expected);
    assert_eq!(read_index_file(&many).unwrap(), expected);
    std::fs::write(&many, "0\n1\nx\n").unwrap();
    let err = err_text(read_index_file(&many));
    assert!(
        err.contains("many.index line 3") && err.contains("\"x\""),
        "{err}"
    );
}

#[test]
fn splits_that_share_or_repeat_a_review_are_refused() {
    let raw = || read_reviews_pickle(&fx("tiny/reviews.pickle")).unwrap();
    let leak = Dataset::from_raw(
        "r",
        raw(),
        [vec![0, 1, 2], vec![3], vec![4, 2]],
        ["train.index", "validation.index", "test.index"],
    );
    let err = err_text(leak);
    assert!(
        err.contains("index 2 is in both the train split (train.index) and the test split"),
        "{err}"
    );
    let dup = Dataset::from_raw(
        "r",
        raw(),
        [vec![0, 1, 1], vec![3], vec![4]],
        ["train.index", "validation.index", "test.index"],
    );
    let err = err_text(dup);
    assert!(
        err.contains("train.index: index 1 appears more than once"),
        "{err}"
    );
}

#[test]
fn a_rating_beyond_f32_is_named_as_such() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("big.jsonl");
    std::fs::write(
        &path,
        "{\"user\": \"u\", \"item\": \"i\", \"rating\": 1e308, \"text\": \"fine\"}\n",
    )
    .unwrap();
    let err = err_text(read_jsonl(&path));
    assert!(
        err.contains("big.jsonl line 1") && err.contains("outside the range"),
        "{err}"
    );
}
