//! ROUGE-1/2/L as the original PEPLER computes them: its `rouge.py` is TensorFlow NMT's
//! (tf_seq2seq's, from sumy) sentence-level ROUGE, called through
//! `utils.rouge_score(references, generated)` which multiplies every value by 100.
//!
//! Semantics mirrored exactly:
//! - words are `sentence.split(" ")` (single spaces; an empty sentence is one empty word);
//! - ROUGE-N uses n-gram *sets* (each distinct n-gram counts once on both sides):
//!   `P = |E ∩ R| / |E|`, `R = |E ∩ R| / |R|` (0 when the denominator is 0),
//!   `F = 2 * ((P * R) / (P + R + 1e-8))`;
//! - ROUGE-L is sentence-level LCS: `R = lcs / m`, `P = lcs / n` (m reference words, n generated),
//!   `beta = P / (R + 1e-12)`, `F = ((1 + beta^2) R P) / (R + beta^2 P + 1e-12)`;
//! - each value is averaged over the pairs with `np.mean` (pairwise summation, see
//!   [`numpy_mean`]); an empty corpus gives NaN as `np.mean([])` does.

use rayon::prelude::*;
use serde::Serialize;

/// (F, P, R) of one pair, in [0, 1].
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Fpr {
    pub f: f64,
    pub p: f64,
    pub r: f64,
}

/// Corpus ROUGE: means of the per-pair scores. Units are whatever the producer says
/// ([`rouge`]: fractions; [`rouge_score`]: percent).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct RougeScores {
    pub rouge_1: Fpr,
    pub rouge_2: Fpr,
    pub rouge_l: Fpr,
}

fn words(sentence: &str) -> Vec<&str> {
    sentence.split(' ').collect()
}

/// Distinct n-grams, sorted (sentences are short: sorting slices beats hashing them).
fn ngram_set<'a, 'b>(w: &'b [&'a str], n: usize) -> Vec<&'b [&'a str]> {
    let mut g: Vec<&[&str]> = w.windows(n).collect();
    g.sort_unstable();
    g.dedup();
    g
}

/// Size of the intersection of two sorted, deduplicated lists.
fn intersection_len<K: Ord>(a: &[K], b: &[K]) -> usize {
    let (mut i, mut j, mut n) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                n += 1;
                i += 1;
                j += 1;
            }
        }
    }
    n
}

/// `rouge_n([hyp], [ref], n)` of rouge.py.
pub fn rouge_n(hypothesis: &str, reference: &str, n: usize) -> Fpr {
    assert!(n > 0, "rouge_n: n must be positive");
    let (hw, rw) = (words(hypothesis), words(reference));
    let (e, r) = (ngram_set(&hw, n), ngram_set(&rw, n));
    let overlap = intersection_len(&e, &r);
    let precision = if e.is_empty() {
        0.0
    } else {
        overlap as f64 / e.len() as f64
    };
    let recall = if r.is_empty() {
        0.0
    } else {
        overlap as f64 / r.len() as f64
    };
    let f = 2.0 * ((precision * recall) / (precision + recall + 1e-8));
    Fpr {
        f,
        p: precision,
        r: recall,
    }
}

/// Length of the longest common subsequence (two-row DP, O(len(x) * len(y))).
pub fn lcs_len<T: PartialEq>(x: &[T], y: &[T]) -> usize {
    let mut prev = vec![0usize; y.len() + 1];
    let mut cur = vec![0usize; y.len() + 1];
    for xi in x {
        for (j, yj) in y.iter().enumerate() {
            cur[j + 1] = if xi == yj {
                prev[j] + 1
            } else {
                prev[j + 1].max(cur[j])
            };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[y.len()]
}

/// `rouge_l_sentence_level([hyp], [ref])` of rouge.py. Both word lists have at least one word
/// (`"".split(" ") == [""]`), so the divisions are always defined.
pub fn rouge_l_sentence_level(hypothesis: &str, reference: &str) -> Fpr {
    let (hw, rw) = (words(hypothesis), words(reference));
    let (m, n) = (rw.len() as f64, hw.len() as f64);
    let lcs = lcs_len(&hw, &rw) as f64;
    let r_lcs = lcs / m;
    let p_lcs = lcs / n;
    let beta = p_lcs / (r_lcs + 1e-12);
    let num = (1.0 + beta.powi(2)) * r_lcs * p_lcs;
    let denom = r_lcs + (beta.powi(2) * p_lcs);
    Fpr {
        f: num / (denom + 1e-12),
        p: p_lcs,
        r: r_lcs,
    }
}

/// `np.mean` of a float64 list: numpy's pairwise summation over the whole contiguous array
/// (8-way unrolled blocks of up to 128 elements, recursive halving above), then divided by the
/// length; NaN for an empty list. Checked bit-for-bit against numpy 2.4's `np.add.reduce` on
/// random arrays of 5..100000 elements.
pub fn numpy_mean(a: &[f64]) -> f64 {
    if a.is_empty() {
        return f64::NAN;
    }
    pairwise_sum(a) / a.len() as f64
}

/// numpy's `pairwise_sum_DOUBLE`.
fn pairwise_sum(a: &[f64]) -> f64 {
    let n = a.len();
    if n < 8 {
        let mut res = 0.0;
        for &x in a {
            res += x;
        }
        res
    } else if n <= 128 {
        let mut r = [0.0f64; 8];
        r.copy_from_slice(&a[..8]);
        let mut i = 8;
        while i < n - (n % 8) {
            for j in 0..8 {
                r[j] += a[i + j];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        while i < n {
            res += a[i];
            i += 1;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        pairwise_sum(&a[..n2]) + pairwise_sum(&a[n2..])
    }
}

fn mean_fpr(v: &[Fpr]) -> Fpr {
    let col = |g: fn(&Fpr) -> f64| numpy_mean(&v.iter().map(g).collect::<Vec<_>>());
    Fpr {
        f: col(|x| x.f),
        p: col(|x| x.p),
        r: col(|x| x.r),
    }
}

/// rouge.py's `rouge(hypotheses, references)`: mean sentence-level ROUGE-1/2/L over the pairs
/// (Python `zip`: up to the shorter list), as fractions. Per-pair scores run in parallel; the
/// means are taken in order, so the result is deterministic.
pub fn rouge<S: AsRef<str> + Sync>(hypotheses: &[S], references: &[S]) -> RougeScores {
    let n = hypotheses.len().min(references.len());
    let per: Vec<[Fpr; 3]> = (0..n)
        .into_par_iter()
        .map(|k| {
            let (h, r) = (hypotheses[k].as_ref(), references[k].as_ref());
            [
                rouge_n(h, r, 1),
                rouge_n(h, r, 2),
                rouge_l_sentence_level(h, r),
            ]
        })
        .collect();
    let pick = |i: usize| mean_fpr(&per.iter().map(|x| x[i]).collect::<Vec<_>>());
    RougeScores {
        rouge_1: pick(0),
        rouge_2: pick(1),
        rouge_l: pick(2),
    }
}

/// The original's `utils.rouge_score(references, generated)`: [`rouge`] times 100.
pub fn rouge_score<S: AsRef<str> + Sync>(references: &[S], generated: &[S]) -> RougeScores {
    let s = rouge(generated, references);
    let pct = |x: Fpr| Fpr {
        f: x.f * 100.0,
        p: x.p * 100.0,
        r: x.r * 100.0,
    };
    RougeScores {
        rouge_1: pct(s.rouge_1),
        rouge_2: pct(s.rouge_2),
        rouge_l: pct(s.rouge_l),
    }
}
