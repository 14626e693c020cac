//! The `pepler-cuda` binary: parses the command line and dispatches to `pepler_cuda::cli`.

use clap::{Parser, Subcommand};
use pepler_cuda::cli;

#[derive(Debug, Parser)]
#[command(
    name = "pepler-cuda",
    version,
    about = "PEPLER explainable recommendation on GPT-2, in Rust + CUDA"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train PEPLER, then generate and evaluate on the test split (no options: built-in demo).
    Train(cli::train::TrainArgs),
    /// Generate explanations for a split with a trained run's best model.
    Generate(cli::evaluate::EvaluateArgs),
    /// Generate for a split and score with the paper's metrics (BLEU, ROUGE, USR, FMR, FCR, DIV, RMSE, MAE).
    Evaluate(cli::evaluate::EvaluateArgs),
    /// Compare a backend against a PyTorch reference dump; exit 1 on any failure.
    CheckParity(cli::check_parity::CheckParityArgs),
    /// Run one of the paper's experiments as a resumable grid: tables, figures and report.md.
    Experiment(cli::experiment::ExperimentArgs),
    /// Draw the attention heatmap of a (user, item) explanation (the paper's Fig. 8).
    Attention(cli::attention::AttentionArgs),
    /// Score any system's explanations (JSON lines) with exactly `evaluate`'s metrics.
    Score(cli::score::ScoreArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Train(args) => cli::train::run(args),
        Command::Generate(args) => cli::evaluate::run_generate(args),
        Command::Evaluate(args) => cli::evaluate::run_evaluate(args),
        Command::CheckParity(args) => cli::check_parity::run(args),
        Command::Experiment(args) => cli::experiment::run(args),
        Command::Attention(args) => cli::attention::run(args),
        Command::Score(args) => cli::score::run(args),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::exit(2);
        }
    }
}
