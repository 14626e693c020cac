//! Evaluation metrics of PEPLER, computed exactly as the original code (lileipisces/PEPLER
//! `utils.py`, `bleu.py` = TF-NMT `compute_bleu`, `rouge.py` = TF-NMT rouge) does, one file per
//! family:
//! - [`text`]: the original's `postprocessing` / `ids2tokens` (generated and reference ids to
//!   word tokens, the same way for both);
//! - [`bleu`]: corpus BLEU-1 / BLEU-4 (x100);
//! - [`rouge`]: sentence-level ROUGE-1/2/L P/R/F averaged over samples (x100);
//! - [`features`]: USR, FMR, FCR, DIV (fractions, as the original prints them);
//! - [`rating`]: RMSE, MAE with predictions clipped to the data's rating range.
//!
//! [`evaluate_all`] computes everything from token lists; [`MetricsReport`] serializes to JSON
//! and prints the paper's table layout.

pub mod bleu;
pub mod features;
pub mod rating;
pub mod rouge;
pub mod text;

use std::fmt;

use anyhow::{bail, Result};
use serde::Serialize;

pub use features::FeatureIndex;

/// Ratings for RMSE/MAE (present when the model has a rating head).
#[derive(Clone, Copy, Debug)]
pub struct RatingInputs<'a> {
    /// Ground-truth ratings of the test records.
    pub truth: &'a [f64],
    /// Predicted ratings (unclipped; clipping happens here).
    pub predicted: &'a [f64],
    /// Rating range of the whole data set (the original's `corpus.min_rating/max_rating`).
    pub min_rating: f64,
    pub max_rating: f64,
}

/// Everything [`evaluate_all`] needs, all in test-record order.
#[derive(Clone, Copy, Debug)]
pub struct EvalInputs<'a> {
    /// Generated explanations as word tokens ([`text::ids2tokens`] of the generated ids).
    pub generated: &'a [Vec<String>],
    /// Reference explanations as word tokens ([`text::ids2tokens`] of `seq[1..]`).
    pub references: &'a [Vec<String>],
    /// Each test record's own feature (for FMR).
    pub test_features: &'a [String],
    /// The feature set of the whole corpus (all records, not only the test split).
    pub features: &'a FeatureIndex,
    pub ratings: Option<RatingInputs<'a>>,
}

/// All numbers in the original's units: BLEU and ROUGE x100; USR, FMR, FCR as fractions; DIV a
/// mean count; RMSE/MAE in rating units (None without a rating head). NaN serializes as null.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MetricsReport {
    pub samples: usize,
    // Explainability
    pub fmr: f64,
    pub fcr: f64,
    pub div: f64,
    // Text quality
    pub usr: f64,
    pub usn: usize,
    pub bleu_1: f64,
    pub bleu_4: f64,
    pub rouge_1_p: f64,
    pub rouge_1_r: f64,
    pub rouge_1_f: f64,
    pub rouge_2_p: f64,
    pub rouge_2_r: f64,
    pub rouge_2_f: f64,
    pub rouge_l_p: f64,
    pub rouge_l_r: f64,
    pub rouge_l_f: f64,
    // Recommendation
    pub rmse: Option<f64>,
    pub mae: Option<f64>,
}

/// Computes every metric as the original's evaluation block (reg.py / main.py after
/// generation): BLEU-1, BLEU-4 on token lists; USR; features detected in the generated tokens for
/// DIV, FCR, FMR; ROUGE on `' '.join(tokens)`; RMSE and MAE when ratings are given.
///
/// Errors on mismatched lengths, an empty test set or an empty feature set.
pub fn evaluate_all(inp: &EvalInputs<'_>) -> Result<MetricsReport> {
    let n = inp.generated.len();
    if n == 0 {
        bail!("evaluate_all: no generated explanations to score");
    }
    if inp.references.len() != n || inp.test_features.len() != n {
        bail!(
            "evaluate_all: {} generated, {} references, {} record features; they must match",
            n,
            inp.references.len(),
            inp.test_features.len()
        );
    }
    if inp.features.is_empty() {
        bail!("evaluate_all: the corpus feature set is empty");
    }
    let (rmse, mae) = match inp.ratings {
        Some(r) => {
            if r.truth.len() != n || r.predicted.len() != n {
                bail!(
                    "evaluate_all: {} samples but {} true and {} predicted ratings",
                    n,
                    r.truth.len(),
                    r.predicted.len()
                );
            }
            if r.min_rating > r.max_rating {
                bail!(
                    "evaluate_all: min_rating {} > max_rating {}",
                    r.min_rating,
                    r.max_rating
                );
            }
            (
                Some(rating::root_mean_square_error(
                    r.truth,
                    r.predicted,
                    r.min_rating,
                    r.max_rating,
                )),
                Some(rating::mean_absolute_error(
                    r.truth,
                    r.predicted,
                    r.min_rating,
                    r.max_rating,
                )),
            )
        }
        None => (None, None),
    };

    let bleu_1 = bleu::bleu_score(inp.references, inp.generated, 1, false);
    let bleu_4 = bleu::bleu_score(inp.references, inp.generated, 4, false);
    let (usr, usn) = features::unique_sentence_percent(inp.generated);
    let fm = features::feature_metrics(inp.generated, inp.test_features, inp.features);
    let text_ref: Vec<String> = inp.references.iter().map(|t| t.join(" ")).collect();
    let text_gen: Vec<String> = inp.generated.iter().map(|t| t.join(" ")).collect();
    let rg = rouge::rouge_score(&text_ref, &text_gen);

    Ok(MetricsReport {
        samples: n,
        fmr: fm.fmr,
        fcr: fm.fcr,
        div: fm.div,
        usr,
        usn,
        bleu_1,
        bleu_4,
        rouge_1_p: rg.rouge_1.p,
        rouge_1_r: rg.rouge_1.r,
        rouge_1_f: rg.rouge_1.f,
        rouge_2_p: rg.rouge_2.p,
        rouge_2_r: rg.rouge_2.r,
        rouge_2_f: rg.rouge_2.f,
        rouge_l_p: rg.rouge_l.p,
        rouge_l_r: rg.rouge_l.r,
        rouge_l_f: rg.rouge_l.f,
        rmse,
        mae,
    })
}

impl MetricsReport {
    /// Pretty JSON (NaN as null).
    pub fn to_json(&self) -> String {
        // Serializing plain numbers and options cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |x| format!("{x:.4}"))
}

/// The paper's layout (Li et al. TOIS 2023, Tables 3-4): Explainability (FMR, FCR, DIV), Text
/// quality (USR, BLEU-1, BLEU-4, ROUGE-1/2 P/R/F), Recommendation (RMSE, MAE); ROUGE-L below.
impl fmt::Display for MetricsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = 8;
        writeln!(
            f,
            "{:<27}| {:<81}| Recommendation",
            "Explainability", "Text quality"
        )?;
        write!(f, "{:>w$}{:>w$}{:>w$}   |", "FMR", "FCR", "DIV")?;
        for h in [
            "USR", "BLEU-1", "BLEU-4", "R1-P", "R1-R", "R1-F", "R2-P", "R2-R", "R2-F",
        ] {
            write!(f, "{h:>w$} ")?;
        }
        writeln!(f, "|{:>w$}{:>w$}", "RMSE", "MAE")?;
        write!(
            f,
            "{:>w$.4}{:>w$.4}{:>w$.4}   |",
            self.fmr, self.fcr, self.div
        )?;
        for v in [
            self.usr,
            self.bleu_1,
            self.bleu_4,
            self.rouge_1_p,
            self.rouge_1_r,
            self.rouge_1_f,
            self.rouge_2_p,
            self.rouge_2_r,
            self.rouge_2_f,
        ] {
            write!(f, "{v:>w$.4} ")?;
        }
        writeln!(f, "|{:>w$}{:>w$}", opt(self.rmse), opt(self.mae))?;
        write!(
            f,
            "samples {}  USN {}  ROUGE-L P/R/F {:.4} / {:.4} / {:.4}",
            self.samples, self.usn, self.rouge_l_p, self.rouge_l_r, self.rouge_l_f
        )
    }
}
