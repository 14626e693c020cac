//! The `pepler-cuda` command line: one module per subcommand, each with its clap `Args` and `run`.

pub mod attention;
pub mod backend;
pub mod check_parity;
pub mod evaluate;
pub mod experiment;
pub mod score;
pub mod train;
