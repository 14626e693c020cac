//! `pepler-cuda check-parity <dump.safetensors>... [--backend cpu|emu|cuda] [--precision fp32|bf16]
//! [--all]`: compare a
//! backend against PyTorch reference dumps (docs/parity-format.md) and print one table per dump.

use clap::Args;

use crate::parity::{check_dump_at, format_table, BackendChoice, CaseReport, ParityDump};
use crate::precision::Precision;

/// Check a build against PyTorch reference dumps (docs/parity-format.md).
#[derive(Debug, Args)]
pub struct CheckParityArgs {
    /// Dumps written by scripts/reference/dump.py (e.g. tests/fixtures/parity/*.safetensors).
    #[arg(required = true)]
    pub dump: Vec<std::path::PathBuf>,
    /// Backend to check: cpu, emu (CUDA kernels on the emulated device) or cuda.
    #[arg(long, default_value = "cpu")]
    pub backend: String,
    /// Activation precision to check: fp32, or bf16 under the bf16 tolerances (same dumps).
    #[arg(long, value_enum, default_value_t = Precision::Fp32)]
    pub precision: Precision,
    /// Print every row (by default passing per-step parameter rows before the last step are
    /// summarised in one line).
    #[arg(long)]
    pub all: bool,
}

/// The rows to print: everything, or all but the passing `step{k}.param.*` rows of earlier steps.
pub fn render(report: &CaseReport, all: bool) -> String {
    let last_step = report
        .rows
        .iter()
        .filter_map(|r| {
            r.name
                .strip_prefix("step")?
                .split('.')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .max()
        .unwrap_or(0);
    let mut hidden = 0usize;
    let shown: Vec<_> = report
        .rows
        .iter()
        .filter(|r| {
            let early_param =
                r.name.contains(".param.") && !r.name.starts_with(&format!("step{last_step}."));
            let keep = all || !r.pass || !early_param;
            if !keep {
                hidden += 1;
            }
            keep
        })
        .cloned()
        .collect();
    let title = format!(
        "== {} on {}: {}",
        report.case,
        report.backend,
        if report.pass() { "PASS" } else { "FAIL" }
    );
    let mut s = format_table(&title, &shown);
    if hidden > 0 {
        s.push_str(&format!(
            "({hidden} passing step-parameter rows of steps 1..{} not shown; --all shows them)\n",
            last_step.saturating_sub(1)
        ));
    }
    s
}

/// Runs the check; returns the process exit code (0 all pass, 1 any failure).
pub fn run(args: &CheckParityArgs) -> anyhow::Result<i32> {
    let backend: BackendChoice = args.backend.parse()?;
    let mut code = 0;
    for path in &args.dump {
        let dump = ParityDump::open(path)?;
        let report = check_dump_at(&dump, backend, args.precision)?;
        print!("{}", render(&report, args.all));
        println!(
            "   ({}, torch {}, transformers {})\n",
            path.display(),
            dump.torch_version,
            dump.transformers_version
        );
        if !report.pass() {
            code = 1;
        }
    }
    Ok(code)
}
