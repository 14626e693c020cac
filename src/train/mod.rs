//! Training PEPLER: strategies (sequential tuning, prompt-only, full), rating regularisation,
//! early stopping, checkpoints and the run log.

pub mod early_stop;
pub mod run_log;
pub mod strategy;
pub mod config;
pub mod session;
pub mod checkpoint;
pub mod trainer;
