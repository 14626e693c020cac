//! Training PEPLER: strategies (sequential tuning, prompt-only, full), rating regularisation,
//! early stopping, checkpoints and the run log.

pub mod checkpoint;
pub mod config;
pub mod early_stop;
pub mod run_dir;
pub mod run_log;
pub mod session;
pub mod strategy;
pub mod trainer;
pub mod vocab;
