//! pepler-cuda: PEPLER (personalized prompt learning for explainable recommendation) on GPT-2,
//! with a CPU reference backend and CUDA kernels that also run on an emulated device.
//!
//! Module map (one job each):
//! - `device`:   the CUDA device (cudarc) and the emulated device behind one interface.
//! - `kernels`:  typed launch wrappers, one file per `kernels/<name>.cu`.
//! - `ops`:      CPU reference implementations, one file per op (`ops::layernorm` is the
//!   reference for `kernels/layernorm.cu`).
//! - `backend`:  the `Backend` trait the model is written against, and its implementations.
//! - `model`:    GPT-2 + PEPLER written once: parameters, HF safetensors I/O, forward/backward.
//! - `tokenizer`, `data`, `metrics`, `train`, `generate`: the PEPLER pipeline.
//! - `experiment`: the paper's experiments (resumable grids of runs, tables, figures, attention
//!   maps, scoring any system's output).
//! - `pipeline`: the jobs behind the subcommands (train, generate, evaluate) on any backend.
//! - `cli`:      the command line (clap), one module per subcommand.
//! - `parity`:   PyTorch reference dumps and the one tolerance table.
//! - `precision`: `--precision fp32|bf16`: the activation element type (`Act`) and its rules.

pub mod backend;
pub mod cli;
pub mod data;
pub mod device;
pub mod experiment;
pub mod generate;
pub mod kernels;
pub mod metrics;
pub mod model;
pub mod ops;
pub mod parity;
pub mod pipeline;
pub mod precision;
pub mod tokenizer;
pub mod train;
