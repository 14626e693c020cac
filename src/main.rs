//! The `pepler-cuda` binary: parses the command line and dispatches to `pepler_cuda::cli`.

use clap::{Parser, Subcommand};
use pepler_cuda::cli;

#[derive(Debug, Parser)]
#[command(name = "pepler-cuda", version, about = "PEPLER explainable recommendation on GPT-2, in Rust + CUDA")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Compare a backend against a PyTorch reference dump; exit 1 on any failure.
    CheckParity(cli::check_parity::CheckParityArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match &cli.command {
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
