//! `pepler-cuda score`: any system's explanations scored with exactly the metrics `evaluate`
//! computes. Input: JSON lines with `reference`, `generated`, `feature` and optionally `rating`
//! and `predicted_rating` (other fields, such as `user` and `item` in our own `generated.jsonl`,
//! are ignored). Texts go through the original's `postprocessing` and whitespace split, as our
//! generated and reference ids do in `evaluate`; on our own output, whose texts are already
//! processed tokens joined by spaces, this is the identity, so `score` reproduces `evaluate`.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::metrics::text::{postprocessing, py_split};
use crate::metrics::{evaluate_all, EvalInputs, FeatureIndex, MetricsReport, RatingInputs};

/// One line of the input.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct ScoreLine {
    pub reference: String,
    pub generated: String,
    pub feature: String,
    #[serde(default)]
    pub rating: Option<f64>,
    #[serde(default)]
    pub predicted_rating: Option<f64>,
    /// The line number in the input (from 1; 0 when not read from a file).
    #[serde(skip)]
    pub line: usize,
}

/// Parses JSON lines (blank lines are skipped); an error names the file and the line number.
pub fn parse_lines(text: &str, source: &str) -> Result<Vec<ScoreLine>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let mut rec: ScoreLine = serde_json::from_str(line).with_context(|| {
            format!(
                "{source} line {}: expected a JSON object with \"reference\", \"generated\" and \
                 \"feature\" strings (optional numbers \"rating\", \"predicted_rating\")",
                i + 1
            )
        })?;
        for (name, v) in [
            ("rating", rec.rating),
            ("predicted_rating", rec.predicted_rating),
        ] {
            if v.is_some_and(|x| !x.is_finite()) {
                bail!("{source} line {}: \"{name}\" is not a finite number", i + 1);
            }
        }
        rec.line = i + 1;
        out.push(rec);
    }
    if out.is_empty() {
        bail!("{source}: no explanations to score (the file has no JSON lines)");
    }
    Ok(out)
}

/// Reads a file of [`ScoreLine`]s.
pub fn read_lines(path: &Path) -> Result<Vec<ScoreLine>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_lines(&text, &path.display().to_string())
}

/// Reads a feature list: one feature per line (trimmed; blank lines skipped).
pub fn read_features(path: &Path) -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let f: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if f.is_empty() {
        bail!("{}: no features (one per line expected)", path.display());
    }
    Ok(f)
}

/// A text as `evaluate` tokenizes one: postprocessing, then Python's `split()`.
pub fn tokens(text: &str) -> Vec<String> {
    py_split(&postprocessing(text))
        .into_iter()
        .map(String::from)
        .collect()
}

/// The smallest and largest `rating` in the lines (None when no line has one).
pub fn rating_range_of(lines: &[ScoreLine]) -> Option<(f64, f64)> {
    lines
        .iter()
        .filter_map(|l| l.rating)
        .fold(None, |acc, r| match acc {
            None => Some((r, r)),
            Some((lo, hi)) => Some((lo.min(r), hi.max(r))),
        })
}

/// Scores `lines` against the corpus feature set. RMSE and MAE are computed when lines carry
/// `predicted_rating` (then every line must carry both `rating` and `predicted_rating`), with
/// predictions clipped to `rating_range` (default: [`rating_range_of`] the lines).
pub fn score(
    lines: &[ScoreLine],
    features: &[String],
    rating_range: Option<(f64, f64)>,
) -> Result<MetricsReport> {
    let generated: Vec<Vec<String>> = lines.iter().map(|l| tokens(&l.generated)).collect();
    let references: Vec<Vec<String>> = lines.iter().map(|l| tokens(&l.reference)).collect();
    let test_features: Vec<String> = lines.iter().map(|l| l.feature.clone()).collect();
    let index = FeatureIndex::new(features.iter().cloned());
    let with_pred = lines
        .iter()
        .filter(|l| l.predicted_rating.is_some())
        .count();
    let (truth, pred): (Vec<f64>, Vec<f64>) = if with_pred > 0 {
        let mut t = Vec::with_capacity(lines.len());
        let mut p = Vec::with_capacity(lines.len());
        for l in lines {
            match (l.rating, l.predicted_rating) {
                (Some(r), Some(q)) => {
                    t.push(r);
                    p.push(q);
                }
                _ => bail!(
                    "line {}: \"rating\" or \"predicted_rating\" is missing; {with_pred} lines \
                     have a predicted rating, so every line needs both",
                    l.line
                ),
            }
        }
        (t, p)
    } else {
        (Vec::new(), Vec::new())
    };
    let range = rating_range.or_else(|| rating_range_of(lines));
    let ratings = match (with_pred > 0, range) {
        (false, _) => None,
        (true, Some((lo, hi))) => Some(RatingInputs {
            truth: &truth,
            predicted: &pred,
            min_rating: lo,
            max_rating: hi,
        }),
        (true, None) => bail!("predicted ratings need a rating range (--rating-range MIN,MAX)"),
    };
    evaluate_all(&EvalInputs {
        generated: &generated,
        references: &references,
        test_features: &test_features,
        features: &index,
        ratings,
    })
}

/// Parses `MIN,MAX`.
pub fn parse_rating_range(s: &str) -> Result<(f64, f64)> {
    let (a, b) = s
        .split_once(',')
        .with_context(|| format!("--rating-range `{s}`: expected MIN,MAX (e.g. 1,5)"))?;
    let lo: f64 = a
        .trim()
        .parse()
        .with_context(|| format!("--rating-range `{s}`: `{a}` is not a number"))?;
    let hi: f64 = b
        .trim()
        .parse()
        .with_context(|| format!("--rating-range `{s}`: `{b}` is not a number"))?;
    if !(lo.is_finite() && hi.is_finite() && lo <= hi) {
        bail!("--rating-range `{s}`: need finite MIN <= MAX");
    }
    Ok((lo, hi))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_lines_name_their_line_number() {
        let good =
            r#"{"reference":"the room is clean","generated":"the room is nice","feature":"room"}"#;
        let text = format!("{good}\n\n{{\"reference\": 1}}\n");
        let err = format!("{:#}", parse_lines(&text, "x.jsonl").unwrap_err());
        assert!(err.contains("x.jsonl line 3"), "{err}");
        let err = format!("{:#}", parse_lines("not json\n", "x.jsonl").unwrap_err());
        assert!(err.contains("line 1"), "{err}");
        assert!(parse_lines("\n\n", "x.jsonl").is_err());
        assert_eq!(parse_lines(good, "x").unwrap().len(), 1);
    }

    #[test]
    fn processing_is_idempotent_on_processed_tokens() {
        let t = tokens("the room wasn't clean,but (ok)!");
        assert_eq!(tokens(&t.join(" ")), t);
    }

    #[test]
    fn ratings_are_all_or_nothing() {
        let mk = |p: Option<f64>| ScoreLine {
            reference: "the room is clean".into(),
            generated: "the room is clean".into(),
            feature: "room".into(),
            rating: Some(4.0),
            predicted_rating: p,
            line: 1,
        };
        let f = vec!["room".to_string()];
        let m = score(&[mk(Some(6.0)), mk(Some(3.0))], &f, None).unwrap();
        // Range from the file: [4, 4]; 6 clips to 4 (error 0), 3 clips to 4 (error 0).
        assert_eq!(m.rmse, Some(0.0));
        let m = score(&[mk(Some(6.0)), mk(Some(3.0))], &f, Some((1.0, 5.0))).unwrap();
        assert!((m.mae.unwrap() - 1.0).abs() < 1e-12);
        assert!(score(&[mk(Some(6.0)), mk(None)], &f, None).is_err());
        assert_eq!(score(&[mk(None)], &f, None).unwrap().rmse, None);
        assert_eq!(parse_rating_range("1, 5").unwrap(), (1.0, 5.0));
        assert!(parse_rating_range("5,1").is_err() && parse_rating_range("a,1").is_err());
    }
}
