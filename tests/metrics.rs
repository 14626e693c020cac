//! Metric tests with hand-computed expected values (the derivation is in the comment next to each
//! value), plus fast-vs-naive DIV on random data. The implementations mirror the original PEPLER
//! code (utils.py, TF-NMT bleu.py / rouge.py); see src/metrics/mod.rs.

use pepler_cuda::metrics::{
    bleu, evaluate_all, features, rating, rouge, text, EvalInputs, FeatureIndex, RatingInputs,
};
use pepler_cuda::tokenizer::Tokenizer;
use rand::{Rng, SeedableRng};

fn toks(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_string).collect()
}

fn close(got: f64, want: f64, tol: f64) {
    assert!(
        (got - want).abs() <= tol,
        "got {got:.17}, want {want:.17} (tol {tol:e})"
    );
}

// ---------------------------------------------------------------------------------------------
// BLEU

#[test]
fn bleu1_clips_counts_and_has_no_penalty_for_long_output() {
    // ref "the room was clean" (4), gen "the room is clean the" (5).
    // Unigram counts gen: the 2, room 1, is 1, clean 1; ref: the 1, room 1, was 1, clean 1.
    // Clipped matches: min(2,1) + 1 + 0 + 1 = 3 of 5 possible -> p1 = 0.6.
    // ratio = 5/4 > 1 -> bp = 1. BLEU-1 = 0.6 -> 60.
    let refs = vec![toks("the room was clean")];
    let gens = vec![toks("the room is clean the")];
    close(bleu::bleu_score(&refs, &gens, 1, false), 60.0, 1e-12);
    // BLEU-4: trigrams of gen (the room is, room is clean, is clean the) never occur in the
    // reference -> p3 = 0 -> geometric mean 0 (no smoothing).
    let r = bleu::compute_bleu(&[vec![refs[0].clone()]], &gens, 4, false);
    assert_eq!(r.bleu, 0.0);
    // p2: gen bigrams (the room)(room is)(is clean)(clean the), one in ref -> 1/4.
    assert_eq!(r.precisions, vec![0.6, 0.25, 0.0, 0.0]);
    assert_eq!((r.translation_length, r.reference_length), (5, 4));
}

#[test]
fn bleu4_brevity_penalty_over_the_corpus() {
    // pair 1: ref a b c d e, gen a b c d  -> matches 4/4, 3/3, 2/2, 1/1
    // pair 2: ref x y z w,   gen x y z w  -> matches 4/4, 3/3, 2/2, 1/1
    // corpus precisions all 1 -> geo mean 1; lengths: translation 8, reference 9,
    // ratio 8/9 <= 1 -> bp = exp(1 - 9/8) = exp(-0.125) = 0.8824969025845955.
    let refs = vec![toks("a b c d e"), toks("x y z w")];
    let gens = vec![toks("a b c d"), toks("x y z w")];
    let want = 100.0 * (-0.125f64).exp();
    close(bleu::bleu_score(&refs, &gens, 4, false), want, 1e-12);
    close(want, 88.24969025845955, 1e-12);
    // BLEU-1 has the same precision 1 and the same penalty.
    close(bleu::bleu_score(&refs, &gens, 1, false), want, 1e-12);
}

#[test]
fn bleu_n_is_the_geometric_mean_of_orders_1_to_n() {
    // ref a b c d, gen a b d c: p1 = 4/4; bigrams (a b)(b d)(d c) vs (a b)(b c)(c d) -> p2 = 1/3.
    // ratio 1 -> bp = exp(1 - 1) = 1. BLEU-2 = sqrt(1 * 1/3) = 0.5773502691896258.
    let refs = vec![toks("a b c d")];
    let gens = vec![toks("a b d c")];
    close(
        bleu::bleu_score(&refs, &gens, 2, false),
        100.0 * (1.0f64 / 3.0).sqrt(),
        1e-12,
    );
    // smooth=True (Lin & Och): p_i = (m+1)/(possible+1): p1 = 5/5, p2 = 2/4, p3 = 1/3, p4 = 1/2
    // (gen has 2 trigrams, 1 4-gram, no matches) -> (1 * 1/2 * 1/3 * 1/2)^(1/4) = (1/12)^(1/4).
    close(
        bleu::compute_bleu(&[vec![refs[0].clone()]], &gens, 4, true).bleu,
        (1.0f64 / 12.0).powf(0.25),
        1e-12,
    );
}

#[test]
fn bleu_multiple_references_use_max_counts_and_shortest_length() {
    // refs {a a b}, {a a a}; gen a a a a. Merged max count of "a" = 3 -> clipped 3 of 4 -> 0.75.
    // reference length = min(3, 3) = 3; ratio 4/3 > 1 -> bp 1.
    let refs = vec![vec![toks("a a b"), toks("a a a")]];
    let gens = vec![toks("a a a a")];
    let r = bleu::compute_bleu(&refs, &gens, 1, false);
    close(r.bleu, 0.75, 1e-15);
    assert_eq!(r.reference_length, 3);
}

#[test]
fn bleu_of_empty_output_is_zero_not_a_crash() {
    // Python raises ZeroDivisionError (ratio 0); the limit is bleu 0.
    let refs = vec![toks("a b")];
    let gens: Vec<Vec<String>> = vec![vec![]];
    assert_eq!(bleu::bleu_score(&refs, &gens, 4, false), 0.0);
}

// ---------------------------------------------------------------------------------------------
// ROUGE

#[test]
fn rouge_n_and_l_on_one_pair() {
    let (h, r) = ("the room is clean", "the room was very clean");
    // ROUGE-1 sets: hyp {the room is clean} (4), ref {the room was very clean} (5), overlap 3.
    // P = 3/4, R = 3/5, F = 2 * (0.45 / (1.35 + 1e-8)).
    let r1 = rouge::rouge_n(h, r, 1);
    assert_eq!((r1.p, r1.r), (0.75, 0.6));
    close(r1.f, 2.0 * (0.45 / (1.35 + 1e-8)), 1e-15);
    // ROUGE-2: hyp {the room, room is, is clean} (3), ref {the room, room was, was very,
    // very clean} (4), overlap 1 -> P = 1/3, R = 1/4, F = 2 * ((1/12) / (7/12 + 1e-8)) ~ 2/7.
    let r2 = rouge::rouge_n(h, r, 2);
    close(r2.p, 1.0 / 3.0, 1e-15);
    close(r2.r, 0.25, 1e-15);
    close(r2.f, 2.0 / 7.0, 1e-8);
    // ROUGE-L: LCS = "the room clean" = 3; R = 3/5 (ref words), P = 3/4; beta = P/R = 1.25;
    // F = (1 + 1.5625) * 0.6 * 0.75 / (0.6 + 1.5625 * 0.75) = 1.153125 / 1.771875 = 0.650793..
    // (not the harmonic mean: rouge.py sets beta = P/R; the 1e-12 terms shift it by ~3e-13).
    let rl = rouge::rouge_l_sentence_level(h, r);
    assert_eq!((rl.p, rl.r), (0.75, 0.6));
    close(rl.f, 1.153125 / 1.771875, 1e-11);
}

#[test]
fn rouge_n_counts_distinct_ngrams_only() {
    // Set-based as rouge.py: hyp "good good good" has the unigram set {good}; ref {good}.
    // P = R = 1 (count-based would give P = 1/3); F = 2 * (1 / (2 + 1e-8)) = 0.999999995.
    let r1 = rouge::rouge_n("good good good", "good", 1);
    assert_eq!((r1.p, r1.r), (1.0, 1.0));
    close(r1.f, 0.999999995, 1e-15);
    // ROUGE-2: hyp {good good}, ref has no bigram -> P = 0/1 = 0, R = 0 (empty ref set).
    let r2 = rouge::rouge_n("good good good", "good", 2);
    assert_eq!((r2.p, r2.r, r2.f), (0.0, 0.0, 0.0));
    // ROUGE-L: LCS 1, m = 1, n = 3 -> R = 1, P = 1/3, beta = 1/3:
    // F = (1 + 1/9) * 1/3 / (1 + 1/27) = (10/27) / (28/27) = 10/28.
    let rl = rouge::rouge_l_sentence_level("good good good", "good");
    close(rl.f, 10.0 / 28.0, 1e-11);
}

#[test]
fn rouge_empty_hypothesis_is_one_empty_word() {
    // "".split(" ") == [""]: one word that matches nothing -> all zero, no division by zero.
    let r1 = rouge::rouge_n("", "a b", 1);
    assert_eq!((r1.p, r1.r, r1.f), (0.0, 0.0, 0.0));
    let rl = rouge::rouge_l_sentence_level("", "a b");
    assert_eq!((rl.p, rl.r, rl.f), (0.0, 0.0, 0.0));
}

#[test]
fn rouge_score_is_mean_over_pairs_times_100() {
    // pair 1: "a b" vs "a c": R1 P = R = 1/2; pair 2: "x" vs "x": P = R = 1.
    // mean P = (0.5 + 1) / 2 = 0.75 -> 75. ROUGE-2: pair 1 {a b} vs {a c} -> 0; pair 2 has no
    // bigrams -> 0; mean 0.
    let refs = ["a c", "x"];
    let gens = ["a b", "x"];
    let s = rouge::rouge_score(&refs, &gens);
    close(s.rouge_1.p, 75.0, 1e-12);
    close(s.rouge_1.r, 75.0, 1e-12);
    assert_eq!(s.rouge_2.p, 0.0);
    // LCS: pair 1 -> 1 of 2 each side (P = R = 1/2), pair 2 -> 1/1. mean 75.
    close(s.rouge_l.p, 75.0, 1e-12);
    // An empty corpus gives NaN like np.mean([]).
    let empty: [&str; 0] = [];
    assert!(rouge::rouge_score(&empty, &empty).rouge_1.f.is_nan());
}

#[test]
fn numpy_mean_sums_pairwise_like_numpy() {
    // 16 values: [1e16, 1 x7, -1e16, 1 x7]. numpy's 8 accumulators: r0 = 1e16 + -1e16 = 0,
    // r1..r7 = 1 + 1 = 2 -> sum 14 exactly; mean 14/16 = 0.875. A sequential sum loses the first
    // seven 1s against 1e16 (ulp 2, ties to even) and gives 7/16.
    let mut a = vec![1e16];
    a.extend([1.0; 7]);
    a.push(-1e16);
    a.extend([1.0; 7]);
    assert_eq!(rouge::numpy_mean(&a), 0.875);
    let seq: f64 = a.iter().sum::<f64>() / 16.0;
    assert_eq!(seq, 7.0 / 16.0);
    // Fewer than 8 values: plain left-to-right sum.
    assert_eq!(rouge::numpy_mean(&[1.0, 2.0, 4.0]), 7.0 / 3.0);
    assert!(rouge::numpy_mean(&[]).is_nan());
}

#[test]
fn lcs_len_basic() {
    assert_eq!(rouge::lcs_len(&[1, 2, 3, 4, 1], &[3, 4, 1, 2, 1, 3]), 3);
    assert_eq!(rouge::lcs_len::<u8>(&[], &[1]), 0);
}

// ---------------------------------------------------------------------------------------------
// USR, FMR, FCR, DIV

#[test]
fn usr_counts_distinct_token_lists() {
    // [a b], [a b], [b a], [] -> distinct {ab, ba, []} = 3 of 4 -> 0.75, USN 3.
    let gens = vec![toks("a b"), toks("a b"), toks("b a"), vec![]];
    assert_eq!(features::unique_sentence_percent(&gens), (0.75, 3));
}

#[test]
fn fmr_fcr_div_by_hand() {
    // feature set {room, staff, pool, front desk}.
    // g0 "the room was clean room" -> {room}
    // g1 "staff and room"          -> {staff, room}
    // g2 "the front desk"          -> {} (tokens are matched whole: "front desk" never is)
    // g3 "pool staff"              -> {pool, staff}
    // FMR (record features room, pool, front desk, staff): g0 yes, g1 no, g2 no, g3 yes -> 2/4.
    // FCR: union {room, staff, pool} = 3 of 4 -> 0.75.
    // DIV: 6 pairs; |g0&g1| = 1 (room), |g1&g3| = 1 (staff), others 0 -> 2/6 = 1/3.
    let index = FeatureIndex::new(["room", "staff", "pool", "front desk"]);
    let gens = vec![
        toks("the room was clean room"),
        toks("staff and room"),
        toks("the front desk"),
        toks("pool staff"),
    ];
    let tf = ["room", "pool", "front desk", "staff"];
    let det = features::feature_detect(&gens, &index);
    assert_eq!(det[2], Vec::<u32>::new());
    let m = features::feature_metrics(&gens, &tf, &index);
    assert_eq!(m.fmr, 0.5);
    assert_eq!(m.fcr, 0.75);
    assert_eq!(m.div, 2.0 / 6.0);
    assert_eq!(features::feature_diversity_naive(&det), 2.0 / 6.0);
    // A record feature outside the set never matches.
    assert_eq!(
        features::feature_matching_ratio(&det[..1], &["breakfast"], &index),
        0.0
    );
}

#[test]
fn div_fast_equals_naive_on_random_sets() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    for &(n, nf) in &[
        (0usize, 5u32),
        (1, 5),
        (2, 3),
        (300, 40),
        (777, 8),
        (1000, 200),
    ] {
        let sets: Vec<Vec<u32>> = (0..n)
            .map(|_| {
                let k = rng.gen_range(0..6);
                let mut s: Vec<u32> = (0..k).map(|_| rng.gen_range(0..nf)).collect();
                s.sort_unstable();
                s.dedup();
                s
            })
            .collect();
        let fast = features::feature_diversity(&sets);
        let naive = features::feature_diversity_naive(&sets);
        // Both sum integers exactly and divide the same way: bit-identical.
        assert_eq!(fast.to_bits(), naive.to_bits(), "n={n} nf={nf}");
    }
}

// ---------------------------------------------------------------------------------------------
// RMSE, MAE

#[test]
fn rmse_mae_clip_predictions_to_the_rating_range() {
    // truth [5, 1, 3], predicted [6.2, 0.5, 2.5], range [1, 5] -> clipped [5, 1, 2.5];
    // errors [0, 0, -0.5]. MAE = 0.5 / 3; RMSE = sqrt(0.25 / 3) = 0.28867513459481287.
    let truth = [5.0, 1.0, 3.0];
    let pred = [6.2, 0.5, 2.5];
    assert_eq!(
        rating::mean_absolute_error(&truth, &pred, 1.0, 5.0),
        0.5 / 3.0
    );
    close(
        rating::root_mean_square_error(&truth, &pred, 1.0, 5.0),
        0.28867513459481287,
        1e-15,
    );
}

// ---------------------------------------------------------------------------------------------
// Text post-processing

#[test]
fn postprocessing_separates_punctuation_like_the_original() {
    // Step by step: 's -> " 's"; n't -> " n't"; ( ) padded; ",+" -> " , "; ":+" -> " , ";
    // ";+" -> " . "; "\.+" -> " . "; "!+" -> " ! "; spaces collapsed; ends stripped.
    assert_eq!(
        text::postprocessing("the room's great!! i didn't (really) like it...the end;ok: fine,,"),
        "the room 's great ! i did n't ( really ) like it . the end . ok , fine ,"
    );
    // Python's strip() also removes U+001C..U+001F at the ends (Rust's trim() would not).
    assert_eq!(
        text::postprocessing("  we'd've ... they'll  I'm \u{1c}hi\u{1c} "),
        "we 'd 've . they 'll I 'm \u{1c}hi"
    );
}

#[test]
fn ids2tokens_decodes_separates_and_cuts_at_eos() {
    let tok = Tokenizer::builtin().unwrap();
    // Generated: " the room was clean!" <eos> " the" -> decode " the room was clean! <eos>  the"
    // -> postprocessing "the room was clean ! <eos> the" -> cut before <eos>.
    let got = text::ids2tokens(&[262, 2119, 373, 3424, 0, 50258, 262], &tok).unwrap();
    assert_eq!(got, toks("the room was clean !"));
    // Reference seq[1:] with the trailing " " (220), <eos> and padding.
    let got = text::ids2tokens(&[262, 2119, 373, 3424, 220, 50258, 50259, 50259], &tok).unwrap();
    assert_eq!(got, toks("the room was clean"));
    // No <eos>: everything is kept (the original generates a fixed number of steps).
    let got = text::ids2tokens_batch(&[vec![1169u32, 3085, 764]], &tok).unwrap();
    assert_eq!(got, vec![toks("the staff .")]);
}

// ---------------------------------------------------------------------------------------------
// evaluate_all and the report

/// refs, gens, record features, feature index of the small evaluate_all case.
type Small = (
    Vec<Vec<String>>,
    Vec<Vec<String>>,
    Vec<String>,
    FeatureIndex,
);

fn small_inputs() -> Small {
    let refs = vec![toks("the room was clean"), toks("staff friendly")];
    let gens = vec![toks("the room is clean the"), toks("staff friendly")];
    let tf = vec!["room".to_string(), "staff".to_string()];
    (refs, gens, tf, FeatureIndex::new(["room", "staff"]))
}

#[test]
fn evaluate_all_by_hand() {
    let (refs, gens, tf, index) = small_inputs();
    let truth = [4.0, 2.0];
    let pred = [4.5, 0.0];
    let rep = evaluate_all(&EvalInputs {
        generated: &gens,
        references: &refs,
        test_features: &tf,
        features: &index,
        ratings: Some(RatingInputs {
            truth: &truth,
            predicted: &pred,
            min_rating: 1.0,
            max_rating: 5.0,
        }),
    })
    .unwrap();
    assert_eq!(rep.samples, 2);
    // BLEU-1: matches 3 (pair 1, see bleu1 test) + 2 = 5 of 5 + 2 = 7; lengths 7 vs 6 -> bp 1.
    close(rep.bleu_1, 100.0 * 5.0 / 7.0, 1e-12);
    // BLEU-4: trigram precision 0/3 (pair 2 has no trigrams) -> 0.
    assert_eq!(rep.bleu_4, 0.0);
    assert_eq!((rep.usr, rep.usn), (1.0, 2));
    // g0 {room}, g1 {staff}; both match their record; both features covered; no shared feature.
    assert_eq!((rep.fmr, rep.fcr, rep.div), (1.0, 1.0, 0.0));
    // ROUGE-1: pair 1 sets {the room is clean} vs {the room was clean}: P = R = 3/4;
    // pair 2: P = R = 1 -> mean 0.875 -> 87.5.
    close(rep.rouge_1_p, 87.5, 1e-12);
    close(rep.rouge_1_r, 87.5, 1e-12);
    // ROUGE-2: pair 1 hyp {the room, room is, is clean, clean the} (4) vs ref {the room, room was,
    // was clean} (3): overlap 1 -> P 1/4, R 1/3; pair 2: 1, 1. Means: 62.5, 66.66..
    close(rep.rouge_2_p, 62.5, 1e-12);
    close(rep.rouge_2_r, 100.0 * (1.0 / 3.0 + 1.0) / 2.0, 1e-12);
    // Ratings: clipped [4.5, 1]; errors [0.5, -1]: MAE 0.75, RMSE sqrt(1.25 / 2).
    assert_eq!(rep.mae, Some(0.75));
    close(rep.rmse.unwrap(), 0.625f64.sqrt(), 1e-15);

    // JSON round trip keeps the numbers; the table has the paper's columns.
    let v: serde_json::Value = serde_json::from_str(&rep.to_json()).unwrap();
    assert_eq!(v["usn"], 2);
    assert_eq!(v["mae"], 0.75);
    assert_eq!(v["bleu_4"], 0.0);
    let table = rep.to_string();
    for h in [
        "Explainability",
        "Text quality",
        "Recommendation",
        "FMR",
        "DIV",
        "BLEU-4",
        "R2-F",
        "RMSE",
        "71.4286",
        "87.5000",
        "0.7500",
    ] {
        assert!(table.contains(h), "missing {h} in\n{table}");
    }
}

#[test]
fn evaluate_all_without_ratings_and_bad_inputs() {
    let (refs, gens, tf, index) = small_inputs();
    let ok = EvalInputs {
        generated: &gens,
        references: &refs,
        test_features: &tf,
        features: &index,
        ratings: None,
    };
    let rep = evaluate_all(&ok).unwrap();
    assert_eq!((rep.rmse, rep.mae), (None, None));
    assert!(rep.to_string().contains('-'));
    assert!(rep.to_json().contains("\"rmse\": null"));

    let short = &refs[..1];
    let err = evaluate_all(&EvalInputs {
        references: short,
        ..ok
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("1 references"), "{err}");

    let empty: Vec<Vec<String>> = vec![];
    assert!(evaluate_all(&EvalInputs {
        generated: &empty,
        ..ok
    })
    .is_err());

    let no_features = FeatureIndex::new(Vec::<String>::new());
    assert!(evaluate_all(&EvalInputs {
        features: &no_features,
        ..ok
    })
    .is_err());

    let truth = [1.0];
    let err = evaluate_all(&EvalInputs {
        ratings: Some(RatingInputs {
            truth: &truth,
            predicted: &truth,
            min_rating: 1.0,
            max_rating: 5.0,
        }),
        ..ok
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("ratings"), "{err}");
}
