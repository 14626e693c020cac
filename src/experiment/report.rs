//! `report.md` in the experiment directory: what was run (the exact command line, the program
//! version, data and model), the table, the figures, and one line per run with its loss curve.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;

use super::aggregate::Aggregated;
use super::{GridOutcome, Kind, RunSpec, RunStatus};
use crate::train::config::DataSource;
use crate::train::run_log::write_atomic;

/// The command line as a shell would take it back (arguments with spaces or quotes are quoted).
pub fn shell_line(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=,:+@%".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn data_line(d: &DataSource) -> String {
    match d {
        DataSource::Synthetic {
            users,
            items,
            reviews,
            seed,
        } => format!(
            "built-in synthetic data set ({users} users, {items} items, {reviews} reviews, seed {seed})"
        ),
        DataSource::Files { data, .. } => format!("`{}`", data.display()),
    }
}

fn rel(exp_dir: &Path, p: &Path) -> String {
    p.strip_prefix(exp_dir).unwrap_or(p).display().to_string()
}

/// Writes `exp_dir/report.md`.
pub fn write_report(
    kind: Kind,
    exp_dir: &Path,
    command_line: &str,
    runs: &[RunSpec],
    outcome: Option<&GridOutcome>,
    agg: &Aggregated,
) -> Result<()> {
    let mut s = String::new();
    let _ = writeln!(s, "# PEPLER experiment `{kind}`\n");
    let _ = writeln!(s, "{}.\n", capitalise(kind.describe()));
    let _ = writeln!(s, "```sh\n{command_line}\n```\n");
    let _ = writeln!(
        s,
        "- program: pepler-cuda {} ({} {})",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::OS,
        std::env::consts::ARCH
    );
    if let Some(first) = runs.first() {
        let _ = writeln!(s, "- data: {}", data_line(&first.cfg.data));
        let model = match (&first.cfg.model_dir, first.cfg.model_size) {
            (Some(dir), _) => format!("GPT-2 from `{}`", dir.display()),
            (None, Some(size)) if kind != Kind::Sizes => {
                format!("built-in GPT-2 {size} shape, randomly initialised")
            }
            (None, _) if kind == Kind::Sizes => {
                "built-in GPT-2 shapes, randomly initialised unless a directory is given".into()
            }
            (None, _) => "built-in tiny GPT-2 (2 layers, 64 wide), randomly initialised".into(),
        };
        let _ = writeln!(s, "- model: {model}");
        let c = &first.cfg;
        let _ = writeln!(
            s,
            "- common options: batch {}, at most {} epochs per stage, endure {}, {} words, dropout {}, \
             seed {}, AdamW `{}`",
            c.batch_size,
            c.epochs,
            c.endure,
            c.max_words,
            c.dropout,
            c.seed,
            serde_json::to_value(c.adamw)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default()
        );
    }
    let finished = agg.rows.iter().map(|r| r.splits.len()).sum::<usize>();
    let _ = writeln!(s, "- runs: {finished} of {} finished", runs.len());
    if let Some(o) = outcome {
        let _ = writeln!(
            s,
            "  (this call: {} trained, {} skipped as finished earlier, {} stopped early, {} not reached)",
            o.count(RunStatus::Finished),
            o.count(RunStatus::Skipped),
            o.count(RunStatus::Stopped),
            o.count(RunStatus::Pending)
        );
    }
    let _ = writeln!(s, "\n## Results\n");
    let nsplits = agg.rows.iter().map(|r| r.splits.len()).max().unwrap_or(0);
    if agg.rows.is_empty() {
        let _ = writeln!(s, "No run has finished yet.\n");
    } else {
        let _ = writeln!(
            s,
            "Mean ± sample standard deviation over {} split(s); BLEU and ROUGE in percent, the \
             others absolute values (as the paper's Table 5). Also as `table.csv` and \
             `table.json`; every run's numbers are in `results.csv`.\n",
            nsplits
        );
        s.push_str(&agg.table_md);
        s.push('\n');
    }
    if !agg.figures.is_empty() {
        let _ = writeln!(s, "## Figures\n");
        for f in &agg.figures {
            let _ = writeln!(
                s,
                "![{}]({})\n\n[SVG]({})\n",
                f.title,
                rel(exp_dir, &f.png),
                rel(exp_dir, &f.svg)
            );
        }
    }
    let _ = writeln!(s, "## Runs\n");
    let _ = writeln!(s, "| run | state | loss curve |\n|---|---|---|");
    for r in runs {
        let dir = exp_dir.join(&r.rel_dir);
        let done = dir.join(super::RUN_FILE).exists();
        let curve = if dir.join("loss_curve.png").exists() {
            format!("[png]({0}/loss_curve.png)", r.rel_dir.display())
        } else {
            "-".into()
        };
        let _ = writeln!(
            s,
            "| `{}` | {} | {} |",
            r.rel_dir.display(),
            if done { "finished" } else { "not finished" },
            curve
        );
    }
    write_atomic(&exp_dir.join("report.md"), s.as_bytes())
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}
