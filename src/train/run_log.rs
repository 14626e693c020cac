//! What a training run leaves behind besides checkpoints: `metrics.jsonl` (one JSON object per epoch)
//! and `loss_curve.svg` + `loss_curve.png` (train and validation loss per epoch), all rewritten
//! after every epoch so an interrupted run still has them. On `--resume` the existing records are
//! read back first; their lines are kept byte for byte (never re-serialised), so resuming never
//! changes an earlier record. Every record names its run ([`EpochRecord::run_id`]): a log from
//! another run is refused.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

/// One epoch's numbers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// "prompt" (stage 1 of sequential tuning), "full", ...
    pub stage: String,
    /// Epoch within the stage, from 1.
    pub epoch: u32,
    /// Optimizer steps since the start of the run.
    pub global_step: u64,
    pub train_loss: f64,
    pub train_text_loss: f64,
    pub train_rating_loss: Option<f64>,
    pub val_loss: f64,
    pub val_text_loss: f64,
    pub val_rating_loss: Option<f64>,
    pub tokens_per_s: f64,
    pub seconds: f64,
    /// The validation loss was the best so far and a checkpoint was written.
    pub improved: bool,
    /// Global L2 norm of the gradients of the epoch's last step (before clipping).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_norm: Option<f64>,
    /// The run the record belongs to (`checkpoint::run_id`; empty in logs of older versions).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub run_id: String,
}

pub struct RunLog {
    metrics_path: PathBuf,
    plot_path: PathBuf,
    records: Vec<EpochRecord>,
    /// Each record's line exactly as it is in the file (written once, never re-serialised).
    lines: Vec<String>,
}

impl RunLog {
    pub const METRICS_FILE: &'static str = "metrics.jsonl";
    pub const PLOT_FILE: &'static str = "loss_curve.svg";

    /// Starts a log in `dir` for run `run_id`. With `resume`, earlier records in
    /// `dir/metrics.jsonl` are kept; a record of another run is an error.
    pub fn open(dir: &Path, resume: bool, run_id: &str) -> Result<Self> {
        let metrics_path = dir.join(Self::METRICS_FILE);
        let mut records = Vec::new();
        let mut lines = Vec::new();
        if resume && metrics_path.exists() {
            let text = fs::read_to_string(&metrics_path)
                .with_context(|| format!("reading {}", metrics_path.display()))?;
            for (rec, line) in parse_records(&text, &metrics_path.display().to_string())? {
                if !rec.run_id.is_empty() && !run_id.is_empty() && rec.run_id != run_id {
                    bail!(
                        "{}: epoch {} of stage `{}` belongs to run {}, not to the run being \
                         resumed ({run_id}): the directory mixes two runs",
                        metrics_path.display(),
                        rec.epoch,
                        rec.stage,
                        rec.run_id
                    );
                }
                records.push(rec);
                lines.push(line.to_string());
            }
        }
        let log = Self {
            metrics_path,
            plot_path: dir.join(Self::PLOT_FILE),
            records,
            lines,
        };
        log.write_all()?;
        Ok(log)
    }

    pub fn records(&self) -> &[EpochRecord] {
        &self.records
    }

    /// Drops records after `global_step` (a resumed run repeats the epochs after its checkpoint).
    pub fn truncate_after_step(&mut self, global_step: u64) -> Result<()> {
        let keep = self
            .records
            .iter()
            .take_while(|r| r.global_step <= global_step)
            .count();
        self.records.truncate(keep);
        self.lines.truncate(keep);
        self.write_all()
    }

    pub fn append(&mut self, rec: EpochRecord) -> Result<()> {
        self.lines.push(serde_json::to_string(&rec)?);
        self.records.push(rec);
        self.write_all()
    }

    fn write_all(&self) -> Result<()> {
        let mut text = String::new();
        for line in &self.lines {
            text.push_str(line);
            text.push('\n');
        }
        write_atomic(&self.metrics_path, text.as_bytes())?;
        self.plot()
    }

    fn plot(&self) -> Result<()> {
        let svg = render_loss_curve(&self.records)
            .with_context(|| format!("drawing {}", self.plot_path.display()))?;
        write_atomic(&self.plot_path, svg.as_bytes())?;
        // The same curve as PNG, for viewers without SVG (drawn by the experiment figures).
        let png = crate::experiment::plot::loss_curve_figure(&self.records)?.png;
        write_atomic(&self.plot_path.with_extension("png"), &png)
    }
}

/// The records of a `metrics.jsonl` text with their lines (blank lines skipped); `source` names
/// the file in errors, with the line number.
pub fn parse_records<'a>(text: &'a str, source: &str) -> Result<Vec<(EpochRecord, &'a str)>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let rec: EpochRecord = serde_json::from_str(line)
            .with_context(|| format!("{source}: line {} is not an epoch record", i + 1))?;
        out.push((rec, line));
    }
    Ok(out)
}

/// Writes `bytes` to `path` atomically and durably (temporary file, fsync, rename, fsync of
/// the directory), so readers and crashes never see half a file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::model::safetensors_io::write_durable(path, bytes)
}

/// Train and validation loss against the epoch number across all stages, as an SVG document.
pub fn render_loss_curve(records: &[EpochRecord]) -> Result<String> {
    // Text is laid out with the embedded font (plotters has no other with `ab_glyph`).
    crate::experiment::plot::register_fonts();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (720, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
        let losses = records
            .iter()
            .flat_map(|r| [r.train_loss, r.val_loss])
            .filter(|v| v.is_finite());
        let (lo, hi) = losses.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
        let (lo, hi) = if lo.is_finite() {
            (lo * 0.95, hi * 1.05 + 1e-9)
        } else {
            (0.0, 1.0)
        };
        let n = records.len().max(1) as f64;
        let mut chart = ChartBuilder::on(&root)
            .caption("PEPLER training loss", ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(0.5..n + 0.5, lo..hi)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .x_desc("epoch (all stages)")
            .y_desc("loss")
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let series = |f: fn(&EpochRecord) -> f64| -> Vec<(f64, f64)> {
            records
                .iter()
                .enumerate()
                .map(|(i, r)| ((i + 1) as f64, f(r)))
                .collect()
        };
        chart
            .draw_series(LineSeries::new(series(|r| r.train_loss), &BLUE))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .label("train")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLUE));
        chart
            .draw_series(LineSeries::new(series(|r| r.val_loss), &RED))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .label("validation")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], RED));
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE)
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(epoch: u32, train: f64, val: f64) -> EpochRecord {
        EpochRecord {
            stage: "full".into(),
            epoch,
            global_step: epoch as u64 * 10,
            train_loss: train,
            train_text_loss: train,
            train_rating_loss: None,
            val_loss: val,
            val_text_loss: val,
            val_rating_loss: None,
            tokens_per_s: 1000.0,
            seconds: 1.0,
            improved: true,
            grad_norm: Some(0.5),
            run_id: "r1".into(),
        }
    }

    #[test]
    fn log_round_trips_and_draws_both_curves() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = RunLog::open(dir.path(), false, "r1").unwrap();
        log.append(rec(1, 3.0, 3.2)).unwrap();
        log.append(rec(2, 2.5, 2.9)).unwrap();
        log.append(rec(3, 2.0, 2.8)).unwrap();
        let svg = fs::read_to_string(dir.path().join(RunLog::PLOT_FILE)).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("validation") && svg.contains("<polyline"));

        let before = fs::read_to_string(dir.path().join(RunLog::METRICS_FILE)).unwrap();
        let mut resumed = RunLog::open(dir.path(), true, "r1").unwrap();
        assert_eq!(resumed.records().len(), 3);
        resumed.truncate_after_step(20).unwrap();
        let after = fs::read_to_string(dir.path().join(RunLog::METRICS_FILE)).unwrap();
        assert!(
            before.starts_with(&after) && after.lines().count() == 2,
            "earlier records are kept byte for byte:\n{before}\n{after}"
        );
        assert_eq!(
            RunLog::open(dir.path(), true, "r1")
                .unwrap()
                .records()
                .len(),
            2
        );
        let err = RunLog::open(dir.path(), true, "r2").err().unwrap();
        assert!(format!("{err:#}").contains("belongs to run r1"), "{err:#}");
        assert!(RunLog::open(dir.path(), false, "r2")
            .unwrap()
            .records()
            .is_empty());
    }
}
