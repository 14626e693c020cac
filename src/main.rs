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
}

fn main() {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Train(args) => cli::train::run(args),
        Command::Generate(args) => cli::evaluate::run_generate(args),
        Command::Evaluate(args) => cli::evaluate::run_evaluate(args),
        Command::CheckParity(args) => cli::check_parity::run(args),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::exit(2);
        }
    }
}
