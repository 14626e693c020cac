//! From finished runs to tables and figures: runs are grouped by grid point (variant and swept
//! value), each metric is summarised over the point's splits as mean ± sample standard deviation
//! (n − 1 in the denominator; 0 for a single split), and written as
//! - `table.md`, `table.csv`, `table.json`: one row per grid point, every metric (the paper's
//!   Table 5 layout for `splits`);
//! - `results.csv`: every metric of every run (one row per run);
//! - `<metric>.svg` / `<metric>.png`: the sweep figure(s) of the experiment.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Serialize;

use super::plot::{sweep_figure, Series, XAxis};
use super::{Kind, RunRecord, RunSpec};
use crate::train::run_log::write_atomic;

/// The metrics in the paper's column order: (key in `metrics.json`, column header).
pub const METRICS: [(&str, &str); 17] = [
    ("fmr", "FMR"),
    ("fcr", "FCR"),
    ("div", "DIV"),
    ("usr", "USR"),
    ("bleu_1", "B1"),
    ("bleu_4", "B4"),
    ("rouge_1_p", "R1-P"),
    ("rouge_1_r", "R1-R"),
    ("rouge_1_f", "R1-F"),
    ("rouge_2_p", "R2-P"),
    ("rouge_2_r", "R2-R"),
    ("rouge_2_f", "R2-F"),
    ("rouge_l_p", "RL-P"),
    ("rouge_l_r", "RL-R"),
    ("rouge_l_f", "RL-F"),
    ("rmse", "RMSE"),
    ("mae", "MAE"),
];

/// A metric over the splits of one grid point.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Stat {
    pub mean: f64,
    /// Sample standard deviation (n − 1); 0 with one value.
    pub std: f64,
    pub n: usize,
    pub values: Vec<f64>,
}

/// Mean and sample standard deviation of `values` (None when empty).
pub fn stat(values: &[f64]) -> Option<Stat> {
    let n = values.len();
    if n == 0 {
        return None;
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    let std = if n > 1 {
        (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
    } else {
        0.0
    };
    Some(Stat {
        mean,
        std,
        n,
        values: values.to_vec(),
    })
}

/// One grid point: its runs' metrics summarised over splits.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub variant: String,
    pub x: Option<f64>,
    pub x_name: String,
    pub splits: Vec<String>,
    /// Metric key -> summary (absent when no run of the point has the metric).
    pub metrics: BTreeMap<String, Stat>,
}

/// Groups finished runs by (variant, swept value), in grid order.
pub fn group(records: &[(RunSpec, RunRecord)]) -> Vec<Row> {
    let mut rows: Vec<Row> = Vec::new();
    let mut values: Vec<BTreeMap<String, Vec<f64>>> = Vec::new();
    for (spec, rec) in records {
        let k = match rows
            .iter()
            .position(|r| r.variant == spec.variant && r.x_name == spec.x_name)
        {
            Some(k) => k,
            None => {
                rows.push(Row {
                    variant: spec.variant.clone(),
                    x: spec.x,
                    x_name: spec.x_name.clone(),
                    splits: Vec::new(),
                    metrics: BTreeMap::new(),
                });
                values.push(BTreeMap::new());
                rows.len() - 1
            }
        };
        rows[k].splits.push(spec.split.clone());
        for (key, _) in METRICS {
            if let Some(Some(v)) = rec.metrics.get(key) {
                if v.is_finite() {
                    values[k].entry(key.to_string()).or_default().push(*v);
                }
            }
        }
    }
    for (row, vals) in rows.iter_mut().zip(values) {
        for (key, v) in vals {
            if let Some(s) = stat(&v) {
                row.metrics.insert(key, s);
            }
        }
    }
    rows
}

/// The metric columns present in any row (RMSE/MAE only with a rating head).
fn columns(rows: &[Row]) -> Vec<(&'static str, &'static str)> {
    METRICS
        .iter()
        .copied()
        .filter(|(k, _)| rows.iter().any(|r| r.metrics.contains_key(*k)))
        .collect()
}

/// `mean ± std` with 2 decimals for percentages (BLEU, ROUGE) and 4 for fractions, as the paper.
fn cell(key: &str, s: Option<&Stat>) -> String {
    match s {
        None => "-".into(),
        Some(s) => {
            let d = if key.starts_with("bleu") || key.starts_with("rouge") {
                2
            } else {
                4
            };
            if s.n > 1 {
                format!("{:.d$} ± {:.d$}", s.mean, s.std)
            } else {
                format!("{:.d$}", s.mean)
            }
        }
    }
}

/// The swept value's column header for an experiment (None for `splits`).
pub fn x_header(kind: Kind) -> Option<&'static str> {
    match kind {
        Kind::Splits => None,
        Kind::Strategies => Some("lr"),
        Kind::Lambda => Some("λ"),
        Kind::Sizes => Some("size"),
    }
}

/// The markdown table: one row per grid point, `mean ± std` over its splits.
pub fn table_markdown(kind: Kind, rows: &[Row]) -> String {
    let cols = columns(rows);
    let mut s = String::from("| Method |");
    if let Some(h) = x_header(kind) {
        let _ = write!(s, " {h} |");
    }
    s.push_str(" splits |");
    for (_, h) in &cols {
        let _ = write!(s, " {h} |");
    }
    s.push('\n');
    let ncols = cols.len() + 2 + usize::from(x_header(kind).is_some());
    s.push('|');
    for i in 0..ncols {
        s.push_str(if i == 0 { "---|" } else { "---:|" });
    }
    s.push('\n');
    for r in rows {
        let _ = write!(s, "| {} |", r.variant);
        if x_header(kind).is_some() {
            let _ = write!(s, " {} |", r.x_name);
        }
        let _ = write!(s, " {} |", r.splits.len());
        for (k, _) in &cols {
            let _ = write!(s, " {} |", cell(k, r.metrics.get(*k)));
        }
        s.push('\n');
    }
    s
}

/// CSV quoting for a field that may hold commas or quotes.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn num(v: Option<f64>) -> String {
    v.map_or(String::new(), |x| format!("{x}"))
}

/// The table as CSV: variant, swept value, number of splits, then `<metric>_mean,<metric>_std`
/// for every metric (empty where absent).
pub fn table_csv(rows: &[Row]) -> String {
    let mut s = String::from("variant,x,x_name,splits");
    for (k, _) in METRICS {
        let _ = write!(s, ",{k}_mean,{k}_std");
    }
    s.push('\n');
    for r in rows {
        let _ = write!(
            s,
            "{},{},{},{}",
            csv_field(&r.variant),
            num(r.x),
            csv_field(&r.x_name),
            r.splits.len()
        );
        for (k, _) in METRICS {
            let st = r.metrics.get(k);
            let _ = write!(s, ",{},{}", num(st.map(|s| s.mean)), num(st.map(|s| s.std)));
        }
        s.push('\n');
    }
    s
}

/// Every run's metrics, one CSV row per run.
pub fn results_csv(records: &[(RunSpec, RunRecord)]) -> String {
    let mut s = String::from("variant,x,x_name,split,dir,test_loss,seconds");
    for (k, _) in METRICS {
        let _ = write!(s, ",{k}");
    }
    s.push('\n');
    for (spec, rec) in records {
        let _ = write!(
            s,
            "{},{},{},{},{},{},{:.1}",
            csv_field(&spec.variant),
            num(spec.x),
            csv_field(&spec.x_name),
            csv_field(&spec.split),
            csv_field(&spec.rel_dir.display().to_string()),
            num(rec.test_loss),
            rec.seconds
        );
        for (k, _) in METRICS {
            let _ = write!(s, ",{}", num(rec.metrics.get(k).copied().flatten()));
        }
        s.push('\n');
    }
    s
}

/// A figure written by [`aggregate`].
#[derive(Clone, Debug)]
pub struct FigureFile {
    pub title: String,
    pub svg: PathBuf,
    pub png: PathBuf,
}

/// What [`aggregate`] wrote.
#[derive(Clone, Debug)]
pub struct Aggregated {
    pub rows: Vec<Row>,
    pub table_md: String,
    pub files: Vec<PathBuf>,
    pub figures: Vec<FigureFile>,
}

/// The sweep figure of `metric` over the experiment's swept value: one series per variant.
fn sweep(
    kind: Kind,
    rows: &[Row],
    metric: &str,
    label: &str,
) -> Result<Option<super::plot::Figure>> {
    let mut series: Vec<Series> = Vec::new();
    for r in rows {
        let (Some(x), Some(st)) = (r.x, r.metrics.get(metric)) else {
            continue;
        };
        let p = (x, st.mean, st.std, st.n);
        match series.iter_mut().find(|s| s.name == r.variant) {
            Some(s) => s.points.push(p),
            None => series.push(Series {
                name: r.variant.clone(),
                points: vec![p],
            }),
        }
    }
    if series.is_empty() {
        return Ok(None);
    }
    let axis = match kind {
        Kind::Strategies => XAxis::Log {
            label: "learning rate".into(),
        },
        Kind::Lambda => XAxis::Log {
            label: "regularisation coefficient λ".into(),
        },
        Kind::Sizes => {
            let mut names: Vec<(f64, String)> = rows
                .iter()
                .filter_map(|r| r.x.map(|x| (x, r.x_name.clone())))
                .collect();
            names.sort_by(|a, b| a.0.total_cmp(&b.0));
            names.dedup();
            // Sizes sit at their grid index; fill gaps so index i is named i.
            let n = names.last().map_or(0, |l| l.0 as usize + 1);
            let mut v = vec![String::new(); n];
            for (x, name) in names {
                v[x as usize] = name;
            }
            XAxis::Categories {
                label: "GPT-2 size".into(),
                names: v,
            }
        }
        Kind::Splits => return Ok(None),
    };
    let splits = rows.iter().map(|r| r.splits.len()).max().unwrap_or(1);
    let title = if splits > 1 {
        format!("{label} (mean ± std over {splits} splits)")
    } else {
        label.to_string()
    };
    Ok(Some(sweep_figure(&title, &axis, label, &series)?))
}

/// Writes the tables, the per-run CSV and the figures of an experiment into `exp_dir` from its
/// finished runs (see the module docs).
pub fn aggregate(
    kind: Kind,
    exp_dir: &Path,
    records: &[(RunSpec, RunRecord)],
) -> Result<Aggregated> {
    let rows = group(records);
    let table_md = table_markdown(kind, &rows);
    let mut files = Vec::new();
    let mut put = |name: &str, bytes: &[u8]| -> Result<()> {
        let p = exp_dir.join(name);
        write_atomic(&p, bytes)?;
        files.push(p);
        Ok(())
    };
    put("table.md", table_md.as_bytes())?;
    put("table.csv", table_csv(&rows).as_bytes())?;
    let json = serde_json::json!({
        "experiment": kind.name(),
        "statistic": "mean and sample standard deviation (n - 1) over splits",
        "rows": rows,
    });
    put(
        "table.json",
        serde_json::to_string_pretty(&json)?.as_bytes(),
    )?;
    put("results.csv", results_csv(records).as_bytes())?;
    let mut figures = Vec::new();
    let metrics: &[(&str, &str)] = match kind {
        Kind::Splits => &[],
        Kind::Lambda => &[("bleu_4", "BLEU-4"), ("rmse", "RMSE")],
        Kind::Strategies | Kind::Sizes => &[("bleu_4", "BLEU-4")],
    };
    for &(key, label) in metrics {
        if let Some(fig) = sweep(kind, &rows, key, label)? {
            let [svg, png] = fig.write(exp_dir, key)?;
            files.push(svg.clone());
            files.push(png.clone());
            figures.push(FigureFile {
                title: label.to_string(),
                svg,
                png,
            });
        }
    }
    Ok(Aggregated {
        rows,
        table_md,
        files,
        figures,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_is_mean_and_sample_std() {
        let s = stat(&[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(s.mean, 2.5);
        assert!((s.std - (5.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!(stat(&[7.0]).unwrap().std, 0.0);
        assert!(stat(&[]).is_none());
    }

    #[test]
    fn cells_use_the_papers_precision() {
        let s = stat(&[10.0, 12.0]).unwrap();
        assert_eq!(cell("bleu_4", Some(&s)), "11.00 ± 1.41");
        assert_eq!(cell("fmr", stat(&[0.5]).as_ref()), "0.5000");
        assert_eq!(cell("rmse", None), "-");
        assert_eq!(csv_field("PEPLER (MF), x"), "\"PEPLER (MF), x\"");
    }
}
