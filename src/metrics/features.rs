//! Explainability and diversity metrics of the original PEPLER (`utils.py`):
//! USR (`unique_sentence_percent`), and on the features each generated text mentions
//! (`feature_detect`): FMR (`feature_matching_ratio`), FCR (`feature_coverage_ratio`),
//! DIV (`feature_diversity`).
//!
//! `feature_detect` checks *tokens*: a generated token counts when it is, as a whole string, in
//! the corpus feature set, so a multi-word feature ("front desk") can never be detected. That is
//! the original's behaviour and is kept.
//!
//! Features are interned to dense ids ([`FeatureIndex`]) so DIV can be computed from per-feature
//! counts: `sum_{i<j} |S_i ∩ S_j| = sum_f C(c_f, 2)` where `c_f` is the number of samples whose set
//! contains `f` — O(total set sizes) instead of the original's O(n^2) pairwise intersections.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

/// Dense ids for the corpus feature set.
#[derive(Clone, Debug, Default)]
pub struct FeatureIndex {
    ids: HashMap<String, u32>,
    names: Vec<String>,
}

impl FeatureIndex {
    /// Interns the features (duplicates collapse, as in the original's `set`); ids follow first
    /// appearance.
    pub fn new<I, S>(features: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut idx = Self::default();
        for f in features {
            let f = f.into();
            if !idx.ids.contains_key(&f) {
                idx.ids.insert(f.clone(), idx.names.len() as u32);
                idx.names.push(f);
            }
        }
        idx
    }
    /// Size of the feature set (FCR's denominator).
    pub fn len(&self) -> usize {
        self.names.len()
    }
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
    pub fn id(&self, feature: &str) -> Option<u32> {
        self.ids.get(feature).copied()
    }
    pub fn name(&self, id: u32) -> Option<&str> {
        self.names.get(id as usize).map(String::as_str)
    }
}

/// `feature_detect`: for each token list, the set of distinct tokens that are features, as sorted
/// feature ids.
pub fn feature_detect<S: AsRef<str>>(
    token_batch: &[Vec<S>],
    index: &FeatureIndex,
) -> Vec<Vec<u32>> {
    token_batch
        .iter()
        .map(|tokens| {
            let mut ids: Vec<u32> = tokens.iter().filter_map(|t| index.id(t.as_ref())).collect();
            ids.sort_unstable();
            ids.dedup();
            ids
        })
        .collect()
}

/// `unique_sentence_percent`: (distinct token lists / all token lists, number of distinct lists).
/// NaN ratio for an empty batch (Python would raise).
pub fn unique_sentence_percent<S: AsRef<str>>(seqs: &[Vec<S>]) -> (f64, usize) {
    let unique: HashSet<Vec<&str>> = seqs
        .iter()
        .map(|s| s.iter().map(AsRef::as_ref).collect())
        .collect();
    (unique.len() as f64 / seqs.len() as f64, unique.len())
}

/// `feature_matching_ratio`: share of samples whose detected set contains the record's own
/// feature (Python `zip`: up to the shorter list; denominator is the number of detected sets).
/// A record feature that is not in the index never matches. NaN for an empty batch.
pub fn feature_matching_ratio<S: AsRef<str>>(
    detected: &[Vec<u32>],
    test_features: &[S],
    index: &FeatureIndex,
) -> f64 {
    let count = detected
        .iter()
        .zip(test_features)
        .filter(|(set, fea)| {
            index
                .id(fea.as_ref())
                .is_some_and(|id| set.binary_search(&id).is_ok())
        })
        .count();
    count as f64 / detected.len() as f64
}

/// `feature_coverage_ratio`: distinct features mentioned anywhere / size of the feature set.
pub fn feature_coverage_ratio(detected: &[Vec<u32>], index: &FeatureIndex) -> f64 {
    let mut seen = vec![false; index.len()];
    for set in detected {
        for &id in set {
            if let Some(slot) = seen.get_mut(id as usize) {
                *slot = true;
            }
        }
    }
    seen.iter().filter(|&&b| b).count() as f64 / index.len() as f64
}

/// `feature_diversity` (lower = more diverse): mean over unordered sample pairs of the size of the
/// intersection of their feature sets, via per-feature counts. Sets must hold distinct ids
/// (as [`feature_detect`] returns). 0 for fewer than two samples (Python would divide by zero).
pub fn feature_diversity(detected: &[Vec<u32>]) -> f64 {
    let n = detected.len() as u64;
    if n < 2 {
        return 0.0;
    }
    // Dense counts: feature ids are small (the index is dense).
    let mut counts: Vec<u64> = Vec::new();
    for set in detected {
        for &id in set {
            let i = id as usize;
            if i >= counts.len() {
                counts.resize(i + 1, 0);
            }
            counts[i] += 1;
        }
    }
    let total: u64 = counts.iter().map(|&c| c * c.saturating_sub(1) / 2).sum();
    // Python: total_count (int) / (list_len * (list_len - 1) / 2) (float).
    total as f64 / ((n * (n - 1)) as f64 / 2.0)
}

/// The original's O(n^2) pairwise definition, for tests and the benchmark.
pub fn feature_diversity_naive(detected: &[Vec<u32>]) -> f64 {
    let n = detected.len();
    if n < 2 {
        return 0.0;
    }
    let sets: Vec<HashSet<u32>> = detected
        .iter()
        .map(|s| s.iter().copied().collect())
        .collect();
    let mut total: u64 = 0;
    for i in 0..n {
        for j in i + 1..n {
            total += sets[i].intersection(&sets[j]).count() as u64;
        }
    }
    total as f64 / ((n * (n - 1)) as f64 / 2.0)
}

/// FMR, FCR and DIV together.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct FeatureMetrics {
    pub fmr: f64,
    pub fcr: f64,
    pub div: f64,
}

/// Detects features in the generated token lists and computes FMR, FCR, DIV.
pub fn feature_metrics<S: AsRef<str>, F: AsRef<str>>(
    generated: &[Vec<S>],
    test_features: &[F],
    index: &FeatureIndex,
) -> FeatureMetrics {
    let detected = feature_detect(generated, index);
    FeatureMetrics {
        fmr: feature_matching_ratio(&detected, test_features, index),
        fcr: feature_coverage_ratio(&detected, index),
        div: feature_diversity(&detected),
    }
}
