//! Corpus BLEU exactly as the original PEPLER computes it: `bleu.py` there is TensorFlow NMT's
//! `compute_bleu` (Papineni et al. 2002 corpus BLEU with clipped n-gram counts and brevity
//! penalty), called through `utils.bleu_score(references, generated, n_gram, smooth=False)`,
//! which wraps each reference in a one-element list and returns `bleu * 100`.
//!
//! BLEU-n as the original reports it is `compute_bleu(.., max_order = n)`: the geometric mean of
//! the modified precisions of orders 1..=n with equal weights 1/n, times the brevity penalty.

use rayon::prelude::*;
use serde::Serialize;

/// Everything `compute_bleu` returns: `(bleu, precisions, bp, ratio, translation_length,
/// reference_length)`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BleuResult {
    /// In [0, 1] (not multiplied by 100).
    pub bleu: f64,
    pub precisions: Vec<f64>,
    pub bp: f64,
    pub ratio: f64,
    pub translation_length: usize,
    pub reference_length: usize,
}

/// Counts of every n-gram of orders 1..=max_order (`_get_ngrams` in bleu.py), as a list sorted by
/// n-gram. Segments are short (tens of tokens), so sorting slices beats hashing them.
fn ngram_counts<T: Ord>(segment: &[T], max_order: usize) -> Vec<(&[T], u32)> {
    let mut grams: Vec<&[T]> = (1..=max_order).flat_map(|o| segment.windows(o)).collect();
    grams.sort_unstable();
    run_lengths(grams)
}

/// Sorted list -> (distinct item, multiplicity).
fn run_lengths<K: PartialEq + Copy>(sorted: Vec<K>) -> Vec<(K, u32)> {
    let mut out: Vec<(K, u32)> = Vec::with_capacity(sorted.len());
    for g in sorted {
        match out.last_mut() {
            Some((k, c)) if *k == g => *c += 1,
            _ => out.push((g, 1)),
        }
    }
    out
}

/// Per-order integer statistics; summed over the corpus (integer sums, so the parallel reduction
/// is exact and deterministic).
#[derive(Clone, Default)]
struct Stats {
    matches: Vec<u64>,
    possible: Vec<u64>,
    reference_length: u64,
    translation_length: u64,
}

impl Stats {
    fn zero(max_order: usize) -> Self {
        Self {
            matches: vec![0; max_order],
            possible: vec![0; max_order],
            ..Default::default()
        }
    }
    fn add(mut self, o: Stats) -> Self {
        for (a, b) in self.matches.iter_mut().zip(o.matches) {
            *a += b;
        }
        for (a, b) in self.possible.iter_mut().zip(o.possible) {
            *a += b;
        }
        self.reference_length += o.reference_length;
        self.translation_length += o.translation_length;
        self
    }
}

fn segment_stats<T: Ord, R: AsRef<[T]>>(
    references: &[R],
    translation: &[T],
    max_order: usize,
) -> Stats {
    let mut st = Stats::zero(max_order);
    // `min(len(r) for r in references)`: an empty reference list would raise in Python; it
    // contributes 0 here.
    st.reference_length = references
        .iter()
        .map(|r| r.as_ref().len() as u64)
        .min()
        .unwrap_or(0);
    st.translation_length = translation.len() as u64;
    // Counter `|=`: element-wise max over the references.
    let merged: Vec<(&[T], u32)> = if references.len() == 1 {
        ngram_counts(references[0].as_ref(), max_order)
    } else {
        let mut all: Vec<(&[T], u32)> = references
            .iter()
            .flat_map(|r| ngram_counts(r.as_ref(), max_order))
            .collect();
        all.sort_unstable();
        let mut out: Vec<(&[T], u32)> = Vec::with_capacity(all.len());
        for (g, c) in all {
            match out.last_mut() {
                Some((k, m)) if *k == g => *m = (*m).max(c),
                _ => out.push((g, c)),
            }
        }
        out
    };
    // Counter `&`: element-wise min (clipped counts), by merging the two sorted lists.
    let hyp = ngram_counts(translation, max_order);
    let (mut i, mut j) = (0, 0);
    while i < hyp.len() && j < merged.len() {
        match hyp[i].0.cmp(merged[j].0) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                st.matches[hyp[i].0.len() - 1] += u64::from(hyp[i].1.min(merged[j].1));
                i += 1;
                j += 1;
            }
        }
    }
    for order in 1..=max_order {
        if translation.len() + 1 > order {
            st.possible[order - 1] += (translation.len() + 1 - order) as u64;
        }
    }
    st
}

/// TF-NMT `compute_bleu(reference_corpus, translation_corpus, max_order, smooth)`.
///
/// Pairs are taken as Python's `zip` does (up to the shorter list). Where Python would raise
/// `ZeroDivisionError` the limit is returned instead: an empty translation corpus gives
/// `ratio = 0, bp = 0, bleu = 0`; an empty reference corpus gives `ratio = inf, bp = 1`.
pub fn compute_bleu<T, R, S>(
    reference_corpus: &[R],
    translation_corpus: &[S],
    max_order: usize,
    smooth: bool,
) -> BleuResult
where
    T: Ord + Sync,
    R: AsRef<[S]> + Sync,
    S: AsRef<[T]> + Sync,
{
    let n = reference_corpus.len().min(translation_corpus.len());
    let st = (0..n)
        .into_par_iter()
        .map(|k| {
            segment_stats(
                reference_corpus[k].as_ref(),
                translation_corpus[k].as_ref(),
                max_order,
            )
        })
        .reduce(|| Stats::zero(max_order), Stats::add);

    let precisions: Vec<f64> = (0..max_order)
        .map(|i| {
            if smooth {
                (st.matches[i] as f64 + 1.0) / (st.possible[i] as f64 + 1.0)
            } else if st.possible[i] > 0 {
                st.matches[i] as f64 / st.possible[i] as f64
            } else {
                0.0
            }
        })
        .collect();

    let min_p = precisions.iter().copied().fold(f64::INFINITY, f64::min);
    let geo_mean = if max_order > 0 && min_p > 0.0 {
        // Python's built-in sum: sequential, starting from integer 0.
        let p_log_sum: f64 = precisions
            .iter()
            .fold(0.0, |acc, p| acc + (1.0 / max_order as f64) * p.ln());
        p_log_sum.exp()
    } else {
        0.0
    };

    let ratio = st.translation_length as f64 / st.reference_length as f64;
    let bp = if ratio > 1.0 {
        1.0
    } else if st.translation_length == 0 {
        0.0
    } else {
        (1.0 - 1.0 / ratio).exp()
    };
    BleuResult {
        bleu: geo_mean * bp,
        precisions,
        bp,
        ratio,
        translation_length: st.translation_length as usize,
        reference_length: st.reference_length as usize,
    }
}

/// The original's `utils.bleu_score(references, generated, n_gram, smooth)`: one reference per
/// generated text, result multiplied by 100.
pub fn bleu_score<S: AsRef<str> + Sync>(
    references: &[Vec<S>],
    generated: &[Vec<S>],
    n_gram: usize,
    smooth: bool,
) -> f64 {
    let refs: Vec<Vec<Vec<&str>>> = references
        .iter()
        .map(|r| vec![r.iter().map(AsRef::as_ref).collect()])
        .collect();
    let hyps: Vec<Vec<&str>> = generated
        .iter()
        .map(|g| g.iter().map(AsRef::as_ref).collect())
        .collect();
    compute_bleu(&refs, &hyps, n_gram, smooth).bleu * 100.0
}
