//! PyTorch parity: reading reference dumps (`dump`, docs/parity-format.md), the one tolerance table
//! (`tolerances`), the comparison helper (`compare`) and the check runner (`runner`) behind
//! `pepler-cuda check-parity`.

pub mod compare;
pub mod dump;
pub mod runner;
pub mod tolerances;

pub use compare::{compare, format_table, Row};
pub use dump::ParityDump;
pub use runner::{check_dump, check_dump_at, check_dump_from, BackendChoice, CaseReport};
pub use tolerances::{
    classify, tolerance, tolerance_at, tolerance_for, tolerance_for_at, TensorClass, Tolerance,
};
